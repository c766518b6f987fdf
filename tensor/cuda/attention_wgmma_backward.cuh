// bfloat16 causal attention backward on Hopper warpgroup tensor cores (wgmma, sm_90a), in
// the FlashAttention-2 order, head dims up to 128; the math is in tensor/ops/attention.cpp,
// the building blocks in tensor/cuda/wgmma.cuh, host-side dispatch in
// tensor/cuda/attention.cu, the forward in attention_wgmma.cuh.
//
// D_i = dout_i . out_i first (attention.cu). A block owns BN = 64 kConsumers keys of one kv
// head and walks the query tiles (BQ = 64 rows) of every query head of its group (so GQA
// needs no reduction for dk, dv), from the last tile down: FlashAttention-3's warp
// specialisation, like the forward. Blocks are numbered so that the key blocks of 16 kv
// heads run together (below), walking the same Q, dout and dq tiles at about the same time:
// L2 serves most of those reads and sums (numbered head-major instead, each head's blocks
// ran apart and took up to a third longer at T <= 2048, head dim 128; docs/performance.md,
// seventeenth session). Warpgroup 0 is the producer: it gives most of its registers back,
// has the copy engine load K and V once and each step's Q and dout into kStages buffers
// (128-byte swizzle), and copies the step's lse and D with its first warp's cp.async; a
// buffer's `full` barrier completes when all of that has landed, its `empty` barrier when
// every consumer thread is done with it. Consumer c (warpgroup 1 + c) owns keys
// 64 c .. 64 c + 63 (kw) and, per step:
//   S^T  = K_kw Q^T     m64n64k16 x DH / 16, B = Q K-major; A = K K-major in shared memory,
//                       or at head dim 64 from registers (loaded once, kKVInRegisters: the
//                       products then read half the shared-memory bytes);
//   dP^T = V_kw dout^T  the same with V and dout;
//   P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D) on the accumulators in float32;
//   dV += P^T dout      A = P^T from registers (packed from the S^T accumulators), B = dout
//                       MN-major, one m64nDH product as wide as the head (its 64-column
//                       blocks in one descriptor, as the forward's P V);
//   dK += dS^T Q        likewise with dS^T and Q;
//   dq                  dS^T goes to shared memory (double-buffered by step); the step's dq
//                       tile is dS K over all BN keys, both operands read transposed
//                       (tnspA, tnspB), staged in shared memory in the float32 tile map's
//                       layout, and one thread has the copy engine add it into a float32
//                       buffer shaped like dq (cp.reduce.async.bulk.tensor; the sum over key
//                       blocks is not bitwise reproducible run to run), scaled and rounded
//                       to bf16 by a last pass. Head dim 128: after a named barrier of both
//                       consumers, each computes DQ = DH / 2 of the columns. Head dim 64
//                       (kDqByTurns): consumer it % 2 alone computes all of step it's
//                       columns, once the other has arrived at the step's barrier with its
//                       dS^T rows (bar.arrive, without waiting), and tells it when the dS^T
//                       buffer is read (kDsRead); the other goes straight on to its
//                       next step, so the two run about half a step apart and one's
//                       exponentials overlap the other's products (+1-3% alone, +3-8% with
//                       K and V in registers, docs/performance.md eighteenth session).
// dk, dv stay in registers for the whole walk and are written once. Only steps whose tile
// holds a masked pair (diagonal, past Tq or Tk) pay for the mask (its own unrolled copy of
// the softmax loop). When the op owns RoPE, dq's pairs are rotated back in the scaling pass
// (dk's by rope after the walk: rotating them in its epilogue, from tables or from angles
// computed there, cost the register-capped walk more than the rope pass it saves;
// docs/performance.md, 2026-12-02).
//
// Budgets (ptxas -v, sm_90a; one block per SM; producer 24 / consumers 240 registers after
// setmaxnreg, no spills): two consumers at both head dims (128 keys). Head dim 128: dk, dv
// 2 x 64 + S^T, dP^T 2 x 32 accumulator registers per thread, then P^T, dS^T packed 2 x
// 16 + dq 32; shared K, V 2 x 32 KiB + 2 x (Q, dout) 64 KiB + 2 x dS^T 32 KiB + 2 x 2 dq
// stages 64 KiB + 1 KiB = 225 KiB. Head dim 64: dk, dv 2 x 32, K, V 2 x 16 (as A operands),
// S^T, dP^T 2 x 32, P^T, dS^T 2 x 16, dq 32; shared K, V 32 KiB + 3 x (Q, dout) 48 KiB +
// dS^T 32 KiB + 2 x 2 dq stages 64 KiB + 1.5 KiB = 177.5 KiB (the third buffer: +0.5-1.2%).
// Head dim 128 by turns would need 64 dq accumulators beside the 128 of dk, dv: waiting for
// dK, dV to free P^T, dS^T first, it still spilled and ran 18-29% slower (eighteenth session).
// Measured and not kept (docs/performance.md, 2026-12-02 sixteenth session): 16-byte
// atomics from registers instead of the copy engine's sum (the sum, with the mask's own
// loop, measured 2-27% faster), issued during the next step's first products (slower);
// 128 queries per step at head dim 64 (4% slower); a persistent grid with the next tile's
// loads over this tile's end (static round robin: +2% at T 2048, -15% at T 4096, head
// dim 128).
#pragma once
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/tma.cuh"
#include "tensor/cuda/wgmma.cuh"

