// The Sessa feedback solve's triangular pieces (docs/sessa.md, S5, S6' and "Blocked forward
// substitution"): the inverses of the 64 x 64 diagonal blocks, and the leaf kernels that
// solve a few 64-row blocks of a panel in turn, forward and transposed, on tiles streamed
// through shared memory (TF32 tensor-core or FMA products). Device code only, included by
// sessa/feedback.cu, which orders the blocks (sessa/solve_order.h), runs the GEMMs between
// leaves and launches these kernels (its opening comment has the whole plan).
#pragma once
#include <type_traits>

#include "sessa/feedback_rows.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/mma.cuh"

namespace sessa::cuda {

namespace {

// ---- the two triangular solves --------------------------------------------------------
// Blocked as on the CPU, in row blocks of kRows = 64 visited in halves (sessa/solve_order.h):
// everything the other blocks contribute arrives by batched cuBLAS GEMMs (see use_tf32 in sessa/feedback.cu for
// their precision) or, inside a leaf, by the leaf kernel's tile products. What is left inside
// a block is the triangle (I - Gamma A) s = rhs, where A
// is the diagonal alpha block and Gamma = diag(gamma) of its rows. Substituting it row by row
// would make 64 dependent steps per block; instead L^-1 = (I - Gamma A)^-1 does not depend on
// s, so every block's inverse is computed at once per forward panel (invert_diagonal_blocks:
// all blocks and batch items in parallel; the backward reuses them), and each block is a
// small dense product:
//   forward   s = L^-1 (f + Gamma ctx_prev),  ctx = ctx_prev + A s           (S5)
//   backward  df = L^-T (ds + carry),         w = Gamma df                   (S6'), since
//             (I - A^T Gamma) = (I - Gamma A)^T
// (docs/sessa.md "Blocked forward substitution"). L^-1 is well conditioned: |gamma| < 1 and the rows
// of A sum to at most 1, so ||Gamma A||_inf < 1.
constexpr int kRows = 64;
constexpr int kBlockElems = kRows * kRows;  // one inverse, row-major (64, 64)
constexpr int kLd = kRows + 4;              // padded row stride of 64 x 64 tiles in shared memory (16-byte rows)

// The 64-row blocks of `rows` rows, and row block i of the panel rows [lo, hi):
// [lo + 64 i, min(hi, lo + 64 (i + 1))).
__host__ __device__ inline int blocks_in(int rows) { return (rows + kRows - 1) / kRows; }
__host__ __device__ inline int block_rows(int lo, int hi, int i) { return min(kRows, hi - (lo + kRows * i)); }

// inv[b, r0 / 64] = (I - Gamma A)^-1 for the diagonal block i of rows [lo, hi) (r0 = lo + 64 i),
// one block of 64 threads per (i, batch item); rows past the end of T are identity. Thread c
// owns column c of X = L^-1 in registers and substitutes L X = I down the rows,
//   X[r, c] = [r == c] + gamma_r sum_{j<r} A[r, j] X[j, c],
// reading row r of A from shared memory (one address for all threads: a broadcast). The
// loops are unrolled so that X stays in registers; four partial sums keep the FMAs independent.
template <class X>
__global__ void __launch_bounds__(kRows)
    invert_diagonal_blocks(const AlphaView<acc_t<X>> alpha, const X* gamma, acc_t<X>* inv, int T, int lo, int hi) {
  using A = acc_t<X>;
  __shared__ __align__(16) A As[kBlockElems];  // row-major (64, 64), zero on and above the diagonal
  __shared__ A Gs[kRows];
  const int b = blockIdx.y, r0 = lo + kRows * int(blockIdx.x), nb = block_rows(lo, hi, blockIdx.x), c = threadIdx.x;
#pragma unroll 16
  for (int r = 0; r < kRows; ++r) As[r * kRows + c] = c < r && r < nb ? alpha.at(b, r0 + r, r0 + c) : A(0);
  Gs[c] = c < nb ? load(gamma + int64_t(b) * T + r0 + c) : A(0);
  __syncthreads();
  A x[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    A part[4] = {};
#pragma unroll
    for (int j = 0; j < r; ++j) part[j % 4] += As[r * kRows + j] * x[j];
    x[r] = A(r == c) + Gs[r] * ((part[0] + part[1]) + (part[2] + part[3]));
  }
  A* out = inv + (int64_t(b) * blocks_in(T) + r0 / kRows) * kBlockElems;
#pragma unroll
  for (int r = 0; r < kRows; ++r) out[r * kRows + c] = x[r];
}

// The leaf kernels: one thread block of kApplyThreads per (kCols columns, batch item) solves
// the 64-row blocks of a leaf in turn. The leaves are a chain, so latency is their cost:
// narrower column tiles mean more thread blocks (96 at B = 4, D = 768 for the H200's 132
// multiprocessors) and a shorter share of each product per thread, but more copies of each
// alpha tile read from L2; 32 columns were the fastest of 16, 32 and 64 (docs/performance.md,
// 2026-12-01). Square tiles (L^-1, alpha blocks) are 64 x 64 and go to shared memory by
// cp.async as stored (stage_tile), no registers holding them; column tiles (right-hand sides,
// s, w) are 64 x kCols, written from registers.
constexpr int kCols = 32;
constexpr int kApplyThreads = 256;
// Padded row stride of 64 x kCols tiles in shared memory: 16-byte rows, and kLdC = 8 mod 32
// words, so the 32 lanes of a B-fragment load (rows c, columns g) hit 32 banks.
constexpr int kLdC = kCols + 8;
constexpr int kTile = kRows * kLd;    // one 64 x 64 tile in shared memory
constexpr int kTileC = kRows * kLdC;  // one 64 x kCols tile

// Starts copying rows [0, nrows) x columns [0, ncols) of the 64 x 64 tile at g (row stride ld
// elements, rows 16-byte aligned) into the shared tile s (row stride kLd); the rest of s
// becomes zero. The caller commits and waits (mma::cp_async_commit, cp_async_wait).
template <class A>
__device__ void stage_tile(A* s, const A* g, int64_t ld, int nrows, int ncols) {
  constexpr int kPerChunk = 16 / sizeof(A), kChunksPerRow = kRows / kPerChunk;
#pragma unroll
  for (int e = 0; e < kRows * kChunksPerRow / kApplyThreads; ++e) {
    const int q = e * kApplyThreads + int(threadIdx.x), r = q / kChunksPerRow, c = q % kChunksPerRow * kPerChunk;
    const int bytes = r < nrows ? max(0, min(kPerChunk, ncols - c)) * int(sizeof(A)) : 0;
    mma::cp_async16_prefix(s + r * kLd + c, bytes > 0 ? g + r * ld + c : g, bytes);
  }
}

// A thread's share of a 64 x kCols product tile (kCols = 32, 8 warps): warp w owns rows
// 16 (w / 2) .. + 15 and columns 16 (w % 2) .. + 15 as two 16 x 8 tiles of mma.sync's
// accumulator layout, so lane (g, c) = (lane / 4, lane % 4) holds kShare = 8 elements,
// element i at row share_row(i) = 16 (w / 2) + g + 8 (i / 2 % 2) and column
// share_col(i) = 16 (w % 2) + 8 (i / 4) + 2 c + i % 2.
constexpr int kShare = 8;
static_assert(kCols == 32 && kApplyThreads == 256, "the share layout is for 8 warps on 64 x 32 tiles");
__device__ inline int share_row(int i) {
  return 16 * (int(threadIdx.x) / 64) + int(threadIdx.x) % 32 / 4 + 8 * (i / 2 % 2);
}
__device__ inline int share_col(int i) {
  return 16 * (int(threadIdx.x) / 32 % 2) + 8 * (i / 4) + 2 * (int(threadIdx.x) % 4) + i % 2;
}
// Element i's offset in a 64 x kCols shared tile.
__device__ inline int share_at(int i) { return share_row(i) * kLdC + share_col(i); }

// acc[i] += sum_k M(share_row(i), k) V[k, share_col(i)]: one 64 x kCols tile of the product
// of a 64 x 64 shared tile M and a 64 x kCols one V. The tile at m holds M (kTransposed false:
// m[row * kLd + k] = M(row, k)) or its transpose (true: m[k * kLd + row] = M(row, k)); the
// forward multiplies by L^-1 and alpha blocks as stored, the backward by their transposes,
// which are the stored tiles read the other way. kTf32: on tensor cores (mma.sync m16n8k8,
// operands rounded to TF32, float32 accumulation: 16 MMAs per warp); else in the
// accumulation type on the FMA pipe (float32 without TF32, float64).
template <bool kTransposed, bool kTf32, class A>
__device__ void tile_product(const A* m, const A* V, A (&acc)[kShare]) {
  const auto M = [&](int row, int k) { return kTransposed ? m[k * kLd + row] : m[row * kLd + k]; };
  if constexpr (kTf32) {
    static_assert(std::is_same_v<A, float>, "TF32 products take float32 tiles");
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int r0 = 16 * (int(threadIdx.x) / 64), n0 = 16 * (int(threadIdx.x) / 32 % 2);
#pragma unroll
    for (int k0 = 0; k0 < kRows; k0 += 8) {
      const uint32_t a[4] = {mma::to_tf32(M(r0 + g, k0 + c)), mma::to_tf32(M(r0 + g + 8, k0 + c)),
                             mma::to_tf32(M(r0 + g, k0 + c + 4)), mma::to_tf32(M(r0 + g + 8, k0 + c + 4))};
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int col = n0 + 8 * nt + g;
        mma::mma_tf32(*reinterpret_cast<float(*)[4]>(acc + 4 * nt), a, mma::to_tf32(V[(k0 + c) * kLdC + col]),
                      mma::to_tf32(V[(k0 + c + 4) * kLdC + col]));
      }
    }
  } else {
    int rows[2], cols[4];
#pragma unroll
    for (int i = 0; i < 2; ++i) rows[i] = share_row(2 * i);
#pragma unroll
    for (int i = 0; i < 4; ++i) cols[i] = share_col(i % 2 + 4 * (i / 2));
#pragma unroll 4
    for (int k = 0; k < kRows; ++k) {
      const A m0 = M(rows[0], k), m1 = M(rows[1], k);
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // element j of the share: row j / 2 % 2, column j % 2 + 2 (j / 4)
        const A v = V[k * kLdC + cols[i]];
        const int j = i % 2 + 4 * (i / 2);
        acc[j] += m0 * v, acc[j + 2] += m1 * v;
      }
    }
  }
}

