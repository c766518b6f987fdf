// bfloat16 causal attention forward on Hopper warpgroup tensor cores (wgmma, sm_90a), in
// the FlashAttention-2 order with FlashAttention-3's warp specialisation; the math is in
// tensor/ops/attention.cpp, the building blocks in tensor/cuda/wgmma.cuh and tma.cuh,
// host-side dispatch in tensor/cuda/attention.cu, the backward in
// attention_wgmma_backward.cuh.
//
// A block owns BM = 64 kConsumers query rows of one (batch, head) and has 1 + kConsumers
// warpgroups:
//   - the producer (warpgroup 0) gives most of its registers back and, from one thread,
//     has the copy engine load Q once and the keys of the kv head tile by tile (BN keys of
//     K, then of V) into kStages buffers each, in the 128-byte swizzle. K and V have
//     barriers of their own (K_j is done with once S_j is, V_j one round later): a
//     buffer's `full` barrier completes when its bytes have landed, its `empty` barrier
//     when every consumer thread is done with it, and only then is it loaded again;
//   - consumer c (warpgroup 1 + c) owns query rows 64 c .. 64 c + 63 and, per key tile j:
//       S = Q K_j^T   wgmma m64nBNk16, DH / 16 k-steps, A = Q and B = K both K-major;
//       the online softmax on the accumulators in float32 (each thread holds two rows;
//       the running max m in log2 units, scores scaled by scale * log2 e, and the sum l);
//       O += P V_j    wgmma m64n64k16 per 64 output columns, BN / 16 k-steps of 16 keys,
//                     A = P from registers (packed from the S accumulators), B = V MN-major.
// Consumers take turns at the tensor cores (FlashAttention-3's ping-pong): a round issues
// S_r and P_{r-1} V_{r-1} of one consumer, which then hands the turn to the next (named
// barriers 1 .. kConsumers) and computes the softmax of S_r while the others' products
// run, so the exponentials of one warpgroup overlap the products of another. Every
// consumer takes part in every round of its block (tiles + 1), with nothing to issue where
// its rows see no key of the tile, so the turns stay in step. Only tiles that cross a
// consumer's diagonal or the last key pay for the mask. Saves lse = (m + log2 l) ln 2.
//
// Budgets (ptxas -v, sm_90a; one block per SM; registers per thread after setmaxnreg):
//   head dim 64: three consumers (BM 192), BN 128, producer 24 / consumers 160 registers
//     (S 64, P 32, O 32 per thread); shared Q 24 KiB + kStages x (K, V) 32 KiB.
//   head dim 128: two consumers (BM 128), BN 128, 24 / 240 registers (S 64, P 32, O 64);
//     shared Q 32 KiB + kStages x (K, V) 64 KiB.
// Other shapes measured slower (docs/performance.md, 2026-12-02 sixteenth session): three
// buffers, two consumers at head dim 64, 64-key tiles (2 to 4 buffers, 2 or 3 consumers).
// Short sequences pay for one block per SM (T 512, head dim 64: 178 TFLOP/s against 203
// for the previous two-blocks-per-SM kernel); a persistent grid would hide the prologue.
#pragma once
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/tma.cuh"
#include "tensor/cuda/wgmma.cuh"

namespace sessa::cuda::attn {

// A forward tile configuration: tile width DH (head dim rounded up to 64 or 128), consumer
// warpgroups, keys per tile, K / V buffers, registers per thread of each role.
template <int DH_, int kConsumers_, int BN_, int kStages_, int kConsumerRegs_>
struct ForwardShape {
  static constexpr int DH = DH_, kConsumers = kConsumers_, BN = BN_, kStages = kStages_;
  static constexpr int BM = 64 * kConsumers, kThreads = 128 * (1 + kConsumers);
  static constexpr int kProducerRegs = 24, kConsumerRegs = kConsumerRegs_;
  static_assert(kConsumers >= 2, "the ping-pong needs two consumers");
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536, "more registers than an SM has");
  static constexpr int kQBytes = BM * DH * 2, kKVBytes = BN * DH * 2;
  static constexpr int kBarriers = 1 + 4 * kStages;  // Q full; full, empty per K and per V buffer
  static constexpr size_t smem_bytes = kQBytes + 2 * kStages * kKVBytes + 8 * kBarriers + 1024;  // + alignment slack
};
// The configurations the product runs (the file header says why).
template <int DH>
using WgmmaForwardTile =
    std::conditional_t<DH == 64, ForwardShape<64, 3, 128, 2, 160>, ForwardShape<128, 2, 128, 2, 240>>;