namespace sessa::cuda::attn {

// Tiles for tile width DH (head dim rounded up to 64 or 128). At head dim 64 the registers
// have room for two more things (the file header): K and V as A operands, and one consumer
// per step doing the whole dq product.
template <int DH>
struct WgmmaBackwardTile {
  static constexpr int kConsumers = 2, CB = DH / 64, BN = 64 * kConsumers, BQ = 64, kStages = DH == 64 ? 3 : 2;
  static constexpr int kThreads = 128 * (1 + kConsumers), kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr bool kKVInRegisters = DH == 64;              // S^T, dP^T read only Q, dout from shared memory
  static constexpr bool kDqByTurns = DH == 64;                  // step it's dq product by consumer it % 2 alone
  static constexpr int DQ = kDqByTurns ? DH : DH / kConsumers;  // dq columns per dq product
  static constexpr int kGroupHeads = 16;                        // kv heads whose blocks are launched together
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536, "more registers than an SM has");
  static constexpr int kKVBytes = BN * DH * 2, kQBytes = BQ * DH * 2, kSBytes = BN * BQ * 2, kXBytes = BQ * DQ * 4;
  static constexpr int kBarriers = 1 + 2 * kStages;  // K and V full; full, empty per step buffer
  static constexpr size_t smem_bytes = 2 * kKVBytes + 2 * kStages * kQBytes + 2 * kSBytes + 2 * kConsumers * kXBytes +
                                       2 * kStages * BQ * 4 + 8 * kBarriers + 1024;
};

