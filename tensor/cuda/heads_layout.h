// The two memory layouts of a (B, heads, T, dh) attention operand on CUDA: contiguous, or
// "token-major": a permuted view of a dense (B, T, heads, dh) tensor, which is what the
// q/k/v projections give (reshape + permute, no copy). Kernels that accept both (rope,
// attention) write their outputs in the layout of their input, so the projections' data
// enters and leaves attention without a transpose copy.
#pragma once
#include "tensor/ops.h"

namespace sessa::cuda {

// t (B, heads, T, dh) is a permuted view of a dense (B, T, heads, dh) tensor (and not
// also contiguous, i.e. heads > 1 and T > 1).
inline bool token_major(const Tensor& t) {
  if (t.dim() != 4) return false;
  const Shape& s = t.strides();
  const int64_t heads = t.size(1), T = t.size(2), dh = t.size(3);
  return heads > 1 && T > 1 && s[3] == 1 && s[1] == dh && s[2] == heads * dh && s[0] == T * heads * dh;
}

// An uninitialised tensor of t's shape in t's layout (token-major or contiguous).
inline Tensor empty_heads_like(const Tensor& t, DType dtype) {
  const TensorOptions opt{dtype, t.device()};
  if (!token_major(t)) return Tensor::empty(t.shape(), opt);
  return ops::permute(Tensor::empty({t.size(0), t.size(2), t.size(1), t.size(3)}, opt), {0, 2, 1, 3});
}

}  // namespace sessa::cuda
