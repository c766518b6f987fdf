// Fused row ops on CUDA: LayerNorm, cross-entropy and rotary embedding. The ops in
// tensor/ops/ check the arguments and dispatch here for CUDA tensors.
//
// Statistics (LayerNorm mean/rstd, cross-entropy log-sum-exp and loss) are float32 for
// float32 and bfloat16 inputs and float64 for float64 inputs (accumulation_dtype, tensor/dtype.h).
#pragma once
#include "tensor/ops.h"

namespace sessa::cuda {

// LayerNorm over the last dim. weight/bias have x's dtype, or float32 when x is
// bfloat16 (mixed precision). y and dx take x's dtype; dweight/dbias the weight's.
ops::LayerNormOut layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
ops::LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                        const Tensor& rstd, const ops::LayerNormGrads& sums);

// Cross-entropy of logits (N, V). `count` is the number of counted targets when the
// caller counted them on the host, or -1 when the targets live on the GPU: then the
// GPU counts them (no host sync) and the returned CrossEntropyOut::count is -1 too.
// A target outside [0, V) that is not ignore_index makes its row's loss NaN.
// LossReduction::Sum returns the sum of the row losses (no count needed).
ops::CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t count,
                                   ops::LossReduction reduction);
// dloss is read on the device (any float dtype, one element).
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t ignore_index, int64_t count);

// ops::cross_entropy_and_grad_ on the GPU (the op checks the arguments): one kernel per
// call writes the gradient over the logits, one block adds the row losses to loss_sum.
void cross_entropy_and_grad_(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& scale,
                             const Tensor& loss_sum);

// ops::inverse_target_count for targets on the GPU: one block counts them.
Tensor inverse_target_count(const Tensor& targets, int64_t ignore_index, DType dtype);

Tensor rope(const Tensor& x, int64_t pos_offset, double base, bool inverse);
// rope's cos / sin tables (T, half) of theta = (pos_offset + t) * base^(-2i / (2 half)), in
// dtype (float32, float64 for float64): made on the device's main lane when they differ from
// the last ones asked for, else those (a training step tabulates once; the attention
// backward reuses them).
struct RopeTables {
  int device = -1;
  int64_t T = 0, half = 0, pos_offset = 0;
  double base = 0;
  DType dtype = DType::F32;
  Tensor cs, sn;  // (T, half)
};
RopeTables rope_tables(Device dev, int64_t T, int64_t half, int64_t pos_offset, double base, DType dtype);

}  // namespace sessa::cuda