// grid (query tiles, B * H): the tiles of one head in consecutive blocks, heaviest first
// (they share K and V in L2). q_map: boxes of 64 columns x BM rows of q (B, H, Tq, DH);
// k_map, v_map: 64 columns x BN rows of k, v (B, Hkv, Tk, DH) (tensor/cuda/tma.h).
template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    wgmma_forward(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                  const __grid_constant__ CUtensorMap v_map, bf16_t* out, float* lse, Dims d, float scale_log2,
                  bool vec) {
  constexpr int DH = Tile::DH, BM = Tile::BM, BN = Tile::BN, CB = DH / 64, kStages = Tile::kStages;
  constexpr int kConsumers = Tile::kConsumers;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Qs =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Ks = Qs + Tile::kQBytes;             // kStages x (BN, DH)
  unsigned char* Vs = Ks + kStages * Tile::kKVBytes;  // kStages x (BN, DH)
  const uint32_t q_full = wgmma::smem_address(Vs + kStages * Tile::kKVBytes);
  // The barriers of the buffers of key tile j: of K (kv = 0) and of V (kv = 1).
  auto full = [&](int kv, int j) { return q_full + 8 * (1 + kv * kStages + j % kStages); };
  auto empty = [&](int kv, int j) { return q_full + 8 * (1 + (2 + kv) * kStages + j % kStages); };
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, lane = t % 32;
  const int b = blockIdx.y / d.H, h = blockIdx.y % d.H, hk = h / d.group;
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int tiles = min(d.Tk - 1, d.q_offset + i0 + BM - 1) / BN + 1;
  if (threadIdx.x == 0) {
    tma::init(q_full, 1);
    for (int kv = 0; kv < 2; ++kv)
      for (int j = 0; j < kStages; ++j) tma::init(full(kv, j), 1), tma::init(empty(kv, j), 128 * kConsumers);
    tma::fence_init();
  }
  __syncthreads();

  if (wg == 0) {  // the producer
    tma::release_registers<Tile::kProducerRegs>();
    if (t == 0) {
      tma::arrive_expect_tx(q_full, Tile::kQBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb)
        tma::load_box(wgmma::smem_address(Qs + cb * BM * 128), q_map, 64 * cb, i0, h, b, q_full);
      for (int j = 0; j < tiles; ++j)
#pragma unroll
        for (int kv = 0; kv < 2; ++kv) {
          if (j >= kStages) tma::wait(empty(kv, j), (j / kStages - 1) & 1);  // the buffer's last tile released
          const uint32_t dst = wgmma::smem_address((kv ? Vs : Ks) + j % kStages * Tile::kKVBytes);
          tma::arrive_expect_tx(full(kv, j), Tile::kKVBytes);
#pragma unroll
          for (int cb = 0; cb < CB; ++cb)
            tma::load_box(dst + cb * BN * 128, kv ? v_map : k_map, 64 * cb, j * BN, hk, b, full(kv, j));
        }
    }
    return;
  }

  tma::claim_registers<Tile::kConsumerRegs>();
  const int c = wg - 1;                                                            // this consumer
  const int pos0 = d.q_offset + i0 + 64 * c;                                       // position of its first row
  const int pos = pos0 + 16 * (t / 32) + lane / 4;                                 // this thread's rows: pos, pos + 8
  const int my_tiles = i0 + 64 * c < d.Tq ? min(tiles, (pos0 + 63) / BN + 1) : 0;  // later tiles: keys after its rows
  float o[CB][32] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // Operand descriptors, built once: this consumer's 64 rows of Q, buffer 0 of K and V.
  const uint64_t q_desc = wgmma::descriptor(wgmma::smem_address(Qs) + 64 * c * 128),
                 k_desc = wgmma::descriptor(wgmma::smem_address(Ks)),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs));

  float s[BN / 2];         // S of one key tile: s[4 jn + e] = S[row pos + 8 (e / 2)][key 8 jn + 2 (lane % 4) + e % 2]
  uint32_t p[BN / 16][4];  // P of the previous tile in bf16, as the A operands of P V
  auto issue_s = [&](int j) {  // s = Q K_j^T, asynchronously
    const uint64_t kj = wgmma::advance(k_desc, j % kStages * Tile::kKVBytes);
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const uint32_t col = ks % 4 * 32;  // bytes into the column block ks / 4
      wgmma::mma_ss(s, wgmma::advance(q_desc, ks / 4 * BM * 128 + col), wgmma::advance(kj, ks / 4 * BN * 128 + col),
                    ks > 0);
    }
    wgmma::commit();
  };
  auto issue_pv = [&](int j) {  // O += P V_j, asynchronously
    const uint64_t vj = wgmma::advance(v_desc, j % kStages * Tile::kKVBytes);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)  // keys 16 kk .. 16 kk + 15
