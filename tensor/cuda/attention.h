// Causal grouped-query attention on CUDA (tensor/cuda/attention.cu); ops::attention and
// ops::attention_backward dispatch here for CUDA tensors after their checks. Same
// semantics as the CPU op, except that bfloat16 inputs get a float32 lse.
#pragma once
#include "tensor/ops.h"

namespace sessa::cuda {

ops::AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale);
// rope_base (bfloat16 only; ops rotates the other dtypes' gradients back itself): dq and dk
// rotated back inside, as ops::attention_backward states.
ops::AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, int64_t q_offset, double scale,
                                       std::optional<double> rope_base);

}  // namespace sessa::cuda