// grid: key blocks x B Hkv blocks in one dimension, WgmmaBackwardTile<DH>::kThreads threads. Tile maps (tensor/
// cuda/tma.h): k_map, v_map in boxes of BN rows, q_map and g_map (dout) of BQ rows, dq_map of
// the float32 dq sum (zeroed, shaped like dq) in boxes of 32 columns x BQ rows. vec: 16-byte
// aligned rows of dk, dv.
template <int DH>
__global__ void __launch_bounds__(WgmmaBackwardTile<DH>::kThreads, 1)
    wgmma_backward(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                   const __grid_constant__ CUtensorMap v_map, const __grid_constant__ CUtensorMap g_map,
                   const __grid_constant__ CUtensorMap dq_map, const float* lse, const float* Dv, bf16_t* dk,
                   bf16_t* dv, Dims d, float scale_log2, float scale, bool vec) {
  using Tile = WgmmaBackwardTile<DH>;
  constexpr int BN = Tile::BN, BQ = Tile::BQ, CB = Tile::CB, kConsumers = Tile::kConsumers, kStages = Tile::kStages;
  constexpr int DQ = Tile::DQ;
  constexpr bool kByTurns = Tile::kDqByTurns;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Ks =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Vs = Ks + Tile::kKVBytes;                                    // (BN, DH)
  unsigned char* Qs = Vs + Tile::kKVBytes;                                    // kStages x (BQ, DH)
  unsigned char* Gs = Qs + kStages * Tile::kQBytes;                           // kStages x (BQ, DH): dout
  unsigned char* Ss = Gs + kStages * Tile::kQBytes;                           // 2 x (BN, BQ): dS^T
  unsigned char* Xs = Ss + 2 * Tile::kSBytes;                                 // kConsumers x 2 x (BQ, DQ) float32: dq
  float* Ls = reinterpret_cast<float*>(Xs + 2 * kConsumers * Tile::kXBytes);  // kStages x BQ: lse
  float* Ds = Ls + kStages * BQ;                                              // kStages x BQ: D
  const uint32_t kv_full = wgmma::smem_address(Ds + kStages * BQ);
  auto full = [&](int it) { return kv_full + 8 * (1 + it % kStages); };  // barriers of step it's buffer
  auto empty = [&](int it) { return kv_full + 8 * (1 + kStages + it % kStages); };
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  // Named barriers of the consumers (0 is __syncthreads): step it's dS^T written (by both
  // consumers; by turns one pair by step parity), its buffer read by the dq product (by
  // turns), consumer c's dq staged.
  constexpr int kDsWritten = 1, kDsRead = 3, kDqStaged = 5;
  // The block's kv head and key block (blocks run roughly in index order): the B Hkv heads
  // go in groups of kGroupHeads, a group's blocks key block major (the longest walks first),
  // heads minor, so about 8 key blocks of each of 16 heads share the SMs at a time.
  constexpr int G = Tile::kGroupHeads;
  const int key_blocks = (d.Tk + BN - 1) / BN, first = blockIdx.x / (G * key_blocks) * G;
  const int in_group = min(G, d.B * d.Hkv - first), at = blockIdx.x - first * key_blocks;
  const int b = (first + at % in_group) / d.Hkv, hk = (first + at % in_group) % d.Hkv, n0 = at / in_group * BN;

  // The steps: query tiles i0 >= i_start (earlier queries see none of these keys) of each
  // query head of the group, from the last tile down, so the blocks of one head that start
  // together visit the same tiles in step (a forward walk starts each at its own diagonal).
  const int i_start = max(0, n0 - d.q_offset) / BQ * BQ, i_last = (d.Tq - 1) / BQ * BQ;
  const int per_head = i_start < d.Tq ? (d.Tq - i_start + BQ - 1) / BQ : 0, steps = per_head * d.group;
  struct StepAt {
    int h, i0;
  };
  auto next_of = [&](StepAt s) { return s.i0 - BQ >= i_start ? StepAt{s.h, s.i0 - BQ} : StepAt{s.h + 1, i_last}; };
  if (threadIdx.x == 0) {
    tma::init(kv_full, 1);
    for (int i = 0; i < kStages; ++i) tma::init(full(i), 1 + 32), tma::init(empty(i), 128 * kConsumers);
    tma::fence_init();
  }
  __syncthreads();

  if (wg == 0) {  // the producer: warp 0, its lane 0 driving the copy engine
    tma::release_registers<Tile::kProducerRegs>();
    if (warp == 0 && steps > 0) {
      if (lane == 0) {
        tma::arrive_expect_tx(kv_full, 2 * Tile::kKVBytes);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
          tma::load_box(wgmma::smem_address(Ks + cb * BN * 128), k_map, 64 * cb, n0, hk, b, kv_full);
          tma::load_box(wgmma::smem_address(Vs + cb * BN * 128), v_map, 64 * cb, n0, hk, b, kv_full);
        }
      }
      StepAt cur{hk * d.group, i_last};
      for (int it = 0; it < steps; ++it, cur = next_of(cur)) {
        if (it >= kStages) tma::wait(empty(it), (it / kStages - 1) & 1);  // the buffer's last step released
        const int buf = it % kStages;
        if (lane == 0) {  // Q and dout by the copy engine
          tma::arrive_expect_tx(full(it), 2 * Tile::kQBytes);
#pragma unroll
          for (int cb = 0; cb < CB; ++cb) {
            const int at = buf * Tile::kQBytes + cb * BQ * 128;
            tma::load_box(wgmma::smem_address(Qs + at), q_map, 64 * cb, cur.i0, cur.h, b, full(it));
            tma::load_box(wgmma::smem_address(Gs + at), g_map, 64 * cb, cur.i0, cur.h, b, full(it));
          }
        }
        for (int e = lane; e < BQ; e += 32) {  // lse and D by the warp's cp.async (rows past Tq: zeros)
          const int i = cur.i0 + e;
          const int64_t at = (int64_t(b) * d.H + cur.h) * d.Tq + min(i, d.Tq - 1);
          mma::cp_async4(Ls + buf * BQ + e, lse + at, i < d.Tq);
          mma::cp_async4(Ds + buf * BQ + e, Dv + at, i < d.Tq);
        }
        tma::arrive_on_copies(full(it));
      }
      mma::cp_async_wait_all();
    }
    return;
  }

  tma::claim_registers<Tile::kConsumerRegs>();
  const int c = wg - 1;                          // this consumer
  const int key0 = n0 + 64 * c;                  // its keys key0 .. key0 + 63
  const int krow = key0 + 16 * warp + lane / 4;  // this thread's rows of S^T: keys krow, krow + 8
  // Operand descriptors, built once: this consumer's 64 rows of K and V; buffer 0 of Q,
  // dout and dS^T (Q's and dout's 64-column blocks BQ x 128 bytes apart, for the head-wide
  // dK, dV products); all BN keys of K at the dq product's columns (this consumer's DQ, or all).
  const int dq_col0 = kByTurns ? 0 : DQ * c;  // the first of the dq product's columns
  const uint32_t own_rows = 64 * c * 128, dq_cols = dq_col0 / 64 * BN * 128 + dq_col0 % 64 * 2;
  const uint64_t k_desc = wgmma::descriptor(wgmma::smem_address(Ks) + own_rows),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs) + own_rows),
                 s_desc = wgmma::descriptor(wgmma::smem_address(Ss)),
                 q_desc = wgmma::descriptor(wgmma::smem_address(Qs), BQ * 128),
                 g_desc = wgmma::descriptor(wgmma::smem_address(Gs), BQ * 128),
                 kq_desc = wgmma::descriptor(wgmma::smem_address(Ks) + dq_cols);
  const wgmma::Swizzled<BN> kv_layout;    // K, V and dS^T, bfloat16
  const wgmma::Swizzled<BQ, 4> x_layout;  // dq staging, float32

  // Accumulators: a[4 j + e] = A[row 16 warp + lane / 4 + 8 (e / 2)][column 8 j + 2 (lane % 4) + e % 2].
  float gk[DH / 2] = {}, gv[DH / 2] = {};  // dK, dV of this consumer's keys (rows) x head dim
  StepAt cur{hk * d.group, i_last};
  if (steps > 0) tma::wait(kv_full, 0);
  // kKVInRegisters: this consumer's rows of K and V as A operands of S^T and dP^T, k-step ks
  // the head dim's columns 16 ks .. 16 ks + 15 (the mma.sync A fragment of wgmma.cuh).
  constexpr int kKVSteps = Tile::kKVInRegisters ? DH / 16 : 1;
  uint32_t k_regs[kKVSteps][4], v_regs[kKVSteps][4];
  if constexpr (Tile::kKVInRegisters)
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks)
#pragma unroll
      for (int a = 0; a < 4; ++a) {  // rows + 8 (a % 2), columns + 8 (a / 2)
        const int row = 64 * c + 16 * warp + lane / 4 + 8 * (a % 2), col = 16 * ks + 2 * (lane % 4) + 8 * (a / 2);
        k_regs[ks][a] = *reinterpret_cast<const uint32_t*>(Ks + kv_layout(row, col));
        v_regs[ks][a] = *reinterpret_cast<const uint32_t*>(Vs + kv_layout(row, col));
      }
  int dq_products = 0;  // how many this consumer has done (its staging buffer alternates)
  for (int it = 0; it < steps; ++it) {
    const int buf = it % kStages, i0 = cur.i0;
    const bool dq_turn = !kByTurns || it % 2 == c;  // this consumer does the step's dq product
    const uint64_t qb = wgmma::advance(q_desc, buf * Tile::kQBytes), gb = wgmma::advance(g_desc, buf * Tile::kQBytes);
    tma::wait(full(it), it / kStages & 1);

    float st[32], dpt[32];  // S^T and dP^T: this consumer's keys x the step's queries
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {  // column block ks / 4, bytes 32 (ks % 4) into its rows
      const uint32_t kv_at = ks / 4 * BN * 128 + ks % 4 * 32, q_at = ks / 4 * BQ * 128 + ks % 4 * 32;
      if constexpr (Tile::kKVInRegisters)
        wgmma::mma_m64n64_rs<false>(st, k_regs[ks], wgmma::advance(qb, q_at), ks > 0);
      else
        wgmma::mma_ss(st, wgmma::advance(k_desc, kv_at), wgmma::advance(qb, q_at), ks > 0);
    }
    wgmma::commit();
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const uint32_t kv_at = ks / 4 * BN * 128 + ks % 4 * 32, q_at = ks / 4 * BQ * 128 + ks % 4 * 32;
      if constexpr (Tile::kKVInRegisters)
        wgmma::mma_m64n64_rs<false>(dpt, v_regs[ks], wgmma::advance(gb, q_at), ks > 0);
      else
        wgmma::mma_ss(dpt, wgmma::advance(v_desc, kv_at), wgmma::advance(gb, q_at), ks > 0);
    }
    wgmma::commit();
    // A consumer whose keys all come after the step's last query (or lie past Tk) adds
    // nothing to dK and dV: it skips those two products. Uniform per warpgroup.
    const bool idle = key0 > d.q_offset + i0 + BQ - 1 || key0 >= d.Tk;
    // st becomes P^T = exp(S^T scale - lse) while dP^T is being multiplied, then dpt
    // becomes dS^T = P^T (dP^T - D).
    const float* Lt = Ls + buf * BQ;
    const float* Dt = Ds + buf * BQ;
    const bool masked = key0 + 63 > d.q_offset + i0 || i0 + BQ > d.Tq || key0 + 64 > d.Tk;
    auto exponentiate = [&](auto with_mask) {  // (the mask's integer work only where it applies)
#pragma unroll
      for (int j = 0; j < BQ / 8; ++j) {
        const float2 l2 = *reinterpret_cast<const float2*>(Lt + 8 * j + 2 * (lane % 4));
        const float nl[2] = {-l2.x * kLog2e, -l2.y * kLog2e};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float p = exp2_fast(fmaf(st[4 * j + e], scale_log2, nl[e & 1]));
          if constexpr (decltype(with_mask)::value) {
            const int qi = i0 + 8 * j + 2 * (lane % 4) + (e & 1), key = krow + 8 * (e / 2);
            if (qi >= d.Tq || key > d.q_offset + qi || key >= d.Tk) p = 0.f;
          }
          st[4 * j + e] = p;
        }
      }
    };
    wgmma::wait<1>();        // S^T done (by turns: so are the previous step's dK, dV products)
    if constexpr (kByTurns)  // this consumer's turn, so the previous step was the other's: its Q, dout read now
      if (it >= 1 && dq_turn) tma::arrive(empty(it - 1));
    if (masked)
      exponentiate(std::true_type{});
    else
      exponentiate(std::false_type{});
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
    // By turns, dS^T buffer it % 2 was last read by step it - 2's dq product, the other
    // consumer's when it is not this one's turn now: wait for its word.
    if constexpr (kByTurns)
      if (!dq_turn && it >= 2) wgmma::barrier(kDsRead + it % 2, 256);
    // dS^T to shared memory (buffer it % 2) for the dq product: da[kk] holds columns 16 kk
    // + 8 half + 2 (lane % 4) of rows krow (a[2 half]) and krow + 8 (a[2 half + 1]).
    unsigned char* St = Ss + it % 2 * Tile::kSBytes;
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk)
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = 64 * c + 16 * warp + lane / 4 + 8 * r, col = 16 * kk + 8 * half + 2 * (lane % 4);
          *reinterpret_cast<uint32_t*>(St + kv_layout(row, col)) = da[kk][2 * half + r];
        }
    wgmma::fence_async_smem();

    if (!idle) {
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {  // queries 16 kk .. 16 kk + 15
        const uint64_t g = wgmma::advance(gb, kk * 16 * 128), q = wgmma::advance(qb, kk * 16 * 128);
        wgmma::mma_rs_mn(gv, pa[kk], g);
        wgmma::mma_rs_mn(gk, da[kk], q);
      }
      wgmma::commit();
    }
    if (!dq_turn) {  // (by turns) hand the dS^T rows to the other consumer and go on; this
      // step's Q and dout are released once dK, dV are done (the next step's wait<1>)
      wgmma::barrier_arrive(kDsWritten + it % 2, 256);
      cur = next_of(cur);
      continue;
    }
    // This consumer's dq staging buffer is free once the reduction issued from it two dq
    // products ago has read it (its issuing thread waits; the barrier below tells the rest).
    if (t == 0 && dq_products >= 2) tma::wait_reads<1>();
    // Every consumer's dS^T is in shared memory (its buffer is next written two steps on,
    // after the barriers above say this product is done).
    if constexpr (kByTurns)
      wgmma::barrier(kDsWritten + it % 2, 256);
    else
      wgmma::barrier(kDsWritten, 128 * kConsumers);
    float dq[DQ / 2];  // the step's dq (queries x DQ columns), over all BN keys
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)  // keys 16 kk .. 16 kk + 15 of the block
      wgmma::mma_ss<true>(dq, wgmma::advance(s_desc, it % 2 * Tile::kSBytes + kk * 16 * 128),
                          wgmma::advance(kq_desc, kk * 16 * 128), kk > 0);
    wgmma::commit();
    wgmma::wait<0>();
    tma::arrive(empty(it));  // Q, dout, lse, D of this step read
    if constexpr (kByTurns)
      if (it + 2 < steps) wgmma::barrier_arrive(kDsRead + it % 2, 256);  // dS^T buffer it % 2 read
    // dq into the staging buffer in the float32 tile map's layout (boxes of 32 columns x BQ
    // rows, 128-byte swizzle), then one thread has the copy engine add it into dq_acc (rows
    // past Tq and columns past dh are skipped by the map's bounds).
    unsigned char* X = Xs + (2 * c + dq_products % 2) * Tile::kXBytes;
#pragma unroll
    for (int j = 0; j < DQ / 8; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = 16 * warp + lane / 4 + 8 * r, col = 8 * j + 2 * (lane % 4);
        *reinterpret_cast<float2*>(X + x_layout(row, col)) = make_float2(dq[4 * j + 2 * r], dq[4 * j + 2 * r + 1]);
      }
    wgmma::fence_async_smem();
    wgmma::barrier(kDqStaged + c, 128);
    if (t == 0) {
#pragma unroll
      for (int x = 0; x < DQ / 32; ++x)
        tma::reduce_add_box(dq_map, wgmma::smem_address(X + x * BQ * 128), dq_col0 + 32 * x, i0, cur.h, b);
      tma::commit_reductions();
    }
    ++dq_products;
    cur = next_of(cur);
  }
  if constexpr (kByTurns) {  // the last step was the other's turn: released once dK, dV are done
    wgmma::wait<0>();
    if (steps >= 1 && (steps - 1) % 2 != c) tma::arrive(empty(steps - 1));
  }
  if (t == 0) tma::wait_reductions<0>();

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
