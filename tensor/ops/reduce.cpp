// Reductions over dimensions. Reduced dims are permuted to the end so every
// kernel reduces contiguous rows; float32 sums accumulate in double.
#include <algorithm>
#include <numeric>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

struct RowLayout {
  Tensor rows;  // contiguous, shape (outer, inner): one row per output element
  Shape out_shape;
};

struct Reduction {
  std::vector<int64_t> dims;  // wrapped, sorted, distinct
  Shape out_shape;
};

Reduction reduction(const Tensor& x, std::vector<int64_t> dims, bool keepdim, const char* op) {
  for (auto& d : dims) d = wrap_dim(d, x.dim(), op);
  std::sort(dims.begin(), dims.end());
  SESSA_CHECK(std::adjacent_find(dims.begin(), dims.end()) == dims.end(), op, "repeated dimension");
  Shape out_shape;
  for (int64_t d = 0; d < x.dim(); ++d) {
    bool reduced = std::binary_search(dims.begin(), dims.end(), d);
    if (!reduced)
      out_shape.push_back(x.shape()[d]);
    else if (keepdim)
      out_shape.push_back(1);
  }
  return {dims, out_shape};
}

// Moves `dims` to the back and flattens: each row holds the elements reduced into one output.
RowLayout to_rows(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim, const char* op) {
  auto [dims, out_shape] = reduction(x, dims_in, keepdim, op);
  std::vector<int64_t> order;
  int64_t inner = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) order.push_back(d);
  for (int64_t d : dims) order.push_back(d), inner *= x.shape()[d];
  Tensor rows = reshape(contiguous(permute(x, order)), {x.numel() / std::max<int64_t>(inner, 1), inner});
  if (inner == 0) rows = zeros({numel(out_shape), 0}, x.options());
  return {rows, out_shape};
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  if (x.is_cuda()) {
    const Reduction r = reduction(x, dims, keepdim, "sum");
    SESSA_CUDA_CALL(return cuda::sum(x, r.dims, r.out_shape));
  }
  // Named members, not a structured binding: clang 14 (the sanitizer build) cannot
  // capture bindings in the lambda below.
  const RowLayout layout = to_rows(x, dims, keepdim, "sum");
  const Tensor& rows = layout.rows;
  const Shape& out_shape = layout.out_shape;
  Tensor out = Tensor::empty(out_shape, x.options());
  cpu::dispatch_float(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n_rows = rows.size(0), len = rows.size(1);
    const T* in = rows.data<T>();
    T* y = out.data<T>();
#pragma omp parallel for if (n_rows * len >= cpu::kParallelGrain)
    for (int64_t r = 0; r < n_rows; ++r) {
      double acc = 0;
      for (int64_t i = 0; i < len; ++i) acc += double(in[r * len + i]);
      y[r] = T(acc);
    }
  });
  return out;
}

void sum_add_(const Tensor& out, const Tensor& x, const std::vector<int64_t>& dims) {
  const Reduction r = reduction(x, dims, false, "sum_add_");
  SESSA_CHECK(out.shape() == r.out_shape && out.is_contiguous() && out.device() == x.device() &&
                  (out.dtype() == x.dtype() || (out.dtype() == DType::F32 && x.dtype() == DType::BF16)),
              "sum_add_",
              "the sum of " << x.str() << " over its dims needs a contiguous " << dtype_name(x.dtype())
                            << " (or float32 beside bfloat16) output of shape " << r.out_shape << " on its device, got "
                            << out.str());
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::sum_into(out, x, r.dims, true));
  }
  add_(out, sum(out.dtype() == x.dtype() ? x : cast(x, out.dtype()), dims));  // (the CPU sums float dtypes)
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[size_t(wrap_dim(d, x.dim(), "mean"))];
  return affine(sum(x, dims, keepdim), 1.0 / double(std::max<int64_t>(count, 1)), 0.0);
}

Tensor sum_all(const Tensor& x) {
  std::vector<int64_t> all(size_t(x.dim()));
  std::iota(all.begin(), all.end(), 0);
  return sum(x, all, false);
}

namespace {
// Shared by amax and argmax: the max of each row and where it is.
template <class Emit>
Tensor max_rows(const Tensor& x, int64_t dim, bool keepdim, DType out_dtype, const char* op, Emit emit) {
  const RowLayout layout = to_rows(x, {dim}, keepdim, op);  // no structured binding: see sum()
  const Tensor& rows = layout.rows;
  const Shape& out_shape = layout.out_shape;
  SESSA_CHECK(rows.size(1) > 0, op, "reduction over an empty dimension of " << x.shape());
  Tensor out = Tensor::empty(out_shape, {out_dtype, x.device()});
  cpu::dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n_rows = rows.size(0), len = rows.size(1);
    const T* in = rows.data<T>();
#pragma omp parallel for if (n_rows * len >= cpu::kParallelGrain)
    for (int64_t r = 0; r < n_rows; ++r) {
      int64_t best = 0;
      for (int64_t i = 1; i < len; ++i)
        if (in[r * len + i] > in[r * len + best]) best = i;
      emit(out, r, best, in[r * len + best]);
    }
  });
  return out;
}

// The checked dim and output shape of a max over one dim (on the CPU, max_rows checks).
Reduction cuda_max_args(const Tensor& x, int64_t dim, bool keepdim, const char* op) {
  Reduction r = reduction(x, {dim}, keepdim, op);
  SESSA_CHECK(x.shape()[size_t(r.dims[0])] > 0, op, "reduction over an empty dimension of " << x.shape());
  return r;
}
}  // namespace

Tensor amax(const Tensor& x, int64_t dim, bool keepdim) {
  if (x.is_cuda()) {
    const Reduction r = cuda_max_args(x, dim, keepdim, "amax");
    SESSA_CUDA_CALL(return cuda::amax(x, r.dims[0], r.out_shape));
  }
  return max_rows(x, dim, keepdim, x.dtype(), "amax", [](const Tensor& out, int64_t r, int64_t, auto v) {
    static_cast<decltype(v)*>(out.raw_data())[r] = v;
  });
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  if (x.is_cuda()) {
    const Reduction r = cuda_max_args(x, dim, keepdim, "argmax");
    SESSA_CUDA_CALL(return cuda::argmax(x, r.dims[0], r.out_shape));
  }
  return max_rows(x, dim, keepdim, DType::I32, "argmax", [](const Tensor& out, int64_t r, int64_t i, auto) {
    static_cast<int32_t*>(out.raw_data())[r] = int32_t(i);
  });
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  SESSA_CHECK(x.shape().size() >= shape.size(), "sum_to", "cannot reduce " << x.shape() << " to " << shape);
  size_t lead = x.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < x.shape().size(); ++i) {
    if (i < lead)
      dims.push_back(int64_t(i));
    else if (shape[i - lead] == 1 && x.shape()[i] != 1)
      dims.push_back(int64_t(i));
    else
      SESSA_CHECK(shape[i - lead] == x.shape()[i], "sum_to", "cannot reduce " << x.shape() << " to " << shape);
  }
  return reshape(sum(x, dims, false), shape);
}

}  // namespace sessa::ops
