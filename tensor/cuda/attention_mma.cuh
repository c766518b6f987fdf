// bfloat16 causal attention backward on tensor cores (mma.sync m16n8k16, float32
// accumulate), in the FlashAttention-2 order, for head dims above 64 (head dim 64 and below
// run the warpgroup kernel, attention_wgmma_backward.cuh, which shares add_dq_rows below);
// the math is in tensor/ops/attention.cpp, the fragment helpers in tensor/cuda/mma.cuh,
// host-side dispatch in tensor/cuda/attention.cu, the forward (Hopper wgmma) in
// attention_wgmma.cuh. The head-dim-64 budget below is the record of what this kernel
// did there (the template still takes it; nothing launches it).
//
// Backward (FlashAttention-2 structure): D_i = dout_i . out_i first (attention.cu), then
// one kernel with a block per tile of BN = 128 keys of one kv head, each warp owning KT
// 16-key MMA tiles, walking the query tiles (BQ = 32 rows) of every query head of its
// group, so GQA needs no reduction for dk, dv. Per query tile, with P rebuilt from lse:
// S^T = K Q^T and dP^T = V dout^T, dS^T = P^T (dP^T - D), then dv += P^T dout and
// dk += dS^T Q straight from the accumulators (c_to_a), dk, dv staying in registers for
// the whole walk. dS^T goes through shared memory once so the block can form
// dq_tile = dS K, which is added into a float32 buffer shaped like dq with 16-byte
// atomics (red.global.add.v4.f32, sm_90; the sum over key tiles is therefore not bitwise
// reproducible run to run) and scaled and rounded to bf16 by a last pass. dk, dv are
// written once at the end. Q, dout, lse and D of query tile s + 1 are loaded by cp.async
// while tile s is multiplied, and the dq product of step s runs after the products of
// step s + 1 from a second dS^T buffer, so one barrier per step suffices and a warp done
// with its products goes straight on to dq. Only the warp tiles that hold a masked pair
// (diagonal, past Tq or Tk) pay for the mask.
//
// Budgets (BackwardTile; registers from ptxas -v for sm_90, no spills; 65536 registers
// and 228 KiB of shared memory per SM):
//   head dim 64: 4 warps of 32 keys (KT = 2), 2 blocks per SM. Registers per thread:
//     dk, dv 2 x 64 + S^T, dP^T 2 x 32 = 192, plus fragments in flight and addresses:
//     249 (2 blocks x 128 threads x 256 fill the register file). Shared: K, V 2 x 18 KiB
//     + Q, dout double-buffered 4 x 4.5 KiB + dS^T double-buffered 2 x 10 KiB + lse, D
//     0.5 KiB = 74.5 KiB (149 KiB for two blocks). 8 warps per SM in two independent
//     blocks (12.5% occupancy).
//   head dim 128: 8 warps of 16 keys (KT = 1; dk, dv take 2 x 64 registers), 1 block per
//     SM: 239 registers; K, V 2 x 34 KiB + Q, dout 4 x 8.5 KiB + dS^T 2 x 10 KiB + 0.5
//     KiB = 122.5 KiB.
// Per warp and step (head dim 64): 160 MMAs (S, dP, dv, dk, dq: 32 each) against 72
// ldmatrix.x4 (S, dP 32: K, V A fragments 16 + Q, dout B fragments 16; dv, dk 16; dq 24),
// so 2304 cycles of shared-memory bandwidth (128 B per cycle) per 128 keys x 64 queries,
// against 2816 for 8 warps of 16 keys with 64-query steps (K, V fragments kept in
// registers; 237 registers, one block per SM) and 3584 for 8 warps of 16 keys with 32-
// query steps (128 registers, 2 blocks: 16 warps per SM): the wider warp tile reads each
// Q, dout fragment once for two key tiles. Measured on the H200 (docs/performance.md,
// 2026-11-30 night), head dim 64, T = 4096: 197.8 TFLOP/s, against 171.6 and 171.4 for
// those two alternatives. Per block and step one 32 x 64 float32 dq tile of reds (four
// 16-byte reds per thread). Against the former kernel (4 warps of 16 keys, 64-key blocks,
// 3 blocks per SM): each Q, dout tile in shared memory serves 128 keys (half the L2 reads
// of Q, dout, lse, D and half the dq atomics per FLOP), 16-byte instead of 8-byte reds, 1
// instead of 3 barriers per step, 72 instead of 92 ldmatrix per 160 MMAs, no mask
// arithmetic off the diagonal.
#pragma once
#include <cuda_bf16.h>

