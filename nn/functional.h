// Differentiable fused ops for models: each is one autograd node whose backward is a
// hand-written raw kernel (tensor/ops/attention.cpp, rope.cpp, cross_entropy.cpp).
#pragma once
#include <cstdint>
#include <optional>

#include "tensor/tensor.h"

namespace sessa::nn {

// Causal grouped-query attention (see ops::attention): q (B, H, Tq, dh), k, v (B, Hkv, Tk, dh),
// query i at position q_offset + i attends keys s <= q_offset + i. Returns (B, H, Tq, dh).
// With rope_base, q and k are first rotated by rope (queries at q_offset + i, keys at s)
// inside the same node, whose backward rotates their gradients back in the attention
// backward's epilogues (one node, no rope nodes: tensor/cuda/attention_wgmma_backward.cuh).
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale,
                        std::optional<double> rope_base = std::nullopt);

// Rotary position embedding of x (B, H, T, dh) for positions pos_offset + t (see ops::rope).
Tensor rope(const Tensor& x, int64_t pos_offset, double base = 10000.0);

// Mean cross-entropy of logits (..., V) against int32 targets with the logits' leading
// elements (any shape of that size), skipping targets equal to ignore_index. Returns a 0-d loss.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -1);

}  // namespace sessa::nn
