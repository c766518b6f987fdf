// Warp-level building blocks for sm_80+ (used on the H200 at sm_90): the tf32 mma.sync
// product of the feedback leaves (sessa/feedback.cu) and cp.async copies from global to
// shared memory (the leaves' tiles, the attention backward's lse and D rows).
//
// mma.sync, row.col, with g = lane / 4 and c = lane % 4, the C (16 x 8) fragment of each
// thread is c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1); the A and B layouts are
// given with the product below.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace sessa::cuda::mma {

using bf16_t = __nv_bfloat16;

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// mma.sync m16n8k8, row.col, tf32 x tf32 -> f32 (float32 operands rounded to tf32 by
// to_tf32), with g = lane / 4 and c = lane % 4:
//   A (16 x 8): a0 = (g, c), a1 = (g+8, c), a2 = (g, c+4), a3 = (g+8, c+4)
//   B (8 x 8):  b0 = (k c, n g), b1 = (k c+4, n g)
//   C (16 x 8): as in the file header.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
// c += a b for one 16 x 8 x 8 product.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- cp.async: global -> shared without passing through registers -------------------

// The first `bytes` (0..16) of 16 from src to dst, the rest of the 16 zero (src is not
// read past `bytes`).
__device__ __forceinline__ void cp_async16_prefix(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(bytes)
               : "memory");
}
// 4 bytes (e.g. one float), or zeros when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until every cp.async this thread issued has landed (committed or not).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Waits until at most n of this thread's committed groups are still in flight.
template <int n>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

}  // namespace sessa::cuda::mma
