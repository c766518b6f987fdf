// bfloat16 causal attention backward at head dim 64 on Hopper warpgroup tensor cores
// (wgmma, sm_90a), in the FlashAttention-2 order; the math is in tensor/ops/attention.cpp,
// the building blocks in tensor/cuda/wgmma.cuh, host-side dispatch in
// tensor/cuda/attention.cu. Head dim 128 runs the mma.sync backward (attention_mma.cuh):
// its dk, dv accumulators (64 + 64 registers per thread here) leave no room for S^T, dP^T
// and the dq product.
//
// D_i = dout_i . out_i first (attention.cu). A block of two warpgroups (256 threads) owns
// BN = 128 keys of one kv head, 64 per warpgroup, and walks the query tiles (BQ = 64 rows)
// of every query head of its group (so GQA needs no reduction for dk, dv). K, V, and the
// step's Q and dout sit in shared memory in the 128-byte swizzle; Q, dout, lse and D of
// step s + 1 are loaded by cp.async while step s runs. Per step and warpgroup (keys kw):
//   S^T  = K_kw Q^T     m64n64k16 x 4, A = K and B = Q both K-major;
//   dP^T = V_kw dout^T  the same with V and dout;
//   P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D) on the accumulators in float32;
//   dV += P^T dout      A = P^T from registers (packed from the S^T accumulators), B = dout
//                       MN-major;
//   dK += dS^T Q        likewise with dS^T and Q;
//   dq_kw = dS_kw K_kw  the warpgroup's share of the step's dq tile (64 x 64, over its 64
//                       keys): dS^T goes to shared memory and comes back as the A operand
//                       (MN-major, tnspA), K as the B operand (MN-major).
// The two shares of dq are summed in shared memory, each warpgroup taking 32 of the rows
// (the one that owns them adds the other's share), and added into a float32 buffer shaped
// like dq with 16-byte atomics (red.global.add.v4.f32; the sum over key blocks is not
// bitwise reproducible run to run), scaled and rounded to bf16 by a last pass. dk, dv stay
// in registers for the whole walk and are written once. Only steps whose tile holds a
// masked pair (diagonal, past Tq or Tk) pay for the mask.
//
// Budget (ptxas -v, sm_90a; one block per SM): dk, dv 2 x 32 + S^T, dP^T 2 x 32
// accumulator registers per thread, then P^T, dS^T packed 2 x 16 + dq 32. Shared: K, V
// 2 x 16 KiB + 2 x (Q, dout) 32 KiB + dS^T 16 KiB + the dq exchange 16 KiB + lse, D 1 KiB.
#pragma once
#include "tensor/cuda/attention_mma.cuh"
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/wgmma.cuh"

