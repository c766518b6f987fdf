// What every causal-attention kernel (tensor/cuda/attention_simt.cuh, attention_wgmma*.cuh)
// is told about its operands: the shapes, and the element strides of q, k, v, out, dout and
// the gradients, each a (B, heads, T, dh) view whose head dim is contiguous (so the (B, T,
// heads, dh) projections need no copy to enter or leave). The tensor-core kernels read q,
// k, v, dout and the dq sum through tensor maps (tensor/cuda/tma.h), which carry their
// strides, and use these for out, dk, dv (and D's pass for dout, out); the SIMT kernels
// take contiguous operands (the host makes them so) and ignore strides.
#pragma once
#include <cstdint>

#include "tensor/scalar_math.h"

namespace sessa::cuda::attn {

constexpr float kLog2e = float(math::kLog2e), kLn2 = float(math::kLn2);

struct Strides {
  int64_t b = 0, h = 0, t = 0;  // elements; the head dim has stride 1
};

struct Dims {
  int B, H, Hkv, Tq, Tk, dh, group, q_offset;  // group = H / Hkv query heads per kv head
  Strides q, k, v, out, dout, dq, dk, dv;      // dq: also of the float32 buffer it is summed in
};

// RoPE's inverse rotation, applied by the backward's epilogues when the op owns the rotation
// (ops::attention_backward's rope_base): the pair (x[2i], x[2i+1]) of a row at position p
// becomes (x0 cos + x1 sin, x1 cos - x0 sin) with cos, sin = cs, sn[p * dh / 2 + i]
// (tensor/ops/rope.cpp). Keys sit at positions 0 .. Tk - 1, query row t at q_offset + t; a
// dq element's row is its flat index / dh, and the row's t is row / heads_inner % Tq
// (heads_inner = H when dq is token-major, else 1). cs null: no rotation.
struct RopeRows {
  const float *cs = nullptr, *sn = nullptr;  // (Tk, dh / 2)
  int64_t dh = 0, heads_inner = 1, Tq = 0, q_offset = 0;
  __host__ __device__ bool on() const { return cs != nullptr; }
  __device__ __forceinline__ void inverse(int64_t position, int64_t pair, float& x0, float& x1) const {
    const int64_t at = position * (dh / 2) + pair;
    const float c = cs[at], s = sn[at], y0 = x0 * c + x1 * s, y1 = x1 * c - x0 * s;
    x0 = y0, x1 = y1;
  }
};

// Element offset of row t of head h of batch b.
__host__ __device__ __forceinline__ int64_t offset(const Strides& s, int b, int h, int t) {
  return b * s.b + h * s.h + t * s.t;
}

}  // namespace sessa::cuda::attn
