// bfloat16 causal attention forward on Hopper warpgroup tensor cores (wgmma, sm_90a), in
// the FlashAttention-2 order; the math is in tensor/ops/attention.cpp, the building blocks
// in tensor/cuda/wgmma.cuh, host-side dispatch in tensor/cuda/attention.cu, the backward
// in attention_wgmma_backward.cuh.
//
// A block of two warpgroups (256 threads) owns BM = 128 query rows (64 per warpgroup) of
// one (batch, head) and streams the keys of its kv head in tiles of BN keys (64 at head
// dim 64, 128 at head dim 128) through three cp.async buffers (tile j + 2 loads while
// tiles j, j + 1 are in use). Q, K, V sit in shared memory in the 128-byte swizzle. Per
// key tile and warpgroup:
//   S = Q K^T      wgmma m64nBNk16, DH / 16 k-steps, A = Q and B = K both K-major;
//   the online softmax on the accumulators in float32 (each thread holds two rows; the
//   running max m in log2 units, scores scaled by scale * log2 e, and the sum l);
//   O += P V       wgmma m64n64k16 per 64 output columns, BN / 16 k-steps of 16 keys,
//                  A = P from registers (packed from the S accumulators), B = V MN-major.
// FlashAttention-3's intra-warpgroup order: S_{j+1} and P_j V_j are issued together, the
// softmax of S_{j+1} is written between the waits for the two, and O is rescaled once
// P_j V_j is done. (In the SASS ptxas moves the second wait ahead of most of the softmax
// at head dim 64, also with the operands pinned, so the overlap comes from the other
// warpgroups on the SM rather than from within one: docs/performance.md, fourth session
// of 2026-12-01.) Only tiles that cross the warpgroup's diagonal or the last key pay for
// the mask; a warpgroup stops at the last tile that holds a key at or before its rows.
// Saves lse = (m + log2 l) ln 2.
//
// Budgets (ptxas -v, sm_90a, no spills, no serialised wgmma):
//   head dim 64: BN = 64, 116 registers (S 32, P 16, O 32 per thread), shared Q 16 KiB +
//     3 x (K, V) 48 KiB = 64 KiB: two blocks per SM. At this head dim the softmax's
//     exponentials (16 per clock per SM) cost as much as the products, and the warpgroups
//     of one block meet at a barrier every tile, so a second, independent block is what
//     keeps the tensor cores fed (one block of 128-key tiles measured 13% slower).
//   head dim 128: BN = 128, 204 registers (S 64, P 32, O 64), Q 32 KiB + 3 x (K, V)
//     192 KiB = 224 KiB: one block per SM.
// Measured in docs/performance.md (2026-12-01, third and fourth sessions).
#pragma once
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/wgmma.cuh"

