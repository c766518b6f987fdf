// Warpgroup tensor-core building blocks for Hopper (sm_90a): wgmma.mma_async products,
// the shared-memory descriptors they read their operands through, and the 128-byte swizzle
// those describe (the copy engine writes it, tensor/cuda/tma.cuh). Kernels built on them:
// tensor/cuda/attention_wgmma.cuh, attention_wgmma_backward.cuh. (mma.cuh holds the
// warp-level sm_80+ forms.)
//
// A warpgroup is 4 consecutive warps (128 threads) that issue one product together.
// wgmma m64nNk16, bf16 x bf16 -> f32, accumulator layout: thread t = 32 w + lane of the
// warpgroup holds d[4 j + e] = D[16 w + lane / 4 + 8 (e / 2)][8 j + 2 (lane % 4) + e % 2],
// j < N / 8, e < 4 (the mma.sync C layout of mma.cuh, repeated for every 8 columns). An A operand
// from registers takes, per warp, the mma.sync A fragment of its 16 rows (a_from_c below).
//
// Shared-memory tiles: a tile of R rows x W bf16 (W a multiple of 64) is W / 64 column
// blocks, each R rows x 128 bytes, block-major; inside a block, the 16-byte chunk ch of row
// r sits at r * 128 + (ch ^ (r % 8)) * 16: the 128-byte swizzle, so the 8 rows of one
// 8 x 8 core matrix land in distinct bank groups. Tiles start 1024-byte aligned (one
// swizzle atom = 8 rows x 128 bytes). The same tile serves as
//   - a K-major operand (rows = M or N, columns = K): k-step ks (16 columns) starts at
//     column block ks / 4, byte 32 (ks % 4), with the descriptor's 8-row stride 1024;
//   - an MN-major operand (rows = K, columns = M or N, the instruction transposes it,
//     tnspA / tnspB): k-step kk is rows 16 kk .. 16 kk + 15 of a 64-column block; a
//     product 128 columns wide reads two blocks, the descriptor's leading offset giving
//     the distance from one to the next (R x 128 bytes).
// These layouts are the ones pinned by an exact-integer probe on the H200 (docs/
// performance.md, 2026-12-01 third session).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "tensor/cuda/mma.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "wgmma.cuh needs the Hopper feature set: build with SESSA_CUDA_ARCH=90a"
#endif

namespace sessa::cuda::wgmma {

using bf16_t = __nv_bfloat16;
using mma::smem_address;

// Byte offset of element (r, col) in a swizzled tile of R rows (see the file header) of
// kElemBytes-byte elements: bfloat16 (64 columns per block), or float32 (32 per block, the
// layout of a float32 tile map's boxes, tensor/cuda/tma.h).
template <int R, int kElemBytes = 2>
struct Swizzled {
  static constexpr uint32_t kPerRow = 128 / kElemBytes, kPerChunk = 16 / kElemBytes;  // elements
  __device__ __forceinline__ uint32_t operator()(uint32_t r, uint32_t col) const {
    return col / kPerRow * R * 128 + r * 128 + ((col / kPerChunk % 8) ^ (r % 8)) * 16 + col % kPerChunk * kElemBytes;
  }
};

// Descriptor of a swizzled operand starting at shared address addr (1024-aligned, or
// advanced from such by a k-step's 32 bytes): start >> 4, the leading offset, 8-row stride
// 1024 bytes, 128-byte swizzle mode. The leading offset is the bytes from one 64-column
// block to the next of an MN-major operand wider than 64 columns (the tile's rows x 128);
// K-major operands and 64-column ones do not use it (PTX ISA, "Matrix Descriptor Format").
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t leading_bytes = 16) {
  return uint64_t((addr >> 4) & 0x3fff) | uint64_t((leading_bytes >> 4) & 0x3fff) << 16 | uint64_t(1024 >> 4) << 32 |
         uint64_t(1) << 62;
}

