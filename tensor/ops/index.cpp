// Joining (cat) and row indexing (index_select / index_add, i.e. embedding
// lookup and its scatter-add backward).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  SESSA_CHECK(!xs.empty(), "cat", "no tensors given");
  const Tensor& first = xs[0];
  int64_t d = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.shape();
  out_shape[size_t(d)] = 0;
  for (const Tensor& x : xs) {
    SESSA_CHECK(x.dim() == first.dim() && x.dtype() == first.dtype() && x.device() == first.device(), "cat",
                "cannot join " << first.str() << " and " << x.str());
    for (int64_t i = 0; i < x.dim(); ++i)
      SESSA_CHECK(i == d || x.shape()[size_t(i)] == first.shape()[size_t(i)], "cat",
                  "shapes " << first.shape() << " and " << x.shape() << " differ outside dim " << d);
    out_shape[size_t(d)] += x.shape()[size_t(d)];
  }
  Tensor out = Tensor::empty(out_shape, first.options());
  int64_t at = 0;
  for (const Tensor& x : xs) {
    copy_(narrow(out, d, at, x.shape()[size_t(d)]), x);
    at += x.shape()[size_t(d)];
  }
  return out;
}

namespace {

const int32_t* checked_indices(const Tensor& index, int64_t limit, const char* op) {
  SESSA_CHECK(index.dtype() == DType::I32, op, "index must be int32, got " << index.str());
  SESSA_CHECK(index.device().is_cpu(), op, "no CUDA kernel yet for " << index.str());
  const int32_t* ids = index.data<int32_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    SESSA_CHECK(ids[i] >= 0 && ids[i] < limit, op,
                "index " << ids[i] << " at position " << i << " out of range [0, " << limit << ")");
  return ids;
}

// Indices for a CUDA kernel on `device`: host ids are range-checked here and uploaded;
// ids already on the device are checked by the kernel (tensor/cuda/basic.h).
[[maybe_unused]] Tensor device_indices(const Tensor& index, Device device, int64_t limit, const char* op) {
  SESSA_CHECK(index.dtype() == DType::I32, op, "index must be int32, got " << index.str());
  if (index.device().is_cpu()) {
    checked_indices(index, limit, op);
    return index.to(device);
  }
  SESSA_CHECK(index.device() == device, op, "index " << index.str() << " is not on " << device.str());
  return index;
}

}  // namespace

Tensor index_select(const Tensor& x_in, int64_t dim, const Tensor& index_in) {
  Tensor x = contiguous(x_in), index = contiguous(index_in);
  int64_t d = wrap_dim(dim, x.dim(), "index_select");
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(
        return cuda::index_select(x, d, device_indices(index, x.device(), x.shape()[size_t(d)], "index_select")));
  }
  const int32_t* ids = checked_indices(index, x.shape()[size_t(d)], "index_select");
  Shape out_shape(x.shape().begin(), x.shape().begin() + d);
  out_shape.insert(out_shape.end(), index.shape().begin(), index.shape().end());
  out_shape.insert(out_shape.end(), x.shape().begin() + d + 1, x.shape().end());
  Tensor out = Tensor::empty(out_shape, x.options());
  AroundDim a = around(x.shape(), d);
  const int64_t n = index.numel(), row_bytes = a.inner * int64_t(dtype_size(x.dtype()));
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
#pragma omp parallel for collapse(2) if (out.numel() >= cpu::kParallelGrain)
  for (int64_t o = 0; o < a.outer; ++o)
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dst + (o * n + i) * row_bytes, src + (o * a.rows + ids[i]) * row_bytes, size_t(row_bytes));
  return out;
}

Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& grad) {
  const Tensor sum = zeros(shape, {accumulation_dtype(grad.dtype()), grad.device()});
  index_add_(sum, dim, index, grad);
  return sum.dtype() == grad.dtype() ? sum : cast(sum, grad.dtype());
}

void index_add_(const Tensor& dst, int64_t dim, const Tensor& index_in, const Tensor& grad_in) {
  const Tensor index = contiguous(index_in), grad = contiguous(grad_in);
  const Shape& shape = dst.shape();
  const int64_t d = wrap_dim(dim, int64_t(shape.size()), "index_add");
  const AroundDim a = around(shape, d);
  const int64_t n = index.numel();
  SESSA_CHECK(grad.numel() == a.outer * n * a.inner, "index_add",
              "gradient " << grad.shape() << " does not match " << shape << " indexed by " << index.shape());
  SESSA_CHECK(dst.is_contiguous() && dst.dtype() == accumulation_dtype(grad.dtype()) && dst.device() == grad.device(),
              "index_add",
              "the sum " << dst.str() << " must be contiguous, " << dtype_name(accumulation_dtype(grad.dtype()))
                         << " and on " << grad.device().str() << " for a gradient " << grad.str());
  if (grad.is_cuda()) {
    SESSA_CUDA_CALL(
        return cuda::index_add_(dst, d, device_indices(index, grad.device(), shape[size_t(d)], "index_add"), grad));
  }
  const int32_t* ids = checked_indices(index, shape[size_t(d)], "index_add");
  cpu::dispatch_float(grad.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* g = grad.data<T>();
    A* y = dst.data<A>();
    // Parallel over column blocks: two indices may name the same row, so rows are not split.
    constexpr int64_t kBlock = 64;
#pragma omp parallel for if (grad.numel() >= cpu::kParallelGrain)
    for (int64_t c0 = 0; c0 < a.inner; c0 += kBlock) {
      const int64_t c1 = std::min(a.inner, c0 + kBlock);
      for (int64_t o = 0; o < a.outer; ++o)
        for (int64_t i = 0; i < n; ++i) {
          A* dst_row = y + (o * a.rows + ids[i]) * a.inner;
          const T* src_row = g + (o * n + i) * a.inner;
          for (int64_t c = c0; c < c1; ++c) dst_row[c] += A(src_row[c]);
        }
    }
  });
}

}  // namespace sessa::ops
