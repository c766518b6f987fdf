// bfloat16 causal attention backward on Hopper warpgroup tensor cores (wgmma, sm_90a), in
// the FlashAttention-2 order, head dims up to 128; the math is in tensor/ops/attention.cpp,
// the building blocks in tensor/cuda/wgmma.cuh, host-side dispatch in
// tensor/cuda/attention.cu, the forward in attention_wgmma.cuh.
//
// D_i = dout_i . out_i first (attention.cu). A block of kGroups warpgroups owns BN = 64
// kGroups keys of one kv head, 64 per warpgroup, and walks the query tiles (BQ = 64 rows)
// of every query head of its group (so GQA needs no reduction for dk, dv). K, V, and the
// step's Q and dout sit in shared memory in the 128-byte swizzle; Q, dout, lse and D of
// step s + 1 are loaded by cp.async while step s runs. Per step and warpgroup (keys kw):
//   S^T  = K_kw Q^T     m64n64k16 x DH / 16, A = K and B = Q both K-major;
//   dP^T = V_kw dout^T  the same with V and dout;
//   P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D) on the accumulators in float32;
//   dV += P^T dout      A = P^T from registers (packed from the S^T accumulators), B = dout
//                       MN-major, one m64n64 product per 64 columns of the head dim;
//   dK += dS^T Q        likewise with dS^T and Q;
//   dq_kw = dS_kw K_kw  the warpgroup's share of the step's dq tile (64 x DH, over its 64
//                       keys): dS^T goes to shared memory and comes back as the A operand
//                       (MN-major, tnspA), K as the B operand (MN-major).
// The warpgroups' shares of dq are summed in shared memory: the tile is cut into units of
// 16 rows x 32 columns, each summed by one warpgroup from the others' shares, and added
// into a float32 buffer shaped like dq with 16-byte atomics (red.global.add.v4.f32; the
// sum over key blocks is not bitwise reproducible run to run), scaled and rounded to bf16
// by a last pass. One block barrier per step, at its end: it publishes the next step's
// tiles and this step's dq shares at once (the exchange buffer is double-buffered by
// step). dk, dv stay in registers for the whole walk and are written once. Only steps
// whose tile holds a masked pair (diagonal, past Tq or Tk) pay for the mask. When the op
// owns RoPE, dq's pairs are rotated back in the scaling pass (dk's by rope after the walk:
// rotating them in its epilogue, from tables or from angles computed there, cost the
// register-capped walk more than the rope pass it saves; docs/performance.md, 2026-12-02).
//
// Budgets (ptxas -v, sm_90a; one block per SM):
//   head dim 64: three warpgroups (192 keys, 384 threads), 168 registers (the cap at 384
//     threads), no spills: dk, dv 2 x 32 + S^T, dP^T 2 x 32 accumulator registers per
//     thread, then P^T, dS^T packed 2 x 16 + dq 32. Shared: K, V 2 x 24 KiB + 2 x (Q,
//     dout) 32 KiB + dS^T 24 KiB + the dq exchange 2 x 32 KiB + lse, D 1 KiB = 170 KiB.
//     The kernel is latency-bound (ncu with two warpgroups: 43% of issue slots, 0.58
//     eligible warps of 2 per scheduler), and a third gives the schedulers 3 warps to pick
//     from; measured on the H200, T 4096: two warpgroups 221-227 TFLOP/s, three 265
//     (docs/performance.md, 2026-12-01 sixth session).
//   head dim 128: two warpgroups (128 keys, 256 threads): dk, dv 2 x 64 accumulator
//     registers leave no room for a third; 255 registers and a 4-byte spill. Shared: K, V
//     2 x 32 KiB + 2 x (Q, dout) 64 KiB + dS^T 16 KiB + the dq exchange 2 x 32 KiB + 1 KiB
//     = 210 KiB. Measured on the H200, T 4096: 272 TFLOP/s (the mma.sync kernel it
//     replaced: 187).
#pragma once
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/wgmma.cuh"

