// Hopper's asynchronous copy engine (TMA) and the shared-memory barriers it completes on,
// device side (sm_90): mbarrier init / arrive / wait, bulk tensor loads and reductions of a
// tile, and the warpgroup register reallocation of warp-specialised kernels (sm_90a). The
// tensor maps these loads read are made on the host (tensor/cuda/tma.h). Kernels built on
// them: tensor/cuda/attention_wgmma.cuh and attention_wgmma_backward.cuh.
//
// An mbarrier is 8 bytes of shared memory that counts arrivals and, for the copy engine,
// transaction bytes: a phase completes when its expected arrivals have arrived and every
// byte announced by arrive_expect_tx has landed; waiters poll a phase's parity (0, 1, 0, ...).
#pragma once
#include <cuda.h>

#include <cstdint>

#include "tensor/cuda/mma.cuh"

namespace sessa::cuda::tma {

using mma::smem_address;

// Barrier at shared address bar expects `count` arrivals per phase. One thread initialises;
// fence_init and a __syncthreads publish it before anyone (the copy engine too) uses it.
__device__ __forceinline__ void init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

// One arrival.
__device__ __forceinline__ void arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival that also announces `bytes` the copy engine will deliver in this phase.
__device__ __forceinline__ void arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// An arrival made when this thread's cp.async copies issued so far have landed (one of
// the barrier's expected arrivals: noinc).
__device__ __forceinline__ void arrive_on_copies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Blocks until the phase of parity `parity` has completed.
__device__ __forceinline__ void wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_AGAIN:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_AGAIN;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// The box at coordinates (c0 innermost, c1, c2, c3) of a 4-d tensor map into shared memory
// at dst (1024-aligned for the 128-byte swizzle), completing on barrier bar.
__device__ __forceinline__ void load_box(uint32_t dst, const CUtensorMap& map, int c0, int c1, int c2, int c3,
                                         uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Adds (float32) the box at shared address src into the box at coordinates (c0 .. c3) of a
// 4-d tensor map in global memory, asynchronously; commit_reductions() closes a group of
// them. The shared source may be written again once wait_reads<n> says the group has
// been read; wait_reductions<0> before the block exits.
__device__ __forceinline__ void reduce_add_box(const CUtensorMap& map, uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(&map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void commit_reductions() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most n of this thread's committed groups still read shared memory.
template <int n>
__device__ __forceinline__ void wait_reads() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(n) : "memory");
}
// Waits until at most n of this thread's committed groups are unfinished.
template <int n>
__device__ __forceinline__ void wait_reductions() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(n) : "memory");
}

// Warpgroup register reallocation (sm_90a): the calling warpgroup gives registers back
// (a producer that only issues copies) or takes them (the consumers that hold accumulators).
// Needs a register cap at kernel entry (__launch_bounds__(threads, 1)).
template <int kRegs>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace sessa::cuda::tma