// Writes a thread's share of a tile_product result into a 64 x kCols shared tile.
template <class A>
__device__ inline void store_share(A* tile, const A (&v)[kShare]) {
#pragma unroll
  for (int i = 0; i < kShare; ++i) tile[share_at(i)] = v[i];
}

// The tiles of a leaf (alpha blocks and inverses, 64 x 64) arrive through a ring of
// kStages slots: kStages - 1 copies are in flight while one slot is multiplied. The s
// (forward) or w (backward) of the leaf's blocks stay in shared memory, kBlocks - 1 column
// tiles (block j at j % kKept), so nothing is read back; the right-hand side of the block
// being solved waits there too (Rs). The step loops are unrolled over kBlocks, so the
// producer's step counters are compile-time constants. Two shapes, by the grid:
//   wide grids (more thread blocks than multiprocessors: B D / 32 > 132 on the H200, as
//     B 16, D 768): leaves of 2 blocks, three slots, 71 KB and at most 80 registers, three
//     thread blocks per multiprocessor;
//   narrow grids: leaves of 4 blocks, four slots, 108 KB, two per multiprocessor.
// float64 (tests only): two slots, one thread block per multiprocessor.
template <class A, bool kWide>
struct LeafConfig {
  static constexpr int kBlocks = kWide ? 2 : 4, kKept = kBlocks - 1;
  static constexpr int kStages = sizeof(A) == 8 ? 2 : kWide ? 3 : 4;
  static constexpr int kMinBlocks = sizeof(A) == 8 ? 1 : kWide ? 3 : 2;
  static constexpr size_t smem = (kStages * kTile + kBlocks * kTileC) * sizeof(A);  // ring, rhs, kept tiles
};

