// What every causal-attention kernel (tensor/cuda/attention_simt.cuh, attention_wgmma*.cuh)
// is told about its operands: the shapes, and for the tensor-core kernels the element
// strides of q, k, v, out, dout and the gradients, each a (B, heads, T, dh) view whose
// head dim is contiguous (so the (B, T, heads, dh) projections need no copy to enter or
// leave). The SIMT kernels take contiguous operands (the host makes them so) and ignore
// strides.
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

// Element offset of row t of head h of batch b.
__host__ __device__ __forceinline__ int64_t offset(const Strides& s, int b, int h, int t) {
  return b * s.b + h * s.h + t * s.t;
}

}  // namespace sessa::cuda::attn
