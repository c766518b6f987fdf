// Differentiable fused ops for models: each is one autograd node whose backward is a
// hand-written raw kernel (tensor/ops/attention.cpp, rope.cpp, cross_entropy.cpp).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sessa::nn {

// Causal grouped-query attention (see ops::attention): q (B, H, Tq, dh), k, v (B, Hkv, Tk, dh),
// query i at position q_offset + i attends keys s <= q_offset + i. Returns (B, H, Tq, dh).
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale);

// Rotary position embedding of x (B, H, T, dh) for positions pos_offset + t (see ops::rope).
Tensor rope(const Tensor& x, int64_t pos_offset, double base = 10000.0);

// Mean cross-entropy of logits (..., V) against int32 targets with the logits' leading
// elements (any shape of that size), skipping targets equal to ignore_index. Returns a 0-d loss.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -1);

}  // namespace sessa::nn
