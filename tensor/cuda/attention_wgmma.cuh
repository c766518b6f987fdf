// bfloat16 causal attention forward on Hopper warpgroup tensor cores (wgmma, sm_90a), in
// the FlashAttention-2 order with FlashAttention-3's warp specialisation; the math is in
// tensor/ops/attention.cpp, the building blocks in tensor/cuda/wgmma.cuh and tma.cuh,
// host-side dispatch in tensor/cuda/attention.cu, the backward in
// attention_wgmma_backward.cuh.
//
// The grid is persistent, one block per SM; a block works through query tiles of BM = 64
// kConsumers rows of one (batch, head) each, taken from a shared counter (heaviest first
// within a head), and has 1 + kConsumers warpgroups:
//   - the producer (warpgroup 0) gives most of its registers back and, from one thread,
//     fetches the next query tile, has the copy engine load its Q into one of two buffers
//     (the next tile's Q lands while this one's last rounds run) and the keys of its kv head
//     tile by tile (BN keys of K, then of V) into kStages buffers each, in the 128-byte
//     swizzle. Q, K and V have barriers of their own (K_j is done with once S_j is, V_j one
//     round later, Q at the end of the tile): a buffer's `full` barrier completes when its
//     bytes have landed, its `empty` barrier when every consumer thread is done with it,
//     and only then is it loaded again. Buffers and barrier phases run on across tiles;
//   - consumer c (warpgroup 1 + c) owns query rows 64 c .. 64 c + 63 and, per key tile j:
//       S = Q K_j^T   wgmma m64nBNk16, DH / 16 k-steps, A = Q and B = K both K-major;
//       the online softmax on the accumulators in float32 (each thread holds two rows;
//       the running max m in log2 units, scores scaled by scale * log2 e, and the sum l);
//       O += P V_j    wgmma m64nDHk16, one product as wide as the head, BN / 16 k-steps of 16
//                     keys, A = P from registers (packed from the S accumulators), B = V
//                     MN-major (at head dim 128 its two 64-column blocks in one descriptor).
// Consumers take turns at the tensor cores (FlashAttention-3's ping-pong): a round issues
// S_r and P_{r-1} V_{r-1} of one consumer, which then hands the turn to the next (named
// barriers 1 .. kConsumers) and computes the softmax of S_r while the others' products
// run, so the exponentials of one warpgroup overlap the products of another. Every
// consumer takes part in every round of the tile (tiles + 1), with nothing to issue where
// its rows see no key of the tile, so the turns stay in step; they run on across tiles, so
// consumer 0 starts the next tile while the others finish this one and write their rows
// (the epilogue hides under products too). Only tiles that cross a consumer's diagonal or
// the last key pay for the mask. Saves lse = (m + log2 l) ln 2.
//
// Budgets (ptxas -v, sm_90a, no spills; registers per thread after setmaxnreg):
//   head dim 64: three consumers (BM 192), BN 128, producer 32 / consumers 160 registers
//     (S 64, P 32, O 32 per thread); shared 2 x Q 24 KiB + kStages x (K, V) 32 KiB.
//   head dim 128: two consumers (BM 128), BN 128, 40 / 232 registers (S 64, P 32, O 64);
//     shared 2 x Q 32 KiB + kStages x (K, V) 64 KiB.
// Other shapes measured slower (docs/performance.md, 2026-12-02 sixteenth session): three
// buffers, two consumers at head dim 64, 64-key tiles (2 to 4 buffers, 2 or 3 consumers);
// three buffers again with the persistent grid (2026-12-03). The persistent grid against
// one block per tile: +21% / +13% / +7% at T 512 / 1024 / 2048 (head dim 64), +15% / +10%
// / +7% (128), within 4% either way at T 4096 and 8192 (docs/performance.md, nineteenth
// session).
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
  // The block holds the registers it launched with (65536 / kThreads per thread, rounded down
  // to 8) and setmaxnreg only moves them between warpgroups: the consumers' claim waits
  // until the producer's release covers it, so the producer keeps exactly the rest.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8, kConsumerRegs = kConsumerRegs_;
  static constexpr int kProducerRegs = kLaunchRegs * (1 + kConsumers) - kConsumerRegs * kConsumers;
  static_assert(kConsumers >= 2, "the ping-pong needs two consumers");
  static_assert(kProducerRegs >= 24 && kProducerRegs % 8 == 0, "setmaxnreg takes 24 to 256 registers in steps of 8");
  static constexpr int kQBytes = BM * DH * 2, kKVBytes = BN * DH * 2;
  static constexpr int kBarriers = 4 + 4 * kStages;  // full, empty per Q buffer (2), per K and per V buffer
  // Two Q buffers, kStages K and V buffers, the barriers, the query tile each Q buffer holds.
  static constexpr size_t smem_bytes = 2 * kQBytes + 2 * kStages * kKVBytes + 8 * kBarriers + 8 + 1024;  // + alignment
};
// The configurations the product runs (the file header says why).
template <int DH>
using WgmmaForwardTile =
    std::conditional_t<DH == 64, ForwardShape<64, 3, 128, 2, 160>, ForwardShape<128, 2, 128, 2, 232>>;