namespace sessa::cuda::attn {

// Tiles for tile width DH (head dim rounded up to 64 or 128).
template <int DH>
struct WgmmaBackwardTile {
  static constexpr int kGroups = DH > 64 ? 2 : 3;  // warpgroups per block (the file header says why)
  static constexpr int CB = DH / 64, BN = 64 * kGroups, BQ = 64, kThreads = 128 * kGroups;
  static constexpr int kKVBytes = BN * DH * 2, kQBytes = BQ * DH * 2, kSBytes = BN * BQ * 2;
  // The dq exchange (per step, double-buffered): kGroups - 1 shares of kUnits units (16 rows
  // x 32 columns: DH / 32 per warp), 32 lanes x 16 floats each.
  static constexpr int kUnits = 4 * DH / 32, kXFloat4s = (kGroups - 1) * kUnits * 4 * 32;
  static constexpr size_t smem_bytes = 2 * kKVBytes + 4 * kQBytes + kSBytes + 2 * kXFloat4s * 16 + 4 * BQ * 4 + 1024;
};

// dst[0..3] += v, atomically and without a result (sm_90; dst 16-byte aligned, global).
__device__ __forceinline__ void red_add_v4(float* dst, float v0, float v1, float v2, float v3) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v0), "f"(v1), "f"(v2), "f"(v3)
               : "memory");
}

// dq_acc rows row0 .. row0 + 15 (of head h of batch b), columns col0 .. col0 + 8 NT - 1 +=
// one warp's product in the mma.sync C layout (acc[nt][e]: row row0 + lane / 4 + 8 (e / 2),
// column col0 + 8 nt + 2 (lane % 4) + e % 2); rows past Tq and columns past dh are skipped.
// With vec (16-byte aligned rows), one 16-byte red per 8-column tile: lanes c and c ^ 1
// swap halves so that even c holds row g, columns 2c..2c+3 and odd c row g + 8, columns
// 2c-2..2c+1.
template <int NT>
__device__ __forceinline__ void add_dq_rows(float* dq_acc, const Dims& d, int b, int h, int row0, int col0,
                                            const float (&acc)[NT][4], int lane, bool vec) {
  const int g = lane / 4, c = lane % 4;
  if (vec) {
    const bool odd = c & 1;
    const int row = row0 + g + (odd ? 8 : 0);
    float* dst = dq_acc + offset(d.dq, b, h, min(row, d.Tq - 1)) + col0 + 2 * (c & 2);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float x0 = __shfl_xor_sync(0xffffffffu, odd ? acc[nt][0] : acc[nt][2], 1);
      const float x1 = __shfl_xor_sync(0xffffffffu, odd ? acc[nt][1] : acc[nt][3], 1);
      if (row < d.Tq && col0 + nt * 8 < d.dh) {
        if (odd)
          red_add_v4(dst + nt * 8, x0, x1, acc[nt][2], acc[nt][3]);
        else
          red_add_v4(dst + nt * 8, acc[nt][0], acc[nt][1], x0, x1);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + 8 * r;
      if (row >= d.Tq) continue;
      float* dst = dq_acc + offset(d.dq, b, h, row);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = col0 + nt * 8 + 2 * c;
        if (col < d.dh) atomicAdd(dst + col, acc[nt][2 * r]);
        if (col + 1 < d.dh) atomicAdd(dst + col + 1, acc[nt][2 * r + 1]);
      }
    }
  }
}