// The descriptor of addr + bytes from that of addr (bytes a multiple of 16): the start
// field holds addr >> 4 in 14 bits and shared addresses stay below 2^18, so the sum never
// carries out of it. Kernels build a tile's descriptor once and advance it per k-step.
__device__ __forceinline__ uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Makes this thread's generic-proxy shared-memory writes (plain stores) visible to wgmma.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Waits until the n threads (a multiple of 32) that use named barrier id (1..15; 0 is
// __syncthreads) have arrived, e.g. the 128 threads of one warpgroup.
__device__ __forceinline__ void barrier(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
// Arrives at named barrier id (counted among its n threads) without waiting: lets the
// threads that bar.sync on it go on once the rest have arrived.
__device__ __forceinline__ void barrier_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
// Orders register accesses to accumulators before the next wgmma of this warpgroup.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most n of this warpgroup's committed wgmma groups are unfinished (they
// finish in commit order).
template <int n>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(n) : "memory");
}

// The A operand (registers) of columns [16 kk, 16 kk + 16) of a product held as an
// m64nN accumulator d: the mma.sync A fragment of columns 16 kk.. of the rows a warp holds
// is the C fragments of its column tiles 2 kk and 2 kk + 1, packed to bf16, so S feeds P V directly.
template <int N>
__device__ __forceinline__ void a_from_c(uint32_t (&a)[4], const float (&d)[N / 2], int kk) {
  a[0] = mma::pack_bf16(d[8 * kk], d[8 * kk + 1]), a[1] = mma::pack_bf16(d[8 * kk + 2], d[8 * kk + 3]);
  a[2] = mma::pack_bf16(d[8 * kk + 4], d[8 * kk + 5]), a[3] = mma::pack_bf16(d[8 * kk + 6], d[8 * kk + 7]);
}

// The asm operand lists of 32 and 64 accumulator registers.
#define SESSA_WG_D32(d)                                                                                       \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SESSA_WG_D64(d)                                                                                       \
  SESSA_WG_D32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), \
      "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), \
      "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), \
      "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
      "+f"(d[63])
#define SESSA_WG_L32                                                                                               \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31"
#define SESSA_WG_L64                                                                                  \
  SESSA_WG_L32                                                                                        \
  ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, " \
  "%51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// d (=, or += when accumulate) A B^T for one k-step, A (64 x 16) and B (N x 16) K-major in
// shared memory; N = 128 or 64 by the size of d (m64n128k16, m64n64k16).
__device__ __forceinline__ void mma_ss(float (&d)[64], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SESSA_WG_L64 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : SESSA_WG_D64(d)
      : "l"(a), "l"(b), "r"(int(accumulate)));
}
// m64n64k16; with kMNMajor, A (64 x 16) and B (16 x 64) are both MN-major instead (the
// instruction transposes both, tnspA and tnspB): d (=, or += when accumulate) A B.
template <bool kMNMajor = false>
__device__ __forceinline__ void mma_ss(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SESSA_WG_L32 "}, %32, %33, p, 1, 1, %35, %35;\n}\n"
      : SESSA_WG_D32(d)
      : "l"(a), "l"(b), "r"(int(accumulate)), "n"(int(kMNMajor)));
}

// m64n32k16, as the m64n64k16 form above.
template <bool kMNMajor = false>
__device__ __forceinline__ void mma_ss(float (&d)[16], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
      "%13, %14, %15}, %16, %17, p, 1, 1, %19, %19;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(int(accumulate)), "n"(int(kMNMajor)));
}

// d (+=, or = when not accumulate) A B for one k-step, m64n64k16: A (64 x 16) from
// registers, B (16 x 64) MN-major in shared memory; with kMNMajorB false, B is given as
// (64 x 16) K-major instead (d = A B^T, as mma_ss).
template <bool kMNMajorB = true>
__device__ __forceinline__ void mma_m64n64_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b,
                                              bool accumulate = true) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SESSA_WG_L32
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : SESSA_WG_D32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(int(kMNMajorB)));
}

// d += A B for one k-step, B MN-major in shared memory, A (64 x 16) from registers; N = 64
// or 128 by the size of d (m64n64k16, m64n128k16). A 128-column B is two 64-column blocks,
// b's descriptor carrying their distance as its leading offset.
__device__ __forceinline__ void mma_rs_mn(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  mma_m64n64_rs(d, a, b);
}
__device__ __forceinline__ void mma_rs_mn(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SESSA_WG_L64
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : SESSA_WG_D64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

}  // namespace sessa::cuda::wgmma