// The share of one 64-row block that a thread of a leaf kernel carries through its steps
// (the right-hand side waits in shared memory, Rs, at the thread's share positions): what the
// rows before the leaf contribute (cv: ctx in the forward, kept for ctx_j; the backward's carry
// is in Rs), the sum over the leaf's other blocks (part) and gamma of the share's two rows (g).
template <class A>
struct BlockShare {
  A cv[kShare], part[kShare], g[2];
};

// (S5) for a leaf, the row blocks [t0, t1) of one batch item, columns [c0, c0 + kCols): ctx
// already holds what the rows before t0 contribute (when has_prev). Block j of the leaf (rows
// from tj = t0 + 64 j) gathers what the leaf's earlier blocks contribute,
// part = sum_{m<j} A[j, m] s_m, then, with ctx_prev = ctx + part,
//   s_j = L_j^-1 (f_j + Gamma_j ctx_prev),  ctx_j = ctx_prev + A_jj s_j.
// One step per ring slot; block j takes j + 2 steps, step m reading
//   m < j           A[j, m]; s_m is in shared memory (Ss[m % kKept])
//   m = j           L_j^-1: s_j = L_j^-1 rhs, into Ss[j % kKept]
//   m = j + 1       A_jj: ctx_j.
// Writes ctx and s (A), and s_out (X) when X is not A. Rows and columns past T and D arrive as
// zeros (the diagonal block is zero on and above its diagonal in the panel; the inverses are
// the identity past T). The alpha panel's rows must be 16-byte aligned (feedback_solve pads
// them).
template <class X, bool kTf32, bool kWide>
__global__ void __launch_bounds__(kApplyThreads, LeafConfig<acc_t<X>, kWide>::kMinBlocks)
    solve_forward_leaf(const AlphaView<acc_t<X>> alpha, const acc_t<X>* inv, const X* gamma, const X* f, acc_t<X>* ctx,
                       acc_t<X>* s, X* s_out, int T, int D, int t0, int t1, bool has_prev) {
  using A = acc_t<X>;
  using Cfg = LeafConfig<A, kWide>;
  constexpr int S = Cfg::kStages, kKept = Cfg::kKept;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* const ring = reinterpret_cast<A*>(smem_bytes);  // S square tiles
  A* const Rs = ring + S * kTile;                    // the right-hand side
  A* const Ss = Rs + kTileC;                         // s of the leaf's blocks (block j at j % kKept)
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), blocks = blocks_in(t1 - t0);
  const int64_t row0 = int64_t(b) * T;  // row t of batch item b is row0 + t
  const A* const inv0 = inv + (int64_t(b) * blocks_in(T) + t0 / kRows) * kBlockElems;  // the leaf's first L^-1
  // The producer: copies the tiles of step (pj, pm) into slot ps, then moves on.
  int pj = 0, pm = 0, ps = 0;
  const auto issue = [&] {
    if (pj < blocks) {
      A* const sq = ring + ps * kTile;
      const int tj = t0 + kRows * pj, nb = block_rows(t0, t1, pj);
      if (pm < pj) {
        const int tm = t0 + kRows * pm;
        stage_tile(sq, alpha.ptr(b, tj, tm), alpha.ld, nb, kRows);
      } else if (pm == pj) {
        stage_tile(sq, inv0 + pj * kBlockElems, kRows, kRows, kRows);
      } else {
        stage_tile(sq, alpha.ptr(b, tj, tj), alpha.ld, nb, nb);
      }
    }
    if (++pm > pj + 1) ++pj, pm = 0;
    ps = ps + 1 == S ? 0 : ps + 1;
    mma::cp_async_commit();  // (an empty group past the end keeps the count uniform)
  };
  BlockShare<A> sh;
  // Block j's right-hand side f + Gamma ctx into Rs, cv = ctx (zero outside). Rs is free: the
  // step before (or the first step's barrier) follows every read of block j - 1's.
  const auto load_block = [&](int j) {
    const int tj = t0 + kRows * j, nb = block_rows(t0, t1, j);
#pragma unroll
    for (int h = 0; h < 2; ++h) sh.g[h] = share_row(2 * h) < nb ? load(gamma + row0 + tj + share_row(2 * h)) : A(0);
#pragma unroll
    for (int i = 0; i < kShare; ++i) {
      const int r = share_row(i), col = share_col(i);
      const int64_t o = (row0 + tj + r) * D + c0 + col;
      const bool in = r < nb && col < ncols;
      const A c = in && has_prev ? ctx[o] : A(0);
      if constexpr (!kWide) sh.cv[i] = c;  // (wide leaves read ctx again: no registers to spare)
      Rs[share_at(i)] = in ? load(f + o) + sh.g[i / 2 % 2] * c : A(0);
      sh.part[i] = A(0);
    }
  };
  const auto add_part = [&] {  // the right-hand side f + Gamma (ctx + part)
#pragma unroll
    for (int i = 0; i < kShare; ++i) Rs[share_at(i)] += sh.g[i / 2 % 2] * sh.part[i];
  };
  for (int i = 0; i < S - 1; ++i) issue();
  load_block(0);  // block 0 has nothing before it in the leaf
  int slot = 0;