// grid (B * Hkv, key blocks), WgmmaBackwardTile<DH>::kThreads threads. dq_acc: float32
// like dq (strides d.dq), zeroed. vec also promises 16-byte aligned rows of dq_acc, dk, dv.
template <int DH>
__global__ void __launch_bounds__(WgmmaBackwardTile<DH>::kThreads, 1)
    wgmma_backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                   const float* Dv, float* dq_acc, bf16_t* dk, bf16_t* dv, Dims d, float scale_log2, float scale,
                   bool vec) {
  using Tile = WgmmaBackwardTile<DH>;
  constexpr int BN = Tile::BN, BQ = Tile::BQ, CB = Tile::CB, kGroups = Tile::kGroups;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Ks =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Vs = Ks + Tile::kKVBytes;                         // (BN, DH)
  unsigned char* Qs = Vs + Tile::kKVBytes;                         // 2 x (BQ, DH)
  unsigned char* Gs = Qs + 2 * Tile::kQBytes;                      // 2 x (BQ, DH): dout
  unsigned char* Ss = Gs + 2 * Tile::kQBytes;                      // (BN, BQ): dS^T
  float4* Xs = reinterpret_cast<float4*>(Ss + Tile::kSBytes);      // 2 x the dq exchange
  float* Ls = reinterpret_cast<float*>(Xs + 2 * Tile::kXFloat4s);  // 2 x BQ: lse
  float* Ds = Ls + 2 * BQ;                                         // 2 x BQ: D
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  const int b = blockIdx.x / d.Hkv, hk = blockIdx.x % d.Hkv, n0 = blockIdx.y * BN;
  const int key0 = n0 + 64 * wg;                 // this warpgroup's keys key0 .. key0 + 63
  const int krow = key0 + 16 * warp + lane / 4;  // this thread's rows of S^T: keys krow, krow + 8

  // The steps: query tiles i0 >= i_start (earlier queries see none of these keys) of each
  // query head of the group.
  const int i_start = max(0, n0 - d.q_offset) / BQ * BQ;
  const int per_head = i_start < d.Tq ? (d.Tq - i_start + BQ - 1) / BQ : 0, steps = per_head * d.group;
  struct StepAt {
    int h, i0;
  };
  auto next_of = [&](StepAt s) { return s.i0 + BQ < d.Tq ? StepAt{s.h, s.i0 + BQ} : StepAt{s.h + 1, i_start}; };
  auto load_step = [&](int step, StepAt s) {  // Q, dout, lse, D of a step into buffer step % 2
    const int buf = step % 2;
    if (threadIdx.x < 256) {  // (a tile of 64 rows is swept by 256 threads)
      wgmma::load_tile<BQ, DH, 256>(Qs + buf * Tile::kQBytes, q + offset(d.q, b, s.h, s.i0), d.q.t, d.Tq - s.i0, d.dh,
                                    vec);
      wgmma::load_tile<BQ, DH, 256>(Gs + buf * Tile::kQBytes, dout + offset(d.dout, b, s.h, s.i0), d.dout.t,
                                    d.Tq - s.i0, d.dh, vec);
    }
    if (threadIdx.x < BQ) {
      const int i = s.i0 + threadIdx.x;
      const int64_t at = (int64_t(b) * d.H + s.h) * d.Tq + min(i, d.Tq - 1);
      mma::cp_async4(Ls + buf * BQ + threadIdx.x, lse + at, i < d.Tq);
      mma::cp_async4(Ds + buf * BQ + threadIdx.x, Dv + at, i < d.Tq);
    }
  };
  if (steps > 0) {
    wgmma::load_tile<BN, DH, Tile::kThreads>(Ks, k + offset(d.k, b, hk, n0), d.k.t, d.Tk - n0, d.dh, vec);
    wgmma::load_tile<BN, DH, Tile::kThreads>(Vs, v + offset(d.v, b, hk, n0), d.v.t, d.Tk - n0, d.dh, vec);
    load_step(0, StepAt{hk * d.group, i_start});
    mma::cp_async_commit();
  }
  // Operand descriptors, built once: this warpgroup's 64 rows of K, V and dS^T (in column
  // block 0; block cb is BN rows further); buffer 0 of Q and dout.
  const uint32_t own_rows = 64 * wg * 128;
  const uint64_t k_desc = wgmma::descriptor(wgmma::smem_address(Ks) + own_rows),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs) + own_rows),
                 s_desc = wgmma::descriptor(wgmma::smem_address(Ss) + own_rows),
                 q_desc = wgmma::descriptor(wgmma::smem_address(Qs)),
                 g_desc = wgmma::descriptor(wgmma::smem_address(Gs));
  const wgmma::Swizzled<BN> s_layout;

  // Accumulators: a[4 j + e] = A[row 16 warp + lane / 4 + 8 (e / 2)][column 8 j + 2 (lane % 4) + e % 2]
  // (of column block cb for the [CB][32] ones).
  float gk[CB][32] = {}, gv[CB][32] = {};  // dK, dV of this warpgroup's keys (rows) x head dim
  StepAt cur{hk * d.group, i_start};
  // One barrier per step, at its end (and one before the first): it makes the next step's
  // tiles and this step's dq shares visible, and frees the buffers the step after next is
  // loaded into (their last readers, this step's products, are done).
  auto step_barrier = [&] {
    mma::cp_async_wait<0>();    // this thread's copies have landed
    wgmma::fence_async_smem();  // (the plain stores of the !vec path)
    __syncthreads();
  };
  if (steps > 0) {
    step_barrier();
    if (steps > 1) load_step(1, next_of(cur));
    mma::cp_async_commit();
  }
  for (int it = 0; it < steps; ++it) {
    const StepAt next = next_of(cur);
    const int buf = it % 2, i0 = cur.i0;
    const uint64_t qb = wgmma::advance(q_desc, buf * Tile::kQBytes), gb = wgmma::advance(g_desc, buf * Tile::kQBytes);

    float st[32], dpt[32];  // S^T and dP^T: this warpgroup's keys x the step's queries
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {  // column block ks / 4, bytes 32 (ks % 4) into its rows
      const uint32_t kv_at = ks / 4 * BN * 128 + ks % 4 * 32, q_at = ks / 4 * BQ * 128 + ks % 4 * 32;
      wgmma::mma_ss(st, wgmma::advance(k_desc, kv_at), wgmma::advance(qb, q_at), ks > 0);
    }
    wgmma::commit();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const uint32_t kv_at = ks / 4 * BN * 128 + ks % 4 * 32, q_at = ks / 4 * BQ * 128 + ks % 4 * 32;
      wgmma::mma_ss(dpt, wgmma::advance(v_desc, kv_at), wgmma::advance(gb, q_at), ks > 0);
    }
    wgmma::commit();
    // A warpgroup whose keys all come after the step's last query (or lie past Tk) adds
    // nothing to dK and dV: it skips those two products. Uniform per warpgroup.
    const bool idle = key0 > d.q_offset + i0 + BQ - 1 || key0 >= d.Tk;
    // st becomes P^T = exp(S^T scale - lse) while dP^T is being multiplied, then dpt
    // becomes dS^T = P^T (dP^T - D).
    const float* Lt = Ls + buf * BQ;
    const float* Dt = Ds + buf * BQ;
    const bool masked = key0 + 63 > d.q_offset + i0 || i0 + BQ > d.Tq || key0 + 64 > d.Tk;
    wgmma::wait<1>();