// One block per SM, persistent: a block takes query tiles until none are left, in the
// order the hardware's block scheduler would (head by head, heaviest first within a head, so
// concurrent tiles share K and V in L2): its first tile is blockIdx.x, the next ones
// gridDim.x plus the counter schedule[0]. schedule[1] counts the blocks that found no tile
// left; the last of them puts both back to 0, as the next launch needs them (launches on
// one stream; tensor/cuda/attention.cu). q_map: boxes of 64 columns x BM rows of q (B, H,
// Tq, DH); k_map, v_map: 64 columns x BN rows of k, v (B, Hkv, Tk, DH) (tensor/cuda/tma.h).
template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    wgmma_forward(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                  const __grid_constant__ CUtensorMap v_map, bf16_t* out, float* lse, Dims d, float scale_log2,
                  bool vec, int* schedule) {
  constexpr int DH = Tile::DH, BM = Tile::BM, BN = Tile::BN, CB = DH / 64, kStages = Tile::kStages;
  constexpr int kConsumers = Tile::kConsumers;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Qs =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Ks = Qs + 2 * Tile::kQBytes;         // kStages x (BN, DH)
  unsigned char* Vs = Ks + kStages * Tile::kKVBytes;  // kStages x (BN, DH)
  const uint32_t bars = wgmma::smem_address(Vs + kStages * Tile::kKVBytes);
  int* tile_in = reinterpret_cast<int*>(Vs + kStages * Tile::kKVBytes + 8 * Tile::kBarriers);  // per Q buffer
  // The barriers of Q buffer `slot`, and of the buffers of this block's key tile j: of K
  // (kv = 0) and of V (kv = 1).
  auto q_full = [&](int slot) { return bars + 8 * slot; };
  auto q_empty = [&](int slot) { return bars + 8 * (2 + slot); };
  auto full = [&](int kv, int j) { return bars + 8 * (4 + kv * kStages + j % kStages); };
  auto empty = [&](int kv, int j) { return bars + 8 * (4 + (2 + kv) * kStages + j % kStages); };
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, lane = t % 32;
  // Query tile w: batch b, head h (kv head hk), first row i0, key tiles it sees.
  const int q_tiles = (d.Tq + BM - 1) / BM, work = q_tiles * d.B * d.H;
  struct QueryTile {
    int b, h, hk, i0, tiles;
  };
  auto query_tile = [&](int w) {
    QueryTile x;
    x.b = w / q_tiles / d.H, x.h = w / q_tiles % d.H, x.hk = x.h / d.group;
    x.i0 = (q_tiles - 1 - w % q_tiles) * BM;
    x.tiles = min(d.Tk - 1, d.q_offset + x.i0 + BM - 1) / BN + 1;
    return x;
  };
  if (threadIdx.x == 0) {
    for (int slot = 0; slot < 2; ++slot) tma::init(q_full(slot), 1), tma::init(q_empty(slot), 128 * kConsumers);
    for (int kv = 0; kv < 2; ++kv)
      for (int j = 0; j < kStages; ++j) tma::init(full(kv, j), 1), tma::init(empty(kv, j), 128 * kConsumers);
    tma::fence_init();
  }
  __syncthreads();

  if (wg == 0) {  // the producer
    tma::release_registers<Tile::kProducerRegs>();
    if (t == 0) {
      // Tile n of this block goes to Q buffer n % 2 (and its index to tile_in[n % 2]) once
      // the consumers are done with tile n - 2; j counts this block's key tiles, so K and V
      // buffers and phases run on across tiles. Past the last tile, tile_in gets -1 and the
      // Q barrier a plain arrival.
      for (int n = 0, j = 0;; ++n) {
        const int slot = n % 2;
        if (n >= 2) tma::wait(q_empty(slot), (n / 2 - 1) & 1);
        const int w = n == 0 ? blockIdx.x : gridDim.x + atomicAdd(&schedule[0], 1);
        if (w >= work) {
          __threadfence();  // this block's last fetch of schedule[0] before its count in schedule[1]
          if (atomicAdd(&schedule[1], 1) == gridDim.x - 1) schedule[0] = 0, schedule[1] = 0;
          tile_in[slot] = -1;
          tma::arrive(q_full(slot));
          break;
        }
        tile_in[slot] = w;
        const QueryTile x = query_tile(w);
        tma::arrive_expect_tx(q_full(slot), Tile::kQBytes);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb)
          tma::load_box(wgmma::smem_address(Qs + slot * Tile::kQBytes + cb * BM * 128), q_map, 64 * cb, x.i0, x.h, x.b,
                        q_full(slot));
        for (int jt = 0; jt < x.tiles; ++jt, ++j)
#pragma unroll
          for (int kv = 0; kv < 2; ++kv) {
            if (j >= kStages) tma::wait(empty(kv, j), (j / kStages - 1) & 1);  // the buffer's last tile released
            const uint32_t dst = wgmma::smem_address((kv ? Vs : Ks) + j % kStages * Tile::kKVBytes);
            tma::arrive_expect_tx(full(kv, j), Tile::kKVBytes);
#pragma unroll
            for (int cb = 0; cb < CB; ++cb)
              tma::load_box(dst + cb * BN * 128, kv ? v_map : k_map, 64 * cb, jt * BN, x.hk, x.b, full(kv, j));
          }
      }
    }
    return;
  }

  tma::claim_registers<Tile::kConsumerRegs>();
  const int c = wg - 1;  // this consumer
  // Per query tile: its first row's position pos0, this thread's rows pos and pos + 8, the
  // key tiles its rows see (later tiles hold only keys after them), the running max m (log2
  // units) and sum l, the output accumulator o, the descriptor of its 64 rows of Q.
  QueryTile x;
  int pos0, pos, my_tiles;
  float o[DH / 2], m[2], l[2];  // o: the m64nDH accumulator (wgmma.cuh's layout)
  uint64_t q_desc;
  const uint64_t k_desc = wgmma::descriptor(wgmma::smem_address(Ks)),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs), BN * 128);  // V's 64-column blocks BN * 128 apart

  float s[BN / 2];         // S of one key tile: s[4 jn + e] = S[row pos + 8 (e / 2)][key 8 jn + 2 (lane % 4) + e % 2]
  uint32_t p[BN / 16][4];  // P of the previous tile in bf16, as the A operands of P V
  // j: this block's key tile (its buffers); r: the key tile within the query tile's head.
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
  auto issue_pv = [&](int j) {  // O += P V_j, asynchronously, one product as wide as the head
    const uint64_t vj = wgmma::advance(v_desc, j % kStages * Tile::kKVBytes);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {  // keys 16 kk .. 16 kk + 15
      wgmma::mma_rs_mn(o, p[kk], wgmma::advance(vj, kk * 16 * 128));
    }
    wgmma::commit();
  };
  // The online softmax of s = S_j in place (s becomes the unnormalised P), m and l
  // updated; corr[r] is the factor O must be scaled by before P V_j is added.
  auto softmax = [&](int key_tile, float(&corr)[2]) {
    const int n0 = key_tile * BN;
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
      for (int jd = 0; jd < DH / 8; ++jd) o[4 * jd + 2 * r] *= corr[r], o[4 * jd + 2 * r + 1] *= corr[r];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) wgmma::a_from_c<BN>(p[kk], s, kk);
  };

  // The turns: consumer c waits at barrier 1 + c for the previous consumer's hand-over, in
  // every round of every query tile, so consumer 0 may start the block's next tile while
  // the others finish this one; the last consumer hands consumer 0 its first turn.
  auto take_turn = [&] { wgmma::barrier(1 + c, 256); };
  auto hand_over = [&] { wgmma::barrier_arrive(1 + (c + 1) % kConsumers, 256); };
  if (c == kConsumers - 1) hand_over();
  float corr[2];
  // Round r: S_r and P_{r-1} V_{r-1} (those this consumer's rows see); K_r and V_{r-1} are
  // released once read, or at once where this consumer's rows see none of their keys.
  // Each branch is a whole wgmma sequence (no wgmma under a condition).
  for (int n = 0, j0 = 0;; ++n) {  // n: this block's query tiles so far, j0: its key tiles so far
    const int slot = n % 2;
    tma::wait(q_full(slot), n / 2 & 1);
    const int w = tile_in[slot];
    if (w < 0) break;
    x = query_tile(w);
    pos0 = d.q_offset + x.i0 + 64 * c;
    pos = pos0 + 16 * (t / 32) + lane / 4;
    my_tiles = x.i0 + 64 * c < d.Tq ? min(x.tiles, (pos0 + 63) / BN + 1) : 0;
    q_desc = wgmma::descriptor(wgmma::smem_address(Qs + slot * Tile::kQBytes) + 64 * c * 128);
#pragma unroll
    for (int e = 0; e < DH / 2; ++e) o[e] = 0.f;
    m[0] = m[1] = -INFINITY, l[0] = l[1] = 0.f;
    const int tiles = x.tiles;
    auto release_k = [&](int r) {
      if (r < tiles) tma::arrive(empty(0, j0 + r));
    };
    for (int r = 0; r <= tiles; ++r) {
      const int j = j0 + r;
      const bool s_on = r < my_tiles, pv_on = r >= 1 && r <= my_tiles;
      if (s_on) tma::wait(full(0, j), j / kStages & 1);
      if (pv_on) tma::wait(full(1, j - 1), (j - 1) / kStages & 1);
      take_turn();
      if (s_on && pv_on) {
        wgmma::fence();
        issue_s(j);
        issue_pv(j - 1);
        hand_over();
        wgmma::wait<1>();  // S_r done, P_{r-1} V_{r-1} may still run
        release_k(r);
        softmax(r, corr);
        wgmma::wait<0>();
        tma::arrive(empty(1, j - 1));
        rescale_and_pack(corr);
      } else if (s_on) {  // r = 0
        wgmma::fence();
        issue_s(j);
        hand_over();
        wgmma::wait<0>();
        release_k(r);
        softmax(r, corr);
        rescale_and_pack(corr);
      } else if (pv_on) {  // this consumer's last tile
        wgmma::fence();
        issue_pv(j - 1);
        hand_over();
        wgmma::wait<0>();
        tma::arrive(empty(1, j - 1));
        release_k(r);
      } else {
        hand_over();
        release_k(r);
        if (r >= 1) tma::arrive(empty(1, j - 1));
      }
    }
    tma::arrive(q_empty(slot));  // this tile's products are done: Q's buffer may be loaded again
    j0 += tiles;

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = pos + 8 * r - d.q_offset;
      if (row >= d.Tq) continue;
      const float inv = 1.f / sum;
      bf16_t* dst = out + offset(d.out, x.b, x.h, row);
#pragma unroll
      for (int jd = 0; jd < DH / 8; ++jd) {
        const int col = 8 * jd + 2 * (lane % 4);
        const float lo = o[4 * jd + 2 * r] * inv, hi = o[4 * jd + 2 * r + 1] * inv;
        if (vec) {
          if (col < d.dh) *reinterpret_cast<uint32_t*>(dst + col) = mma::pack_bf16(lo, hi);
        } else {
          if (col < d.dh) dst[col] = __float2bfloat16(lo);
          if (col + 1 < d.dh) dst[col + 1] = __float2bfloat16(hi);
        }
      }
      if (lane % 4 == 0) lse[(int64_t(x.b) * d.H + x.h) * d.Tq + row] = (m[r] + log2f(sum)) * kLn2;
    }
  }
  if (c == 0) take_turn();  // the last consumer's hand-over after the block's last round
}

}  // namespace sessa::cuda::attn
