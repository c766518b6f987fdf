// Rotary position embedding (RoPE) on x: (B, H, T, dh), dh even.
// Token t sits at position p = pos_offset + t; its pair i = (x[2i], x[2i+1]) rotates by
//   theta = p * base^(-2i / dh)   (computed in double):
//   y[2i] = x[2i] cos(theta) - x[2i+1] sin(theta),   y[2i+1] = x[2i] sin(theta) + x[2i+1] cos(theta).
// inverse = true rotates by -theta; since the rotation is orthogonal, that is also its backward.
// CUDA tensors run tensor/cuda/rope.cu.
#include <cmath>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/rowops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

Tensor rope(const Tensor& x_in, int64_t pos_offset, double base, bool inverse) {
  SESSA_CHECK(x_in.dim() == 4, "rope", "expects x of shape (B, H, T, dh), got " << x_in.shape());
  SESSA_CHECK(x_in.size(3) % 2 == 0, "rope", "head dim dh must be even, got " << x_in.shape());
  SESSA_CHECK(base > 0, "rope", "base must be positive, got " << base);
  if (x_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::rope(x_in, pos_offset, base, inverse));
  }
  Tensor x = contiguous(x_in);
  const int64_t T = x.size(2), dh = x.size(3), half = dh / 2, rows = x.numel() / std::max<int64_t>(dh, 1);
  // cos/sin table (T, dh/2) shared by every batch and head.
  std::vector<double> cs(size_t(T * half)), sn(size_t(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double theta = double(pos_offset + t) * std::pow(base, -2.0 * double(i) / double(dh));
      cs[size_t(t * half + i)] = std::cos(theta);
      sn[size_t(t * half + i)] = inverse ? -std::sin(theta) : std::sin(theta);
    }
  Tensor y = empty_like(x);
  cpu::dispatch_float(x.dtype(), "rope", [&](auto tag) {
    using TT = decltype(tag);
    const TT* px = x.data<TT>();
    TT* py = y.data<TT>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {  // row r = ((b * H + h) * T + t)
      const double *c = cs.data() + (r % T) * half, *s = sn.data() + (r % T) * half;
      const TT* xr = px + r * dh;
      TT* yr = py + r * dh;
      for (int64_t i = 0; i < half; ++i) {
        const double x0 = double(xr[2 * i]), x1 = double(xr[2 * i + 1]);
        yr[2 * i] = TT(x0 * c[i] - x1 * s[i]);
        yr[2 * i + 1] = TT(x0 * s[i] + x1 * c[i]);
      }
    }
  });
  return y;
}

}  // namespace sessa::ops