#pragma unroll
    for (int j = 0; j < BQ / 8; ++j) {
      const float2 l2 = *reinterpret_cast<const float2*>(Lt + 8 * j + 2 * (lane % 4));
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float p = exp2_fast(fmaf(st[4 * j + e], scale_log2, -(e & 1 ? l2.y : l2.x) * kLog2e));
        if (masked) {
          const int qi = i0 + 8 * j + 2 * (lane % 4) + (e & 1), key = krow + 8 * (e / 2);
          if (qi >= d.Tq || key > d.q_offset + qi || key >= d.Tk) p = 0.f;
        }
        st[4 * j + e] = p;
      }
    }
    wgmma::wait<0>();
    uint32_t pa[BQ / 16][4], da[BQ / 16][4];  // P^T and dS^T in bf16, as A operands
#pragma unroll
    for (int j = 0; j < BQ / 8; ++j) {
      const float2 d2 = *reinterpret_cast<const float2*>(Dt + 8 * j + 2 * (lane % 4));
#pragma unroll
      for (int e = 0; e < 4; ++e) dpt[4 * j + e] = st[4 * j + e] * (dpt[4 * j + e] - (e & 1 ? d2.y : d2.x));
    }
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      wgmma::a_from_c<BQ>(pa[kk], st, kk);
      wgmma::a_from_c<BQ>(da[kk], dpt, kk);
    }
    // dS^T to shared memory for the dq product: da[kk] holds columns 16 kk + 8 half + 2 (lane
    // % 4) of rows krow (a[2 half]) and krow + 8 (a[2 half + 1]).
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk)
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = 64 * wg + 16 * warp + lane / 4 + 8 * r, col = 16 * kk + 8 * half + 2 * (lane % 4);
          *reinterpret_cast<uint32_t*>(Ss + s_layout(row, col)) = da[kk][2 * half + r];
        }
    wgmma::fence_async_smem();

    if (!idle) {
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk)  // queries 16 kk .. 16 kk + 15
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
          wgmma::mma_m64n64_rs(gv[cb], pa[kk], wgmma::advance(gb, cb * BQ * 128 + kk * 16 * 128));
          wgmma::mma_m64n64_rs(gk[cb], da[kk], wgmma::advance(qb, cb * BQ * 128 + kk * 16 * 128));
        }
      wgmma::commit();
    }
    wgmma::barrier(1 + wg, 128);  // this warpgroup's dS^T is in shared memory
    float dq[CB][32];             // (queries, head dim) over this warpgroup's keys
    wgmma::fence();
#pragma unroll
    for (int cb = 0; cb < CB; ++cb)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)  // keys 16 kk .. 16 kk + 15 of this warpgroup's
        wgmma::mma_ss<true>(dq[cb], wgmma::advance(s_desc, kk * 16 * 128),
                            wgmma::advance(k_desc, cb * BN * 128 + kk * 16 * 128), kk > 0);
    wgmma::commit();
    wgmma::wait<0>();

    // The dq exchange: the 64 x DH tile in units u = (DH / 32) w + p (rows of warp w,
    // columns 32 p ..), unit u summed by warpgroup u % kGroups; the other warpgroups' warps
    // w put their share of it in slots 0 .. kGroups - 2. Double-buffered by step.
    constexpr int P = DH / 32;  // units per warp
    float4* x = Xs + it % 2 * Tile::kXFloat4s + lane;
    auto at = [&](int slot, int u, int i) { return x + ((slot * Tile::kUnits + u) * 4 + i) * 32; };
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int u = P * warp + p, owner = u % kGroups;
      if (owner != wg) {
        const int slot = (wg - owner + kGroups) % kGroups - 1;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float* f = dq[p / 2] + 16 * (p % 2) + 4 * i;
          *at(slot, u, i) = make_float4(f[0], f[1], f[2], f[3]);
        }
      }
    }
    step_barrier();
    if (it + 2 < steps) load_step(it + 2, next_of(next));
    mma::cp_async_commit();
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int u = P * warp + p;
      if (u % kGroups != wg) continue;
      float* f = dq[p / 2] + 16 * (p % 2);