#include <type_traits>

#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/mma.cuh"

namespace sessa::cuda::attn {

using bf16_t = __nv_bfloat16;

// Backward tile sizes (budgets in the file header): kWarps warps of KT 16-key MMA tiles
// each, so a block owns BN = 16 KT kWarps = 128 keys; BQ queries per step; kMinBlocks
// blocks per SM (caps the registers at 65536 / (kMinBlocks kThreads)).
template <int DH>
struct BackwardTile {
  static constexpr int KT = DH > 64 ? 1 : 2, kWarps = DH > 64 ? 8 : 4, kThreads = 32 * kWarps, BN = 16 * KT * kWarps;
  static constexpr int BQ = 32, LD = DH + 8, LDS = BQ + 8, kMinBlocks = DH > 64 ? 1 : 2;
  // dq = dS K: the (BQ, DH) tile split over the warps as WR row tiles x WC column parts.
  static constexpr int WR = BQ / 16, WC = kWarps / WR, CN = DH / WC;
  static_assert(WR * WC == kWarps && CN % 16 == 0, "dq tile split");
  // K, V; 2 x (Q, dout); 2 x dS^T; 2 x (lse, D)
  static constexpr size_t smem_bytes =
      size_t(2 * BN + 4 * BQ) * LD * sizeof(bf16_t) + size_t(2 * BN) * LDS * sizeof(bf16_t) + 4 * BQ * sizeof(float);
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

// grid (B * Hkv, key tiles), BackwardTile<DH>::kThreads threads. dq_acc: float32 like dq
// (strides d.dq), zeroed. vec also promises 16-byte aligned rows of dq_acc, dk and dv.
template <int DH>
__global__ void __launch_bounds__(BackwardTile<DH>::kThreads, BackwardTile<DH>::kMinBlocks)
    mma_backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                 const float* Dv, float* dq_acc, bf16_t* dk, bf16_t* dv, Dims d, float scale_log2, float scale,
                 bool vec) {
  using namespace mma;
  using Tile = BackwardTile<DH>;
  constexpr int BN = Tile::BN, BQ = Tile::BQ, LD = Tile::LD, LDS = Tile::LDS, CN = Tile::CN, KT = Tile::KT;
  constexpr int KS = DH / 16, QT = BQ / 8, DT = DH / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16_t* Ks = reinterpret_cast<bf16_t*>(smem_bytes);       // (BN, LD)
  bf16_t* Vs = Ks + BN * LD;                                // (BN, LD)
  bf16_t* Qs = Vs + BN * LD;                                // 2 x (BQ, LD)
  bf16_t* Gs = Qs + 2 * BQ * LD;                            // 2 x (BQ, LD): dout
  bf16_t* Ss = Gs + 2 * BQ * LD;                            // 2 x (BN, LDS): dS^T
  float* Ls = reinterpret_cast<float*>(Ss + 2 * BN * LDS);  // 2 x BQ: lse
  float* Ds = Ls + 2 * BQ;                                  // 2 x BQ: D
  // The same tiles as shared addresses, for the fragment loads.
  const uint32_t ks_at = smem_address(Ks), vs_at = smem_address(Vs), qs_at = smem_address(Qs), gs_at = smem_address(Gs),
                 ss_at = smem_address(Ss);
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, c = lane % 4;
  const int b = blockIdx.x / d.Hkv, hk = blockIdx.x % d.Hkv, n0 = blockIdx.y * BN;

  // The steps: query tiles i0 >= i_start (earlier queries see none of these keys) of each
  // query head of the group, diagonal tile first.
  const int i_start = max(0, n0 - d.q_offset) / BQ * BQ;
  const int per_head = i_start < d.Tq ? (d.Tq - i_start + BQ - 1) / BQ : 0, steps = per_head * d.group;
  // (head, first query) of a step and of the step after it.
  struct StepAt {
    int h, i0;
  };
  auto next_of = [&](StepAt s) { return s.i0 + BQ < d.Tq ? StepAt{s.h, s.i0 + BQ} : StepAt{s.h + 1, i_start}; };
  auto load_step = [&](int step, StepAt s) {
    const int h = s.h, i0 = s.i0, buf = step % 2;
    load_tile<BQ, DH, Tile::kThreads>(Qs + buf * BQ * LD, LD, q + offset(d.q, b, h, i0), d.q.t, d.Tq - i0, d.dh, vec);
    load_tile<BQ, DH, Tile::kThreads>(Gs + buf * BQ * LD, LD, dout + offset(d.dout, b, h, i0), d.dout.t, d.Tq - i0,
                                      d.dh, vec);
    if (threadIdx.x < BQ) {
      const int i = i0 + threadIdx.x;
      const int64_t at = (int64_t(b) * d.H + h) * d.Tq + min(i, d.Tq - 1);
      cp_async4(Ls + buf * BQ + threadIdx.x, lse + at, i < d.Tq);
      cp_async4(Ds + buf * BQ + threadIdx.x, Dv + at, i < d.Tq);
    }
  };

  // This warp's keys: key0 + 16 mt + g and key0 + 16 mt + g + 8 for the MMA tiles mt < KT.
  const int key0 = n0 + w * 16 * KT;
  float gk[KT][DT][4] = {}, gv[KT][DT][4] = {};
  if (steps > 0) {
    load_tile<BN, DH, Tile::kThreads>(Ks, LD, k + offset(d.k, b, hk, n0), d.k.t, d.Tk - n0, d.dh, vec);
    load_tile<BN, DH, Tile::kThreads>(Vs, LD, v + offset(d.v, b, hk, n0), d.v.t, d.Tk - n0, d.dh, vec);
    load_step(0, StepAt{hk * d.group, i_start});
    cp_async_commit();
  }
  // dq part of this warp: rows dq_r0.., columns dq_c0..dq_c0+CN-1 of the query tile.
  const int dq_r0 = w % Tile::WR * 16, dq_c0 = w / Tile::WR * CN;
  // Iteration `it` runs the products of step it (S, dP, dv, dk; dS^T into buffer it % 2)
  // and then the dq product of step it - 1, whose dS^T is complete since the barrier.
  StepAt cur{hk * d.group, i_start}, prev = cur;  // of steps it and it - 1
  for (int it = 0; it < steps + (steps > 0); ++it) {
    cp_async_wait<0>();  // this thread's copies of step it's tiles have landed
    // Everyone's copies have landed, every warp is done with the products of step it - 1
    // (its Q, dout buffers are refilled by the prefetch below; its dS^T is complete) and
    // with the dq product of step it - 2 (its dS^T buffer is rewritten below).
    __syncthreads();
    const StepAt next = next_of(cur);
    if (it + 1 < steps) load_step(it + 1, next);
    cp_async_commit();
    if (it < steps) {
      const int step = it, i0 = cur.i0, buf = step % 2;
      const uint32_t qt_at = qs_at + buf * BQ * LD * 2, gt_at = gs_at + buf * BQ * LD * 2;
      const float* Lt = Ls + buf * BQ;
      const float* Dt = Ds + buf * BQ;
      bf16_t* St = Ss + buf * BN * LDS;
      // Last key any query of the tile sees.
      const int key_end = d.q_offset + i0 + BQ - 1;
      if (key0 <= key_end) {                            // else no query of the tile sees this warp's keys
        float st[KT][QT][4] = {}, dpt[KT][QT][4] = {};  // (16 KT keys, BQ queries) of S^T and dP^T
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          uint32_t ak[KT][4], av[KT][4];
#pragma unroll
          for (int mt = 0; mt < KT; ++mt) {
            load_a(ak[mt], ks_at, LD, w * 16 * KT + mt * 16, ks * 16, lane);
            load_a(av[mt], vs_at, LD, w * 16 * KT + mt * 16, ks * 16, lane);
          }
#pragma unroll
          for (int np = 0; np < QT / 2; ++np) {
            uint32_t bq[4], bg[4];
            load_b_pair(bq, qt_at, LD, np * 16, ks * 16, lane);
            load_b_pair(bg, gt_at, LD, np * 16, ks * 16, lane);
#pragma unroll
            for (int mt = 0; mt < KT; ++mt) {
              mma_bf16(st[mt][2 * np], ak[mt], bq[0], bq[1]);
              mma_bf16(st[mt][2 * np + 1], ak[mt], bq[2], bq[3]);
              mma_bf16(dpt[mt][2 * np], av[mt], bg[0], bg[1]);
              mma_bf16(dpt[mt][2 * np + 1], av[mt], bg[2], bg[3]);
            }
          }
        }
        // st becomes P^T = exp(S^T scale - lse), dpt becomes dS^T = P^T (dP^T - D). The mask
        // (keys after a query, queries past Tq, keys past Tk) is only paid for where the
        // warp's (16 KT, BQ) tile holds such a pair.
        auto softmax_grad = [&](auto masked) {
#pragma unroll
          for (int nt = 0; nt < QT; ++nt) {
            const float2 l2 = *reinterpret_cast<const float2*>(Lt + nt * 8 + 2 * c);
            const float2 d2 = *reinterpret_cast<const float2*>(Dt + nt * 8 + 2 * c);
#pragma unroll
            for (int mt = 0; mt < KT; ++mt)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float l = e & 1 ? l2.y : l2.x, dd = e & 1 ? d2.y : d2.x;
                float p = exp2_fast(fmaf(st[mt][nt][e], scale_log2, -l * kLog2e));
                if constexpr (decltype(masked)::value) {
                  const int qi = i0 + nt * 8 + 2 * c + (e & 1), key = key0 + mt * 16 + g + 8 * (e / 2);
                  if (qi >= d.Tq || key > d.q_offset + qi || key >= d.Tk) p = 0.f;
                }
                st[mt][nt][e] = p;
                dpt[mt][nt][e] = p * (dpt[mt][nt][e] - dd);
              }
          }
        };
        if (key0 + 16 * KT - 1 <= d.q_offset + i0 && i0 + BQ <= d.Tq && key0 + 16 * KT <= d.Tk)
          softmax_grad(std::false_type{});
        else
          softmax_grad(std::true_type{});
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {  // dv += P^T dout, dk += dS^T Q
          uint32_t pa[KT][4], da[KT][4];
#pragma unroll
          for (int mt = 0; mt < KT; ++mt) {
            c_to_a(pa[mt], st[mt][2 * kk], st[mt][2 * kk + 1]);
            c_to_a(da[mt], dpt[mt][2 * kk], dpt[mt][2 * kk + 1]);
          }
#pragma unroll
          for (int dp = 0; dp < DT / 2; ++dp) {
            uint32_t bg[4], bq[4];
            load_b_pair_trans(bg, gt_at, LD, dp * 16, kk * 16, lane);
            load_b_pair_trans(bq, qt_at, LD, dp * 16, kk * 16, lane);
#pragma unroll
            for (int mt = 0; mt < KT; ++mt) {
              mma_bf16(gv[mt][2 * dp], pa[mt], bg[0], bg[1]);
              mma_bf16(gv[mt][2 * dp + 1], pa[mt], bg[2], bg[3]);
              mma_bf16(gk[mt][2 * dp], da[mt], bq[0], bq[1]);
              mma_bf16(gk[mt][2 * dp + 1], da[mt], bq[2], bq[3]);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < KT; ++mt)
#pragma unroll
          for (int nt = 0; nt < QT; ++nt) {
            bf16_t* row = St + (w * 16 * KT + mt * 16 + g) * LDS + nt * 8 + 2 * c;
            *reinterpret_cast<uint32_t*>(row) = pack_bf16(dpt[mt][nt][0], dpt[mt][nt][1]);
            *reinterpret_cast<uint32_t*>(row + 8 * LDS) = pack_bf16(dpt[mt][nt][2], dpt[mt][nt][3]);
          }
      } else {  // (never read: the dq product stops at key_end; zeroed all the same)
#pragma unroll
        for (int mt = 0; mt < KT; ++mt)
#pragma unroll
          for (int nt = 0; nt < QT; ++nt) {
            bf16_t* row = St + (w * 16 * KT + mt * 16 + g) * LDS + nt * 8 + 2 * c;
            *reinterpret_cast<uint32_t*>(row) = 0u;
            *reinterpret_cast<uint32_t*>(row + 8 * LDS) = 0u;
          }
      }
    }
    if (it > 0) {
      // dq rows of step it - 1 += dS K over the block's keys up to key_end, into dq_acc.
      const int step = it - 1, h = prev.h, i0 = prev.i0;
      const uint32_t st_at = ss_at + step % 2 * BN * LDS * 2;
      const int key_end = d.q_offset + i0 + BQ - 1;
      const int kk_end = min(BN / 16, (key_end - n0) / 16 + 1);  // key_end >= n0 by i_start
      // Two sets of accumulators (even and odd kk) halve the chains of dependent MMAs; the
      // registers of st and dpt are free here.
      float acc2[2][CN / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        if (kk < kk_end) {
          uint32_t a[4];
          load_a_trans(a, st_at, LDS, dq_r0, kk * 16, lane);
#pragma unroll
          for (int dp = 0; dp < CN / 16; ++dp) {
            uint32_t bk[4];
            load_b_pair_trans(bk, ks_at, LD, dq_c0 + dp * 16, kk * 16, lane);
            mma_bf16(acc2[kk % 2][2 * dp], a, bk[0], bk[1]);
            mma_bf16(acc2[kk % 2][2 * dp + 1], a, bk[2], bk[3]);
          }
        }
      }
      float acc[CN / 8][4];
#pragma unroll
      for (int nt = 0; nt < CN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = acc2[0][nt][e] + acc2[1][nt][e];
      add_dq_rows(dq_acc, d, b, h, i0 + dq_r0, dq_c0, acc, lane, vec);
    }
    prev = cur, cur = next;
  }

#pragma unroll
  for (int mt = 0; mt < KT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + mt * 16 + g + 8 * r;
      if (key >= d.Tk) continue;
      bf16_t* dk_row = dk + offset(d.dk, b, hk, key);
      bf16_t* dv_row = dv + offset(d.dv, b, hk, key);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const int col = dt * 8 + 2 * c;
        const float k0 = gk[mt][dt][2 * r] * scale, k1 = gk[mt][dt][2 * r + 1] * scale;
        const float v0 = gv[mt][dt][2 * r], v1 = gv[mt][dt][2 * r + 1];
        if (vec) {
          if (col < d.dh) {
            *reinterpret_cast<uint32_t*>(dk_row + col) = pack_bf16(k0, k1);
            *reinterpret_cast<uint32_t*>(dv_row + col) = pack_bf16(v0, v1);
          }
        } else {
          if (col < d.dh) dk_row[col] = __float2bfloat16(k0), dv_row[col] = __float2bfloat16(v0);
          if (col + 1 < d.dh) dk_row[col + 1] = __float2bfloat16(k1), dv_row[col + 1] = __float2bfloat16(v1);
        }
      }
    }
}

// dq = scale * dq_acc, rounded to bf16 (both dense with the same strides).
__global__ void scale_to_bf16_kernel(const float* src, bf16_t* dst, float scale, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16(src[i] * scale);
}

}  // namespace sessa::cuda::attn
