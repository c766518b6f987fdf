// Causal grouped-query attention on CUDA (tensor/cuda/attention.cu); ops::attention and
// ops::attention_backward dispatch here for CUDA tensors after their checks. Same
// semantics as the CPU op, except that bfloat16 inputs get a float32 lse.
#pragma once
#include "tensor/ops.h"

namespace sessa::cuda {

ops::AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale);
ops::AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, int64_t q_offset, double scale,
                                       std::optional<double> rope_base);

}  // namespace sessa::cuda