#pragma unroll
  for (int j = 0; j < Cfg::kBlocks; ++j) {
    if (j >= blocks) break;
    const int tj = t0 + kRows * j, nb = block_rows(t0, t1, j);
    if (j > 0) load_block(j);
#pragma unroll
    for (int m = 0; m <= j + 1; ++m) {
      mma::cp_async_wait<S - 2>();
      __syncthreads();  // slot `slot` has landed; everyone is done with the slot issue() refills
      issue();
      const A* const sq = ring + slot * kTile;
      slot = slot + 1 == S ? 0 : slot + 1;
      if (m < j) {
        tile_product<false, kTf32>(sq, Ss + m % kKept * kTileC, sh.part);
        if (m == j - 1) add_part();
        continue;
      }
      if (m == j + 1) {  // ctx_j = ctx_prev + (part + A_jj s_j), the product summed into part
        tile_product<false, kTf32>(sq, Ss + j % kKept * kTileC, sh.part);
#pragma unroll
        for (int i = 0; i < kShare; ++i) {
          const int r = share_row(i), col = share_col(i);
          if (r >= nb || col >= ncols) continue;
          const int64_t o = (row0 + tj + r) * D + c0 + col;
          ctx[o] = (kWide ? (has_prev ? ctx[o] : A(0)) : sh.cv[i]) + sh.part[i];
        }
        continue;
      }
      A acc[kShare] = {};  // s_j = L_j^-1 rhs
      tile_product<false, kTf32>(sq, Rs, acc);
      store_share(Ss + j % kKept * kTileC, acc);  // for A_jj s_j and the next blocks
#pragma unroll
      for (int i = 0; i < kShare; ++i) {
        const int r = share_row(i), col = share_col(i);
        if (r >= nb || col >= ncols) continue;
        const int64_t o = (row0 + tj + r) * D + c0 + col;
        s[o] = acc[i];
        if constexpr (!std::is_same_v<X, A>) store(s_out + o, acc[i]);
      }
    }
  }
}

