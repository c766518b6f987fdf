// Warp-level building blocks for sm_80+ (used on the H200 at sm_90): the tf32 mma.sync
// product of the feedback leaves (sessa/feedback.cu) and cp.async tile copies from global
// to shared memory (TileStream), which the warpgroup kernels (tensor/cuda/wgmma.cuh) load
// their swizzled tiles with.
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
// 16 bytes from src to dst, or 16 zero bytes when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  cp_async16_prefix(dst, src, valid ? 16 : 0);
}
// 4 bytes (e.g. one float), or zeros when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most n of this thread's committed groups are still in flight.
template <int n>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

// Copies of R-row tiles (all columns [0, W)) of a (nrows x dh) matrix with row stride
// `stride` (elements) into shared memory, one tile per load() and each the R rows after
// the last (a stream of key tiles, say); element (r, col) of a tile lands at byte
// s + layout(r, col) (the 128-byte swizzle, wgmma.cuh); zeros beyond
// nrows and dh. All kThreads threads (the first kThreads of the block) call load(). vec (dh % 8 == 0, rows
// 16-byte aligned): asynchronous 16-byte copies, complete after cp_async_wait; otherwise
// plain loads and stores. Either way a __syncthreads must come before the tile is read.
// A thread copies the same 16-byte column of rows r0, r0 + RS, r0 + 2 RS, ... (RS rows per
// sweep of the block). Its source pointer is kept from tile to tile, so a load is address
// additions only (a kernel under a register cap would otherwise rebuild it from the thread
// index, in 64-bit arithmetic, every tile).
template <int R, int W, int kThreads>
struct TileStream {
  static constexpr int CH = W / 8, RS = kThreads / CH;  // 16-byte chunks per row, rows per sweep
  static_assert(kThreads % CH == 0 && R % RS == 0, "TileStream: the block must sweep whole rows");
  const bf16_t* g;    // row 0 of the next tile
  const bf16_t* src;  // this thread's first chunk of it: g + r0 * stride + col
  int64_t stride;
  int nrows, dh;  // rows from g on; the matrix's width

  __device__ TileStream(const bf16_t* g, int64_t stride, int nrows, int dh)
      : g(g), src(g + row0() * stride + col()), stride(stride), nrows(nrows), dh(dh) {}
  static __device__ int row0() { return int(threadIdx.x / unsigned(CH)); }
  static __device__ int col() { return int(threadIdx.x % unsigned(CH)) * 8; }

  template <class Layout>
  __device__ __forceinline__ void load(unsigned char* s, Layout layout, bool vec) {
    if (vec) {
      const int r0 = row0(), c = col();
#pragma unroll
      for (int i = 0; i < R / RS; ++i) {
        const int r = r0 + i * RS;
        const bool in = c < dh && r < nrows;
        cp_async16(s + layout(r, c), in ? src + i * RS * stride : g, in);
      }
    } else {  // (odd head dims: kept small, not unrolled)
#pragma unroll 1
      for (int e = int(threadIdx.x); e < R * W; e += kThreads) {
        const int r = e / W, c = e % W;
        *reinterpret_cast<bf16_t*>(s + layout(r, c)) = r < nrows && c < dh ? g[r * stride + c] : __float2bfloat16(0.f);
      }
    }
    g += R * stride, src += R * stride, nrows -= R;
  }
};

}  // namespace sessa::cuda::mma
