// Softmax and log-softmax over the last dimension, with their backward kernels.
// Rows are independent: one OpenMP task per row, statistics in double.
#include <cmath>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

// Runs body(in_row, out_row, len) [or with a second input row] over every row.
template <class T, class Body>
void for_rows(const Tensor& out, std::initializer_list<Tensor> ins, Body body) {
  const int64_t len = out.dim() == 0 ? 1 : out.size(-1);
  const int64_t rows = len == 0 ? 0 : out.numel() / len;
  std::vector<const T*> in_ptrs;
  for (const Tensor& t : ins) in_ptrs.push_back(t.data<T>());
  T* o = out.data<T>();
#pragma omp parallel for if (out.numel() >= cpu::kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) body(in_ptrs, r * len, o + r * len, len);
}

Tensor prepare(const Tensor& x, const char* op) {
  SESSA_CHECK(x.dim() >= 1, op, "needs at least one dimension, got " << x.shape());
  return contiguous(x);
}

}  // namespace

Tensor softmax(const Tensor& x_in) {
  Tensor x = prepare(x_in, "softmax");
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::softmax(x));
  }
  Tensor y = empty_like(x);
  cpu::dispatch_float(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    for_rows<T>(y, {x}, [](auto& in, int64_t at, T* out, int64_t len) {
      const T* row = in[0] + at;
      T mx = row[0];
      for (int64_t i = 1; i < len; ++i) mx = std::max(mx, row[i]);
      double total = 0;
      for (int64_t i = 0; i < len; ++i) total += double(out[i] = std::exp(row[i] - mx));
      T inv = T(1.0 / total);
      for (int64_t i = 0; i < len; ++i) out[i] *= inv;
    });
  });
  return y;
}

// dx = y * (dy - sum_j dy_j y_j)
Tensor softmax_backward(const Tensor& y_in, const Tensor& dy_in) {
  Tensor y = prepare(y_in, "softmax_backward"), dy = prepare(dy_in, "softmax_backward");
  SESSA_CHECK(y.shape() == dy.shape(), "softmax_backward", "shapes differ: " << y.shape() << " vs " << dy.shape());
  if (y.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::softmax_backward(y, dy));
  }
  Tensor dx = empty_like(y);
  cpu::dispatch_float(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    for_rows<T>(dx, {y, dy}, [](auto& in, int64_t at, T* out, int64_t len) {
      const T *yr = in[0] + at, *gr = in[1] + at;
      double dot = 0;
      for (int64_t i = 0; i < len; ++i) dot += double(yr[i]) * double(gr[i]);
      for (int64_t i = 0; i < len; ++i) out[i] = yr[i] * (gr[i] - T(dot));
    });
  });
  return dx;
}

Tensor log_softmax(const Tensor& x_in) {
  Tensor x = prepare(x_in, "log_softmax");
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::log_softmax(x));
  }
  Tensor y = empty_like(x);
  cpu::dispatch_float(x.dtype(), "log_softmax", [&](auto tag) {
    using T = decltype(tag);
    for_rows<T>(y, {x}, [](auto& in, int64_t at, T* out, int64_t len) {
      const T* row = in[0] + at;
      T mx = row[0];
      for (int64_t i = 1; i < len; ++i) mx = std::max(mx, row[i]);
      double total = 0;
      for (int64_t i = 0; i < len; ++i) total += std::exp(double(row[i] - mx));
      T lse = mx + T(std::log(total));
      for (int64_t i = 0; i < len; ++i) out[i] = row[i] - lse;
    });
  });
  return y;
}

// dx = dy - softmax(x) * sum_j dy_j, with softmax(x) = exp(y)
Tensor log_softmax_backward(const Tensor& y_in, const Tensor& dy_in) {
  Tensor y = prepare(y_in, "log_softmax_backward"), dy = prepare(dy_in, "log_softmax_backward");
  SESSA_CHECK(y.shape() == dy.shape(), "log_softmax_backward", "shapes differ: " << y.shape() << " vs " << dy.shape());
  if (y.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::log_softmax_backward(y, dy));
  }
  Tensor dx = empty_like(y);
  cpu::dispatch_float(y.dtype(), "log_softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    for_rows<T>(dx, {y, dy}, [](auto& in, int64_t at, T* out, int64_t len) {
      const T *yr = in[0] + at, *gr = in[1] + at;
      double total = 0;
      for (int64_t i = 0; i < len; ++i) total += double(gr[i]);
      for (int64_t i = 0; i < len; ++i) out[i] = gr[i] - std::exp(yr[i]) * T(total);
    });
  });
  return dx;
}

}  // namespace sessa::ops