namespace sessa::cuda::attn {

// Forward tiles for tile width DH (head dim rounded up to 64 or 128).
template <int DH>
struct WgmmaForwardTile {
  static constexpr int BM = 128, BN = DH > 64 ? 128 : 64, kThreads = 256;
  static constexpr int kMinBlocks = DH > 64 ? 1 : 2;  // per SM: caps the registers at 255 / 128
  static constexpr int kQBytes = BM * DH * 2, kKVBytes = BN * DH * 2;
  static constexpr size_t smem_bytes = kQBytes + 6 * kKVBytes + 1024;  // Q, 3 x (K, V), slack to align to 1024
};

// grid (query tiles, B * H): the tiles of one head in consecutive blocks, heaviest first
// (they share K and V in L2), 256 threads.
template <int DH>
__global__ void __launch_bounds__(256, WgmmaForwardTile<DH>::kMinBlocks)
    wgmma_forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, Dims d, float scale_log2,
                  bool vec) {
  using Tile = WgmmaForwardTile<DH>;
  constexpr int BM = Tile::BM, BN = Tile::BN, CB = DH / 64;  // CB column blocks of 64
  extern __shared__ unsigned char smem_raw[];
  unsigned char* Qs =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* Ks = Qs + Tile::kQBytes;       // 3 x (BN, DH)
  unsigned char* Vs = Ks + 3 * Tile::kKVBytes;  // 3 x (BN, DH)
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, lane = t % 32;
  const int b = blockIdx.y / d.H, h = blockIdx.y % d.H, hk = h / d.group;
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int tiles = min(d.Tk - 1, d.q_offset + i0 + BM - 1) / BN + 1;
  mma::TileStream<BN, DH, Tile::kThreads> k_tiles(k + offset(d.k, b, hk, 0), d.k.t, d.Tk, d.dh),
      v_tiles(v + offset(d.v, b, hk, 0), d.v.t, d.Tk, d.dh);
  auto load_kv = [&](int j) {  // key tile j (loaded in order j = 0, 1, ...) into buffer j % 3, one cp.async group
    wgmma::load_tile(Ks + j % 3 * Tile::kKVBytes, k_tiles, vec);
    wgmma::load_tile(Vs + j % 3 * Tile::kKVBytes, v_tiles, vec);
    mma::cp_async_commit();
  };
  wgmma::load_tile<BM, DH, Tile::kThreads>(Qs, q + offset(d.q, b, h, i0), d.q.t, d.Tq - i0, d.dh, vec);
  load_kv(0);  // with Q
  if (tiles > 1) load_kv(1);

  const int pos0 = d.q_offset + i0 + 64 * wg;             // position of this warpgroup's first row
  const int pos = pos0 + 16 * (t / 32) + lane / 4;        // this thread's rows: pos, pos + 8
  const int my_tiles = min(tiles, (pos0 + 63) / BN + 1);  // later tiles hold only keys after its rows
  float o[CB][32] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // Operand descriptors, built once: this warpgroup's 64 rows of Q, buffer 0 of K and V.
  const uint64_t q_desc = wgmma::descriptor(wgmma::smem_address(Qs) + 64 * wg * 128),
                 k_desc = wgmma::descriptor(wgmma::smem_address(Ks)),
                 v_desc = wgmma::descriptor(wgmma::smem_address(Vs));

  float s[BN / 2];         // S of one key tile: s[4 jn + e] = S[row pos + 8 (e / 2)][key 8 jn + 2 (lane % 4) + e % 2]
  uint32_t p[BN / 16][4];  // P of the previous tile in bf16, as the A operands of P V
  auto issue_s = [&](int j) {  // s = Q K_j^T, asynchronously
    const uint64_t kj = wgmma::advance(k_desc, j % 3 * Tile::kKVBytes);
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const uint32_t col = ks % 4 * 32;  // bytes into the column block ks / 4
      wgmma::mma_ss(s, wgmma::advance(q_desc, ks / 4 * BM * 128 + col), wgmma::advance(kj, ks / 4 * BN * 128 + col),
                    ks > 0);
    }
    wgmma::commit();
  };
  auto issue_pv = [&](int j) {  // O += P V_j, asynchronously
    const uint64_t vj = wgmma::advance(v_desc, j % 3 * Tile::kKVBytes);
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

  // Prologue: S_0, its softmax, P_0.
  if (tiles > 1)  // Q and tile 0 resident; tile 1 may stay in flight
    mma::cp_async_wait<1>();
  else
    mma::cp_async_wait<0>();
  wgmma::fence_async_smem();  // the plain stores of the !vec path
  __syncthreads();
  float corr[2];
  wgmma::fence();
  issue_s(0);
  wgmma::wait<0>();
  softmax(0, corr);
  rescale_and_pack(corr);
  // Step j (FlashAttention-3's intra-warpgroup order, see the header): S_{j+1} and P_j V_j
  // go to the tensor cores together, the softmax of S_{j+1} follows the first wait. The
  // barrier makes tile j + 1 visible and frees buffer (j + 2) % 3 for the prefetch (its
  // last reader, P V_{j-1}, finished before every thread's last wait of step j - 1).
  for (int j = 0; j < tiles; ++j) {
    if (j + 1 < tiles) mma::cp_async_wait<0>();
    wgmma::fence_async_smem();
    __syncthreads();
    if (j + 2 < tiles) load_kv(j + 2);
    if (j + 1 < my_tiles) {  // (each branch a whole wgmma sequence: no wgmma under a condition)
      wgmma::fence();
      issue_s(j + 1);
      issue_pv(j);
      wgmma::wait<1>();  // S_{j+1} done, P_j V_j may still run
      softmax(j + 1, corr);
      wgmma::wait<0>();
      rescale_and_pack(corr);
    } else if (j < my_tiles) {  // this warpgroup's last tile
      wgmma::fence();
      issue_pv(j);
      wgmma::wait<0>();
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