#pragma unroll
      for (int slot = 0; slot < kGroups - 1; ++slot)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 o = *at(slot, u, i);
          f[4 * i] += o.x, f[4 * i + 1] += o.y, f[4 * i + 2] += o.z, f[4 * i + 3] += o.w;
        }
      add_dq_rows(dq_acc, d, b, cur.h, i0 + 16 * warp, 32 * p, reinterpret_cast<const float(&)[4][4]>(*f), lane, vec);
    }
    cur = next;
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = krow + 8 * r;
    if (key >= d.Tk) continue;
    bf16_t* dk_row = dk + offset(d.dk, b, hk, key);
    bf16_t* dv_row = dv + offset(d.dv, b, hk, key);
#pragma unroll
    for (int cb = 0; cb < CB; ++cb)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = 64 * cb + 8 * j + 2 * (lane % 4);
        const float k0 = gk[cb][4 * j + 2 * r] * scale, k1 = gk[cb][4 * j + 2 * r + 1] * scale;
        const float v0 = gv[cb][4 * j + 2 * r], v1 = gv[cb][4 * j + 2 * r + 1];
        if (vec) {
          if (col < d.dh) {
            *reinterpret_cast<uint32_t*>(dk_row + col) = mma::pack_bf16(k0, k1);
            *reinterpret_cast<uint32_t*>(dv_row + col) = mma::pack_bf16(v0, v1);
          }
        } else {
          if (col < d.dh) dk_row[col] = __float2bfloat16(k0), dv_row[col] = __float2bfloat16(v0);
          if (col + 1 < d.dh) dk_row[col + 1] = __float2bfloat16(k1), dv_row[col + 1] = __float2bfloat16(v1);
        }
      }
  }
}

// dq = scale * dq_acc, rounded to bf16 (both dense with the same strides), each RoPE pair
// rotated back first when rot is on (dh is even, so a pair never straddles a pack or a row).
// Grid-stride over packs of 8 (two 16-byte loads, one 16-byte store; src and dst fresh
// allocations, so aligned), then the n % 8 tail a pair at a time (n is even with rot on).
// Index arithmetic in I: 32 bits whenever n fits (a pack's row and position cost three
// divisions, which 64-bit arithmetic would make the pass's largest cost).
template <class I>
__global__ void scale_to_bf16_kernel(const float* src, bf16_t* dst, float scale, I n, RopeRows rot) {
  const I packs = n / 8, stride = I(gridDim.x) * blockDim.x, first = I(blockIdx.x) * blockDim.x + threadIdx.x;
  const I dh = I(rot.dh), heads_inner = I(rot.heads_inner), Tq = I(rot.Tq);
  auto rotate = [&](I i, float& x0, float& x1) {  // elements i, i + 1 (i even)
    const I row = i / dh;
    rot.inverse(rot.q_offset + row / heads_inner % Tq, (i - row * dh) / 2, x0, x1);
  };
  for (I p = first; p < packs; p += stride) {
    const Pack<float, 4> lo = load_pack<4>(src, 8 * int64_t(p)), hi = load_pack<4>(src, 8 * int64_t(p) + 4);
    float x[8];
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = lo.v[k] * scale, x[4 + k] = hi.v[k] * scale;
    if (rot.on())
#pragma unroll
      for (int q = 0; q < 4; ++q) rotate(8 * p + 2 * q, x[2 * q], x[2 * q + 1]);
    Pack<bf16_t, 8> out;
#pragma unroll
    for (int k = 0; k < 8; ++k) out.v[k] = __float2bfloat16(x[k]);
    store_pack(dst, 8 * int64_t(p), out);
  }
  if (!rot.on()) {
    for (I i = 8 * packs + first; i < n; i += stride) dst[i] = __float2bfloat16(src[i] * scale);
    return;
  }
  for (I i = 8 * packs + 2 * first; i < n; i += 2 * stride) {
    float x0 = src[i] * scale, x1 = src[i + 1] * scale;
    rotate(i, x0, x1);
    dst[i] = __float2bfloat16(x0), dst[i + 1] = __float2bfloat16(x1);
  }
}

}  // namespace sessa::cuda::attn