// (S6') for a leaf, the row blocks [s0, s1) of one batch item, columns [c0, c0 + kCols), from
// its last block to its first: df already holds what the rows from s1 on contribute (when
// has_carry). Block j gathers what the leaf's later blocks contribute,
// part = sum_{m>j} A[m, j]^T w_m, then
//   df_j = L_j^-T (ds_j + carry + part),  w_j = Gamma_j df_j.
// With jr = (blocks - 1 - j) blocks after it, block j takes jr + 1 steps, step k reading
//   k < jr           A[m, j], m = blocks - 1 - k; w_m is in shared memory (Ws[m % kKept])
//   k = jr           L_j^-1, read transposed: df_j, then w_j into Ws[j % kKept].
// Writes df and w (A), and df_out (X) when X is not A. The products' left operands L_j^-T and
// A[m, j]^T are the stored tiles read the other way (tile_product's transposed form).
template <class X, bool kTf32, bool kWide>
__global__ void __launch_bounds__(kApplyThreads, LeafConfig<acc_t<X>, kWide>::kMinBlocks)
    solve_backward_leaf(const AlphaView<acc_t<X>> alpha, const acc_t<X>* inv, const X* gamma, const X* ds, acc_t<X>* df,
                        X* df_out, acc_t<X>* w, int T, int D, int s0, int s1, bool has_carry) {
  using A = acc_t<X>;
  using Cfg = LeafConfig<A, kWide>;
  constexpr int S = Cfg::kStages, kKept = Cfg::kKept;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* const ring = reinterpret_cast<A*>(smem_bytes);
  A* const Rs = ring + S * kTile;
  A* const Ws = Rs + kTileC;  // w of the leaf's blocks (block j at j % kKept)
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), blocks = blocks_in(s1 - s0);
  const int64_t row0 = int64_t(b) * T;
  const A* const inv0 = inv + (int64_t(b) * blocks_in(T) + s0 / kRows) * kBlockElems;
  int pr = 0, pk = 0, ps = 0;  // the producer's step: block blocks - 1 - pr, step pk
  const auto issue = [&] {
    if (pr < blocks) {
      A* const sq = ring + ps * kTile;
      const int j = blocks - 1 - pr, sj = s0 + kRows * j;
      if (pk < pr) {
        const int m = blocks - 1 - pk, sm = s0 + kRows * m, nm = block_rows(s0, s1, m);
        stage_tile(sq, alpha.ptr(b, sm, sj), alpha.ld, nm, kRows);
      } else {
        stage_tile(sq, inv0 + j * kBlockElems, kRows, kRows, kRows);
      }
    }
    if (++pk > pr) ++pr, pk = 0;
    ps = ps + 1 == S ? 0 : ps + 1;
    mma::cp_async_commit();
  };
  BlockShare<A> sh;
  const auto load_block = [&](int j) {  // block j's right-hand side ds + carry into Rs (zero outside)
    const int sj = s0 + kRows * j, nb = block_rows(s0, s1, j);
#pragma unroll
    for (int h = 0; h < 2; ++h) sh.g[h] = share_row(2 * h) < nb ? load(gamma + row0 + sj + share_row(2 * h)) : A(0);
#pragma unroll
    for (int i = 0; i < kShare; ++i) {
      const int r = share_row(i), col = share_col(i);
      const int64_t o = (row0 + sj + r) * D + c0 + col;
      Rs[share_at(i)] = r < nb && col < ncols ? load(ds + o) + (has_carry ? df[o] : A(0)) : A(0);
      sh.part[i] = A(0);
    }
  };
  const auto add_part = [&] {  // the right-hand side ds + carry + part
#pragma unroll
    for (int i = 0; i < kShare; ++i) Rs[share_at(i)] += sh.part[i];
  };
  for (int i = 0; i < S - 1; ++i) issue();
  load_block(blocks - 1);  // the last block has nothing after it in the leaf
  int slot = 0;
