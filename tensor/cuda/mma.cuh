// Warp-level tensor-core building blocks for sm_80+ (used on the H200 at sm_90): the
// bf16 mma.sync product, ldmatrix fragment loads from shared memory, and cp.async tile
// copies from global memory. Kernels built on them (tensor/cuda/attention_mma.cuh) keep
// the products in registers and stream tiles through shared memory.
//
// mma.sync m16n8k16, row.col, bf16 x bf16 -> f32. With g = lane / 4 and c = lane % 4, each
// 32-bit register holds two bf16 (the lower-indexed element in the low 16 bits):
//   A (16 x 16): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B (16 x 8):  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g)
//   C (16 x 8):  c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1)
// ldmatrix.x4 loads four 8 x 8 bf16 matrices; lanes 8i..8i+7 give the row addresses of
// matrix i, and lane l receives row l / 4, columns 2(l % 4), 2(l % 4) + 1 of each (.trans:
// column l / 4, rows 2(l % 4), 2(l % 4) + 1). The helpers below pick the row addresses so
// that the four registers come out as the fragments named in their comments.
//
// Tiles live in shared memory row-major with a row stride of (width + 8) bf16: 16-byte
// aligned rows (for cp.async) whose 8-row groups start in distinct bank quads, so every
// ldmatrix below is conflict-free.
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
//   C (16 x 8): as for bf16 above.
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

// c += a b for one 16 x 8 x 16 product.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// addr: a shared-memory address (smem_address). The fragment helpers below take a tile as
// the shared address of its element (0, 0) and its row stride ld in elements: 32-bit
// arithmetic, no generic-to-shared conversion per load.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// Shared address of element (r, col) of a row-major bf16 tile at s with row stride ld.
__device__ __forceinline__ uint32_t at(uint32_t s, int ld, int r, int col) { return s + uint32_t(r * ld + col) * 2; }
// The same tile's layout for TileStream: the byte offset of element (r, col).
struct PaddedRows {
  int ld;
  __device__ __forceinline__ int operator()(int r, int col) const { return (r * ld + col) * 2; }
};

// The A fragment of rows r0..r0+15, columns k0..k0+15 of a row-major tile.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t s, int ld, int r0, int k0, int lane) {
  ldmatrix_x4(a, at(s, ld, r0 + lane % 16, k0 + lane / 16 * 8));
}

// The A fragment of M = S^T where S is stored row-major: M's rows r0.. are S's columns,
// M's columns k0.. are S's rows.
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], uint32_t s, int ld, int r0, int k0, int lane) {
  const int i = lane / 8;
  ldmatrix_x4_trans(a, at(s, ld, k0 + lane % 8 + i / 2 * 8, r0 + i % 2 * 8));
}

// B fragments for two adjacent n-tiles when the tile holds B transposed (B[k][n] =
// s[n][k], e.g. K in S = Q K^T): b = {b0, b1} of columns n0..n0+7, then of n0+8..n0+15.
__device__ __forceinline__ void load_b_pair(uint32_t (&b)[4], uint32_t s, int ld, int n0, int k0, int lane) {
  const int i = lane / 8;
  ldmatrix_x4(b, at(s, ld, n0 + lane % 8 + i / 2 * 8, k0 + i % 2 * 8));
}

// The same when the tile holds B itself (B[k][n] = s[k][n], e.g. V in O = P V).
__device__ __forceinline__ void load_b_pair_trans(uint32_t (&b)[4], uint32_t s, int ld, int n0, int k0, int lane) {
  const int i = lane / 8;
  ldmatrix_x4_trans(b, at(s, ld, k0 + lane % 8 + i % 2 * 8, n0 + i / 2 * 8));
}

// The A fragment of columns [16 kk, 16 kk + 16) of a 16-row product held as the C
// fragments of its 8-column tiles 2 kk (lo) and 2 kk + 1 (hi): the layouts agree, so a
// product's result feeds the next product without leaving registers.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]), a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]), a[3] = pack_bf16(hi[2], hi[3]);
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
// s + layout(r, col) (PaddedRows above, the 128-byte swizzle in wgmma.cuh); zeros beyond
// nrows and dh. All kThreads threads of the block call load(). vec (dh % 8 == 0, rows
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

// Rows [0, R) of the matrix at g (TileStream says how) into a row-major tile s with a row
// stride of ld elements.
template <int R, int W, int kThreads>
__device__ void load_tile(bf16_t* s, int ld, const bf16_t* g, int64_t stride, int nrows, int dh, bool vec) {
  TileStream<R, W, kThreads>(g, stride, nrows, dh).load(reinterpret_cast<unsigned char*>(s), PaddedRows{ld}, vec);
}

}  // namespace sessa::cuda::mma
