// Softmax and log-softmax over the last dimension, with their backward kernels.
// Rows are independent: one OpenMP task per row, statistics in double.
#include <cmath>
#include <type_traits>
#include <vector>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

// The shape of all four ops: the inputs (same shape, at least one dimension) made
// contiguous, then the CUDA path on_cuda(inputs), or body(in_rows, at, out_row, len)
// (generic in the element type) over every row of a new output shaped like them.
template <class OnCuda, class Body>
Tensor rowwise(const char* op, std::vector<Tensor> inputs, OnCuda on_cuda, Body body) {
  for (Tensor& t : inputs) {
    SESSA_CHECK(t.dim() >= 1, op, "needs at least one dimension, got " << t.shape());
    SESSA_CHECK(t.shape() == inputs[0].shape(), op, "shapes differ: " << inputs[0].shape() << " vs " << t.shape());
    t = contiguous(t);
  }
  if (inputs[0].is_cuda()) return on_cuda(inputs);
  Tensor out = empty_like(inputs[0]);
  cpu::dispatch_float(out.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const int64_t len = out.size(-1), rows = len == 0 ? 0 : out.numel() / len;
    std::vector<const T*> in;
    for (const Tensor& t : inputs) in.push_back(t.data<T>());
    T* o = out.data<T>();
#pragma omp parallel for if (out.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) body(in, r * len, o + r * len, len);
  });
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x) {
  return rowwise(
      "softmax", {x},
      []([[maybe_unused]] const std::vector<Tensor>& in) -> Tensor { SESSA_CUDA_CALL(return cuda::softmax(in[0])); },
      [](auto& in, int64_t at, auto* out, int64_t len) {
        using T = std::remove_pointer_t<decltype(out)>;
        const T* row = in[0] + at;
        T mx = row[0];
        for (int64_t i = 1; i < len; ++i) mx = std::max(mx, row[i]);
        double total = 0;
        for (int64_t i = 0; i < len; ++i) total += double(out[i] = std::exp(row[i] - mx));
        T inv = T(1.0 / total);
        for (int64_t i = 0; i < len; ++i) out[i] *= inv;
      });
}

// dx = y * (dy - sum_j dy_j y_j)
Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  return rowwise(
      "softmax_backward", {y, dy},
      []([[maybe_unused]] const std::vector<Tensor>& in) -> Tensor {
        SESSA_CUDA_CALL(return cuda::softmax_backward(in[0], in[1]));
      },
      [](auto& in, int64_t at, auto* out, int64_t len) {
        using T = std::remove_pointer_t<decltype(out)>;
        const T *yr = in[0] + at, *gr = in[1] + at;
        double dot = 0;
        for (int64_t i = 0; i < len; ++i) dot += double(yr[i]) * double(gr[i]);
        for (int64_t i = 0; i < len; ++i) out[i] = yr[i] * (gr[i] - T(dot));
      });
}

Tensor log_softmax(const Tensor& x) {
  return rowwise(
      "log_softmax", {x},
      []([[maybe_unused]] const std::vector<Tensor>& in) -> Tensor {
        SESSA_CUDA_CALL(return cuda::log_softmax(in[0]));
      },
      [](auto& in, int64_t at, auto* out, int64_t len) {
        using T = std::remove_pointer_t<decltype(out)>;
        const T* row = in[0] + at;
        T mx = row[0];
        for (int64_t i = 1; i < len; ++i) mx = std::max(mx, row[i]);
        double total = 0;
        for (int64_t i = 0; i < len; ++i) total += std::exp(double(row[i] - mx));
        T lse = mx + T(std::log(total));
        for (int64_t i = 0; i < len; ++i) out[i] = row[i] - lse;
      });
}

// dx = dy - softmax(x) * sum_j dy_j, with softmax(x) = exp(y)
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) {
  return rowwise(
      "log_softmax_backward", {y, dy},
      []([[maybe_unused]] const std::vector<Tensor>& in) -> Tensor {
        SESSA_CUDA_CALL(return cuda::log_softmax_backward(in[0], in[1]));
      },
      [](auto& in, int64_t at, auto* out, int64_t len) {
        using T = std::remove_pointer_t<decltype(out)>;
        const T *yr = in[0] + at, *gr = in[1] + at;
        double total = 0;
        for (int64_t i = 0; i < len; ++i) total += double(gr[i]);
        for (int64_t i = 0; i < len; ++i) out[i] = gr[i] - std::exp(yr[i]) * T(total);
      });
}

}  // namespace sessa::ops