#pragma unroll
  for (int jr = 0; jr < Cfg::kBlocks; ++jr) {
    if (jr >= blocks) break;
    const int j = blocks - 1 - jr, sj = s0 + kRows * j, nb = block_rows(s0, s1, j);
#pragma unroll
    for (int k = 0; k <= jr; ++k) {
      mma::cp_async_wait<S - 2>();
      __syncthreads();
      // Block j's right-hand side replaces block j + 1's in Rs only after this barrier: block
      // j + 1's last step multiplies it.
      if (k == 0 && jr > 0) load_block(j);
      issue();
      const A* const sq = ring + slot * kTile;
      slot = slot + 1 == S ? 0 : slot + 1;
      if (k < jr) {
        const int m = blocks - 1 - k;
        tile_product<true, kTf32>(sq, Ws + m % kKept * kTileC, sh.part);
        if (k == jr - 1) add_part();
        continue;
      }
      A acc[kShare] = {};
      tile_product<true, kTf32>(sq, Rs, acc);
#pragma unroll
      for (int i = 0; i < kShare; ++i) {
        const int r = share_row(i), col = share_col(i);
        const A wi = sh.g[i / 2 % 2] * acc[i];  // zero past T (gamma is)
        Ws[j % kKept * kTileC + r * kLdC + col] = wi;
        if (r >= nb || col >= ncols) continue;
        const int64_t o = (row0 + sj + r) * D + c0 + col;
        df[o] = acc[i];
        w[o] = wi;
        if constexpr (!std::is_same_v<X, A>) store(df_out + o, acc[i]);
      }
    }
  }
}

}  // namespace

}  // namespace sessa::cuda
