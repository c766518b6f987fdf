// Softmax and log-softmax over the last dim, and their backward kernels.
//
// Plan: one block per row (32 threads for short rows, up to 256 for long ones).
// Forward reads the row twice: pass 1 keeps a running (max m, sum s of exp(x - m))
// per thread, rescaling s when m grows (the online softmax), and the block combines
// them into the row's max M and S = sum exp(x - M); pass 2 writes exp(x - M) / S or
// x - (M + log S). Backward: one block sum (sum y*dy, or sum dy), then one pass.
// Statistics are float (double for double) whatever the storage dtype.
#include <cmath>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

template <class T, bool kLog>
__global__ void softmax_kernel(const T* x, int64_t len, T* y) {
  using A = acc_t<T>;
  const T* in = x + int64_t(blockIdx.x) * len;
  T* out = y + int64_t(blockIdx.x) * len;
  A m = -INFINITY, s = 0;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const A e = load(in + i);
    if (e > m)
      s = s * math::exp(m - e) + A(1), m = e;
    else if (m != A(-INFINITY))
      s += math::exp(e - m);  // skips -inf while m is still -inf (exp(nan))
  }
  const A row_max = block_max(m);
  const A total = block_sum(m == A(-INFINITY) ? A(0) : s * math::exp(m - row_max));
  if constexpr (kLog) {
    const A lse = row_max + math::log(total);
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) store(out + i, load(in + i) - lse);
  } else {
    const A inv = A(1) / total;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) store(out + i, math::exp(load(in + i) - row_max) * inv);
  }
}

// softmax: dx = y * (dy - sum(y * dy));  log_softmax: dx = dy - exp(y) * sum(dy).
template <class T, bool kLog>
__global__ void softmax_backward_kernel(const T* y, const T* dy, int64_t len, T* dx) {
  using A = acc_t<T>;
  const int64_t at = int64_t(blockIdx.x) * len;
  A acc = 0;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
    acc += kLog ? load(dy + at + i) : load(y + at + i) * load(dy + at + i);
  const A c = block_sum(acc);
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const A yi = load(y + at + i), gi = load(dy + at + i);
    store(dx + at + i, kLog ? gi - math::exp(yi) * c : yi * (gi - c));
  }
}

template <bool kLog>
Tensor forward(const Tensor& x_in, const char* op) {
  const Tensor x = ops::contiguous(x_in);
  Tensor y = empty_like(x);
  const int64_t len = x.size(-1), rows = len == 0 ? 0 : x.numel() / len;
  if (rows == 0) return y;
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T, kLog>
        <<<unsigned(rows), row_threads_pow2(len), 0, stream(x.device().index)>>>(ptr<const T>(x), len, ptr<T>(y));
    SESSA_CUDA_LAUNCH_CHECK(op);
  });
  return y;
}

template <bool kLog>
Tensor backward(const Tensor& y_in, const Tensor& dy_in, const char* op) {
  SESSA_CHECK(y_in.dtype() == dy_in.dtype() && y_in.device() == dy_in.device(), op,
              "output and gradient differ: " << y_in.str() << " and " << dy_in.str());
  const Tensor y = ops::contiguous(y_in), dy = ops::contiguous(dy_in);
  Tensor dx = empty_like(y);
  const int64_t len = y.size(-1), rows = len == 0 ? 0 : y.numel() / len;
  if (rows == 0) return dx;
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    softmax_backward_kernel<T, kLog><<<unsigned(rows), row_threads_pow2(len), 0, stream(y.device().index)>>>(
        ptr<const T>(y), ptr<const T>(dy), len, ptr<T>(dx));
    SESSA_CUDA_LAUNCH_CHECK(op);
  });
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& x) { return forward<false>(x, "softmax"); }
Tensor log_softmax(const Tensor& x) { return forward<true>(x, "log_softmax"); }
Tensor softmax_backward(const Tensor& y, const Tensor& dy) { return backward<false>(y, dy, "softmax_backward"); }
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) { return backward<true>(y, dy, "log_softmax_backward"); }

}  // namespace sessa::cuda
