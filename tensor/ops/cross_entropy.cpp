// Mean cross-entropy over rows of logits (N, V) against int32 targets (N).
// For each counted row r (target y_r != ignore_index), in double with the row max m_r subtracted:
//   lse_r = m_r + log sum_j exp(x_rj - m_r),   loss = (1 / count) sum_r (lse_r - x_{r, y_r}).
// LossReduction::Sum leaves out the division (a caller dividing by a count of its own, as the chunked
// head of nn/head_loss.cpp does with inverse_target_count, passes count = 1 to the backward).
// Backward: dx_rj = dloss * (exp(x_rj - lse_r) - [j == y_r]) / count on counted rows, 0 on
// ignored rows (and everywhere when count == 0, where the loss is defined as 0).
// CUDA logits run tensor/cuda/cross_entropy.cu (lse and loss float32 for bfloat16 logits).
#include <cmath>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/rowops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

// Checks shapes and targets; returns the number of counted rows. Targets on a GPU are
// neither counted nor range-checked here (that would need a host sync): the result is -1,
// the GPU counts them, and the data loader checks token ids against the vocabulary.
int64_t check_cross_entropy(const char* op, const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  SESSA_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0), op,
              "expects logits (N, V) and targets (N), got " << logits.shape() << " and " << targets.shape());
  SESSA_CHECK(targets.dtype() == DType::I32, op, "targets must be int32, got " << targets.str());
  SESSA_CHECK(targets.device().is_cpu() || targets.device() == logits.device(), op,
              "targets " << targets.str() << " are not on the device of logits " << logits.str());
  if (targets.is_cuda()) return -1;
  const Tensor packed = contiguous(targets);  // named: a temporary's pointer would dangle
  const int32_t* t = packed.data<int32_t>();
  const int64_t V = logits.size(1);
  int64_t count = 0;
  for (int64_t r = 0; r < targets.size(0); ++r) {
    if (int64_t(t[r]) == ignore_index) continue;
    SESSA_CHECK(t[r] >= 0 && t[r] < V, op, "target " << t[r] << " in row " << r << " is outside [0, " << V << ")");
    ++count;
  }
  return count;
}

}  // namespace

CrossEntropyOut cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index,
                              LossReduction reduction) {
  const int64_t count = check_cross_entropy("cross_entropy", logits_in, targets_in, ignore_index);
  if (logits_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::cross_entropy(logits_in, targets_in, ignore_index, count, reduction));
  }
  Tensor x = contiguous(logits_in), targets = contiguous(targets_in);
  const int64_t N = x.size(0), V = x.size(1);
  CrossEntropyOut res{Tensor(), Tensor::empty({N}, x.options()), count};
  std::vector<double> row_loss(size_t(N), 0.0);  // summed in order afterwards: deterministic
  cpu::dispatch_float(x.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const int32_t* pt = targets.data<int32_t>();
    T* plse = res.lse.data<T>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < N; ++r) {
      plse[r] = T(0);
      if (int64_t(pt[r]) == ignore_index) continue;
      const T* row = px + r * V;
      double mx = double(row[0]), total = 0;
      for (int64_t j = 1; j < V; ++j) mx = std::max(mx, double(row[j]));
      for (int64_t j = 0; j < V; ++j) total += std::exp(double(row[j]) - mx);
      const double lse = mx + std::log(total);
      plse[r] = T(lse);
      row_loss[size_t(r)] = lse - double(row[pt[r]]);
    }
  });
  double total = 0;
  for (double l : row_loss) total += l;
  const double mean = count > 0 ? total / double(count) : 0.0;
  res.loss = scalar(reduction == LossReduction::Sum ? total : mean, x.options());
  return res;
}

Tensor inverse_target_count(const Tensor& targets_in, int64_t ignore_index, DType dtype) {
  SESSA_CHECK(targets_in.dtype() == DType::I32, "inverse_target_count",
              "targets must be int32, got " << targets_in.str());
  SESSA_CHECK(dtype == DType::F32 || dtype == DType::F64, "inverse_target_count",
              "the result is float32 or float64, got " << dtype_name(dtype));
  if (targets_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::inverse_target_count(targets_in, ignore_index, dtype));
  }
  const Tensor targets = contiguous(targets_in);
  const int32_t* t = targets.data<int32_t>();
  int64_t count = 0;
  for (int64_t r = 0; r < targets.numel(); ++r) count += int64_t(t[r]) != ignore_index;
  return scalar(count > 0 ? 1.0 / double(count) : 0.0, {dtype, targets.device()});
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits_in, const Tensor& targets_in,
                              const Tensor& lse_in, int64_t ignore_index, int64_t count) {
  const char* op = "cross_entropy_backward";
  check_cross_entropy(op, logits_in, targets_in, ignore_index);
  SESSA_CHECK(dloss.numel() == 1, op, "dloss must have one element, got " << dloss.shape());
  const DType lse_dtype = logits_in.dtype() == DType::BF16 ? DType::F32 : logits_in.dtype();  // float32 for bf16 logits
  SESSA_CHECK(lse_in.shape() == Shape{logits_in.size(0)} && lse_in.dtype() == lse_dtype, op,
              "lse " << lse_in.str() << " does not match logits " << logits_in.str());
  if (logits_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::cross_entropy_backward(dloss, logits_in, targets_in, lse_in, ignore_index, count));
  }
  Tensor x = contiguous(logits_in), targets = contiguous(targets_in), lse = contiguous(lse_in);
  const int64_t N = x.size(0), V = x.size(1);
  Tensor dx = zeros(x.shape(), x.options());
  if (count == 0) return dx;
  const double g = dloss.item() / double(count);
  cpu::dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *plse = lse.data<T>();
    const int32_t* pt = targets.data<int32_t>();
    T* pdx = dx.data<T>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < N; ++r) {
      if (int64_t(pt[r]) == ignore_index) continue;
      const T *row = px + r * V, l = plse[r];
      T* out = pdx + r * V;
      for (int64_t j = 0; j < V; ++j) out[j] = T(g) * std::exp(row[j] - l);
      out[pt[r]] -= T(g);
    }
  });
  return dx;
}

void cross_entropy_and_grad_(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& scale,
                             const Tensor& loss_sum) {
  const char* op = "cross_entropy_and_grad_";
  check_cross_entropy(op, logits, targets, ignore_index);
  SESSA_CHECK(logits.is_contiguous(), op, "overwrites its logits, which must be contiguous: " << logits.str());
  const DType stat = logits.dtype() == DType::BF16 ? DType::F32 : logits.dtype();
  for (const Tensor* t : {&scale, &loss_sum})
    SESSA_CHECK(t->dim() == 0 && t->dtype() == stat && t->device() == logits.device(), op,
                "scale and loss_sum must be 0-d " << dtype_name(stat) << " on the device of " << logits.str()
                                                  << ", got " << t->str());
  if (logits.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::cross_entropy_and_grad_(logits, targets, ignore_index, scale, loss_sum));
  }
  const CrossEntropyOut ce = cross_entropy(logits, targets, ignore_index, LossReduction::Sum);
  add_(loss_sum, ce.loss);
  copy_(logits, cross_entropy_backward(scale, logits, targets, ce.lse, ignore_index, 1));
}

}  // namespace sessa::ops