#pragma unroll
      for (int cb = 0; cb < CB; ++cb)
        wgmma::mma_m64n64_rs(o[cb], p[kk], wgmma::advance(vj, cb * BN * 128 + kk * 16 * 128));
    wgmma::commit();
  };
  // The online softmax of s = S_j in place (s becomes the unnormalised P), m and l
  // updated; corr[r] is the factor O must be scaled by before P V_j is added.
  auto softmax = [&](int j, float(&corr)[2]) {
    const int n0 = j * BN;
    if (n0 + BN - 1 > pos0 || n0 + BN > d.Tk) {  // the tile crosses the diagonal or the last key
#pragma unroll
      for (int jn = 0; jn < BN / 8; ++jn)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + 8 * jn + 2 * (lane % 4) + e % 2;
          if (key > pos + 8 * (e / 2) || key >= d.Tk) s[4 * jn + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int jn = 0; jn < BN / 8; ++jn) mx = fmaxf(mx, fmaxf(s[4 * jn + 2 * r], s[4 * jn + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // Key 0 is in the first tile and visible to every row, so m is finite from then on.
      const float mn = fmaxf(m[r], mx * scale_log2);
      corr[r] = exp2_fast(m[r] - mn), m[r] = mn;
      float sum = 0.f;
#pragma unroll
      for (int jn = 0; jn < BN / 8; ++jn)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[4 * jn + e] = exp2_fast(fmaf(s[4 * jn + e], scale_log2, -mn));
          sum += s[4 * jn + e];
        }
      l[r] = l[r] * corr[r] + sum;
    }
  };
  // After P V_{j-1} finished: O scaled by corr, P_j packed.
  auto rescale_and_pack = [&](const float(&corr)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int cb = 0; cb < CB; ++cb)
#pragma unroll
        for (int jd = 0; jd < 8; ++jd) o[cb][4 * jd + 2 * r] *= corr[r], o[cb][4 * jd + 2 * r + 1] *= corr[r];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) wgmma::a_from_c<BN>(p[kk], s, kk);
  };

  // The turns: consumer c waits at barrier 1 + c for the previous consumer's hand-over;
  // the last consumer hands consumer 0 the first turn and not one after the last round.
  auto take_turn = [&] { wgmma::barrier(1 + c, 256); };
  auto hand_over = [&](int r) {
    if (c < kConsumers - 1 || r < tiles) wgmma::barrier_arrive(1 + (c + 1) % kConsumers, 256);
  };
  if (c == kConsumers - 1) wgmma::barrier_arrive(1, 256);
  tma::wait(q_full, 0);
  float corr[2];
  // Round r: S_r and P_{r-1} V_{r-1} (those this consumer's rows see); K_r and V_{r-1} are
  // released once read, or at once where this consumer's rows see none of their keys.
  // Each branch is a whole wgmma sequence (no wgmma under a condition).
  auto release_k = [&](int r) {
    if (r < tiles) tma::arrive(empty(0, r));
  };
  for (int r = 0; r <= tiles; ++r) {
    const bool s_on = r < my_tiles, pv_on = r >= 1 && r <= my_tiles;
    if (s_on) tma::wait(full(0, r), r / kStages & 1);
    if (pv_on) tma::wait(full(1, r - 1), (r - 1) / kStages & 1);
    take_turn();
    if (s_on && pv_on) {
      wgmma::fence();
      issue_s(r);
      issue_pv(r - 1);
      hand_over(r);
      wgmma::wait<1>();  // S_r done, P_{r-1} V_{r-1} may still run
      release_k(r);
      softmax(r, corr);
      wgmma::wait<0>();
      tma::arrive(empty(1, r - 1));
      rescale_and_pack(corr);
    } else if (s_on) {  // r = 0
      wgmma::fence();
      issue_s(r);
      hand_over(r);
      wgmma::wait<0>();
      release_k(r);
      softmax(r, corr);
      rescale_and_pack(corr);
    } else if (pv_on) {  // this consumer's last tile
      wgmma::fence();
      issue_pv(r - 1);
      hand_over(r);
      wgmma::wait<0>();
      tma::arrive(empty(1, r - 1));
      release_k(r);
    } else {
      hand_over(r);
      release_k(r);
      if (r >= 1) tma::arrive(empty(1, r - 1));
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = pos + 8 * r - d.q_offset;
    if (row >= d.Tq) continue;
    const float inv = 1.f / sum;
    bf16_t* dst = out + offset(d.out, b, h, row);
#pragma unroll
    for (int cb = 0; cb < CB; ++cb)
#pragma unroll
      for (int jd = 0; jd < 8; ++jd) {
        const int col = 64 * cb + 8 * jd + 2 * (lane % 4);
        const float lo = o[cb][4 * jd + 2 * r] * inv, hi = o[cb][4 * jd + 2 * r + 1] * inv;
        if (vec) {
          if (col < d.dh) *reinterpret_cast<uint32_t*>(dst + col) = mma::pack_bf16(lo, hi);
        } else {
          if (col < d.dh) dst[col] = __float2bfloat16(lo);
          if (col + 1 < d.dh) dst[col + 1] = __float2bfloat16(hi);
        }
      }
    if (lane % 4 == 0) lse[(int64_t(b) * d.H + h) * d.Tq + row] = (m[r] + log2f(sum)) * kLn2;
  }
}

}  // namespace sessa::cuda::attn