namespace sessa::cuda::attn {

struct WgmmaBackwardTile {
  static constexpr int DH = 64, BN = 128, BQ = 64, kThreads = 256;
  static constexpr int kKVBytes = BN * DH * 2, kQBytes = BQ * DH * 2, kSBytes = BN * BQ * 2;
  static constexpr int kXBytes = 2 * 64 * 32 * 4;  // two halves of dq, 64 threads x 32 floats each
  static constexpr size_t smem_bytes = 2 * kKVBytes + 4 * kQBytes + kSBytes + kXBytes + 4 * BQ * 4 + 1024;
};

// grid (B * Hkv, key blocks), 256 threads. dq_acc: float32 like dq (strides d.dq), zeroed.
// vec also promises 16-byte aligned rows of dq_acc, dk and dv.
__global__ void __launch_bounds__(256, 1)
    wgmma_backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                   const float* Dv, float* dq_acc, bf16_t* dk, bf16_t* dv, Dims d, float scale_log2, float scale,
                   bool vec) {
  using Tile = WgmmaBackwardTile;
  constexpr int BN = Tile::BN, BQ = Tile::BQ, DH = Tile::DH;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Ks =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Vs = Ks + Tile::kKVBytes;                     // (BN, DH)
  unsigned char* Qs = Vs + Tile::kKVBytes;                     // 2 x (BQ, DH)
  unsigned char* Gs = Qs + 2 * Tile::kQBytes;                  // 2 x (BQ, DH): dout
  unsigned char* Ss = Gs + 2 * Tile::kQBytes;                  // (BN, BQ): dS^T
  float4* Xs = reinterpret_cast<float4*>(Ss + Tile::kSBytes);  // 2 halves x 8 x 64 threads
  float* Ls = reinterpret_cast<float*>(Xs + 2 * 8 * 64);       // 2 x BQ: lse
  float* Ds = Ls + 2 * BQ;                                     // 2 x BQ: D
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
    wgmma::load_tile<BQ, DH, Tile::kThreads>(Qs + buf * Tile::kQBytes, q + offset(d.q, b, s.h, s.i0), d.q.t,
                                             d.Tq - s.i0, d.dh, vec);
    wgmma::load_tile<BQ, DH, Tile::kThreads>(Gs + buf * Tile::kQBytes, dout + offset(d.dout, b, s.h, s.i0), d.dout.t,
                                             d.Tq - s.i0, d.dh, vec);
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
  // Operand descriptors, built once: this warpgroup's 64 rows of K, V and dS^T; buffer 0
  // of Q and dout.
  const uint32_t own_rows = 64 * wg * 128;
  const uint64_t k_desc = wgmma::descriptor(wgmma::smem_address(Ks) + own_rows),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs) + own_rows),
                 s_desc = wgmma::descriptor(wgmma::smem_address(Ss) + own_rows),
                 q_desc = wgmma::descriptor(wgmma::smem_address(Qs)),
                 g_desc = wgmma::descriptor(wgmma::smem_address(Gs));
  const wgmma::Swizzled<BN> s_layout;

  // Accumulators: a[4 j + e] = A[row 16 warp + lane / 4 + 8 (e / 2)][column 8 j + 2 (lane % 4) + e % 2].
  float gk[32] = {}, gv[32] = {};  // dK, dV of this warpgroup's keys (rows) x head dim
  StepAt cur{hk * d.group, i_start};
  for (int it = 0; it < steps; ++it) {
    mma::cp_async_wait<0>();    // this thread's copies of step it have landed
    wgmma::fence_async_smem();  // (the plain stores of the !vec path)
    // Everyone's copies have landed; every product of step it - 1 is done (the buffers of
    // step it + 1, dS^T and the dq exchange may be rewritten).
    __syncthreads();
    const StepAt next = next_of(cur);
    if (it + 1 < steps) load_step(it + 1, next);
    mma::cp_async_commit();
    const int buf = it % 2, i0 = cur.i0;
    const uint64_t qb = wgmma::advance(q_desc, buf * Tile::kQBytes), gb = wgmma::advance(g_desc, buf * Tile::kQBytes);

    float st[32], dpt[32];  // S^T and dP^T: this warpgroup's keys x the step's queries
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks)
      wgmma::mma_ss(st, wgmma::advance(k_desc, 32 * ks), wgmma::advance(qb, 32 * ks), ks > 0);
    wgmma::commit();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks)
      wgmma::mma_ss(dpt, wgmma::advance(v_desc, 32 * ks), wgmma::advance(gb, 32 * ks), ks > 0);
    wgmma::commit();

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

    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {  // queries 16 kk .. 16 kk + 15
      wgmma::mma_m64n64_rs(gv, pa[kk], wgmma::advance(gb, kk * 16 * 128));
      wgmma::mma_m64n64_rs(gk, da[kk], wgmma::advance(qb, kk * 16 * 128));
    }
    wgmma::commit();
    wgmma::barrier(1 + wg, 128);  // this warpgroup's dS^T is in shared memory
    float dq[32];                 // (queries, head dim) over this warpgroup's keys
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)  // keys 16 kk .. 16 kk + 15 of this warpgroup's
      wgmma::mma_ss_mn(dq, wgmma::advance(s_desc, kk * 16 * 128), wgmma::advance(k_desc, kk * 16 * 128), kk > 0);
    wgmma::commit();
    wgmma::wait<0>();

    // The dq exchange: rows 0..31 (warps 0, 1) are summed by warpgroup 0, rows 32..63 by
    // warpgroup 1; the other warpgroup's warps with those rows hand theirs over.
    const bool low = warp < 2, sender = (wg == 0) != low;
    float4* x = Xs + (low ? 0 : 8 * 64) + t % 64;
    if (sender)
#pragma unroll
      for (int i = 0; i < 8; ++i) x[i * 64] = make_float4(dq[4 * i], dq[4 * i + 1], dq[4 * i + 2], dq[4 * i + 3]);
    __syncthreads();
    if (!sender) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float4 o = x[i * 64];
        dq[4 * i] += o.x, dq[4 * i + 1] += o.y, dq[4 * i + 2] += o.z, dq[4 * i + 3] += o.w;
      }
      add_dq_rows(dq_acc, d, b, cur.h, i0 + 16 * warp, 0, reinterpret_cast<const float(&)[8][4]>(dq), lane, vec);
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
    for (int j = 0; j < DH / 8; ++j) {
      const int col = 8 * j + 2 * (lane % 4);
      const float k0 = gk[4 * j + 2 * r] * scale, k1 = gk[4 * j + 2 * r + 1] * scale;
      const float v0 = gv[4 * j + 2 * r], v1 = gv[4 * j + 2 * r + 1];
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

}  // namespace sessa::cuda::attn
