// The Sessa feedback solve on CUDA (docs/sessa.md, S3-S9 and "Memory-linear solve"), on
// the plan of the CPU code in sessa/feedback.cpp. X is the input dtype and A = acc_t<X> the
// compute dtype (float for float32 and bfloat16, double for float64). ctx, lse and every
// internal buffer are A, so bfloat16 inputs are rounded only on the way in and out; s is
// returned in X. No (B, T, T) tensor exists: alpha lives in panels of P rows (forward) or
// P columns (backward), P a multiple of 64 (panel_rows), and only s, ctx, the row statistic
// lse and the inverses of the 64 x 64 diagonal blocks (64 numbers per row) are saved.
//
// Forward, per row panel [p0, p1):
//   logits = q[p0:p1] k[0:p1]^T / sqrt(D)  cuBLAS (bf16 tensor cores, float output, for bf16);
//   alpha  = causal softmax                 one block per row; lse_t = log sum_{s<t} exp(logit);
//   L_i^-1 = (I - Gamma A_i)^-1 for every 64-row diagonal block A_i of the panel, all at once
//            (saved for the backward);
//   solve: ctx[p0:p1] = alpha[p0:p1, 0:p0] s[0:p0]  one batched cuBLAS GEMM (float32; TF32 for bf16
//          inputs) for everything earlier panels contribute, then the panel's 64-row blocks in halves
//          (solve_in_halves): first half, one GEMM ctx[second] += alpha[second, first] s[first], second
//          half; down to leaves of 2 or 4 blocks (solve_forward_leaf, one thread block per (32
//          columns, batch item)): block j gathers the leaf's earlier blocks, ctx += sum_m A[j, m] s_m,
//          then its triangle s = L^-1 (f + Gamma ctx), ctx += A_jj s: dense 64 x 64 by 64 x 32
//          products (TF32 tensor cores as the GEMMs) on tiles streamed through a ring of cp.async
//          copies.
// Backward, per column panel [c0, c1), from the last panel to the first:
//   alpha[c0:T, c0:c1] = exp(q k^T / sqrt(D) - lse_t), masked to s < t (rebuilt, not saved);
//   the transposed solve (S6') for rows c0..c1 backwards in time, as the forward mirrored:
//     df[c0:c1] = alpha[c1:T, c0:c1]^T w[c1:T], then the blocks in halves (the later half first),
//     down to leaves (solve_backward_leaf), each block from the last:
//     df = L^-T (ds + df + sum_m A[m, j]^T w_m) with the forward's L^-1; w = gamma df;
//   dgamma    one warp per row of the panel: dgamma_t = df_t . ctx_t                 (S7)
//   dlogits   cuBLAS G = df[c0:T] s[c0:c1]^T, then dl = alpha gamma (G - dgamma)     (S8')
//   dq, dk    dk[c0:c1] = dl^T q[c0:T] complete (in X); dq[c0:T] += dl k[c0:c1] (in A)  (S9)
//             (G, dq, dk from operands in the input dtype, see use_tf32).
// Lanes (tensor/cuda/lane.h): each pass runs its solve chain (the GEMMs and leaf kernels of the
// substitution, mostly latency) on the priority lane and its bulk work (forward: the next
// panel's logits, softmax and inverses; backward: the next panel's alpha rebuild and the
// solved panel's dgamma, G, dlogits, dq, dk) on the main lane, a panel apart, with two alpha
// panel buffers; events order each buffer's reuse after its last reader, and the pass joins
// the main lane before returning.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "sessa/feedback_cuda.h"
#include "sessa/solve_order.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/mma.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

// ---- products through cuBLAS (cuda::gemm) ------------------------------------------------
// Every product writes its result in the compute dtype A (float or double). Operands may be
// bfloat16 (tensor cores, float accumulation) or A. The solve's products take alpha and the
// states in A: float32 on TF32 tensor cores for bfloat16 inputs (10 mantissa bits: their
// rounding feeds back through the recurrence, so not bfloat16's 8) and, as every float32
// matmul, for float32 inputs while TF32 is allowed. G = df s^T, dq and dk take their operands
// in the input dtype X: for bfloat16 inputs df and dlogits are rounded to bfloat16 as flash
// attention's backward rounds dO and dS for dP = dO V^T and dq = dS K; G - dgamma is still
// formed in float32 (S8'). For float32 inputs G is exact and dq, dk follow use_tf32.

// Whether the float products of the solve and of dq, dk use TF32 for inputs of dtype X:
// always for bfloat16, for float32 when TF32 is allowed (cuda::allow_tf32, the default).
template <class X>
bool use_tf32() {
  if constexpr (std::is_same_v<X, bf16_t>)
    return true;
  else if constexpr (std::is_same_v<X, float>)
    return allow_tf32();
  else
    return false;
}

// The alpha blocks the kernels read, in a panel buffer: element (t, s) of batch item b at
// p[b * batch_stride + (t - row0) * ld + (s - col0)].
template <class A>
struct AlphaView {
  const A* p;
  int64_t batch_stride;
  int ld, row0, col0;
  __device__ const A* ptr(int64_t b, int t, int s) const {
    return p + b * batch_stride + int64_t(t - row0) * ld + (s - col0);
  }
  __device__ A at(int64_t b, int t, int s) const { return *ptr(b, t, s); }
};

// ---- the alpha panels' row kernels (S3, S8') ---------------------------------------------
// One thread block per (panel row, batch item); each thread takes packs of V = kPackOf<A>
// consecutive columns (16-byte accesses: every panel row starts 16-byte aligned, its stride
// a multiple of 4 elements), element by element only in a row's last, partial pack. Row t
// keeps the columns s < t (the causal mask); the others are written as zeros, not read.

// Threads for a row kernel over `width` columns: a pack each, a multiple of 32 from 32 to 256.
template <class A>
int row_threads(int width) {
  return std::clamp((width / kPackOf<A> + 31) / 32 * 32, 32, 256);
}

// The pack of row columns [j, j + V): loaded whole when all lie below `live`, element by
// element (`fill` from `live` on) when only some do.
template <int V, class A>
__device__ __forceinline__ Pack<A, V> load_live(const A* row, int j, int live, A fill) {
  if (j + V <= live) return load_pack<V>(row, j);
  Pack<A, V> p;
#pragma unroll
  for (int e = 0; e < V; ++e) p.v[e] = j + e < live ? row[j + e] : fill;
  return p;
}
// Stores v at row columns [j, j + V), as one pack when all lie below `width`.
template <int V, class X>
__device__ __forceinline__ void store_within(X* row, int j, int width, const acc_t<X> (&v)[V]) {
  if (j + V <= width) {
    Pack<X, V> p;
#pragma unroll
    for (int e = 0; e < V; ++e) store(&p.v[e], v[e]);
    store_pack(row, j, p);
    return;
  }
  for (int e = 0; e < V && j + e < width; ++e) store(row + j + e, v[e]);
}

// Row r = blockIdx.x of a row panel (B, P, ld) holding the logits of rows [p0, p1), columns
// [0, p1), batch item blockIdx.y. Row t = p0 + r becomes the softmax over s < t (zero for
// t <= s < p1), and lse_t = log sum_{s<t} exp(logit[t, s]) (0 for row 0) is saved for the
// backward. Two passes over the row: each thread's running max m and sum of exp(x - m)
// (rescaled when m grows: the online softmax), combined over the block; then the output.
template <class A>
__global__ void __launch_bounds__(256) panel_softmax_kernel(A* panel, A* lse, int T, int P, int ld, int p0, int p1) {
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y;
  const int t = p0 + int(blockIdx.x);
  A* r = panel + (b * P + blockIdx.x) * int64_t(ld);
  A m = A(-INFINITY), sum = 0;
  for (int j = threadIdx.x * V; j < t; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(r, j, t, A(-INFINITY));
    A mx = x.v[0];
#pragma unroll
    for (int e = 1; e < V; ++e) mx = max(mx, x.v[e]);
    if (mx > m) sum *= math::exp(m - mx), m = mx;
#pragma unroll
    for (int e = 0; e < V; ++e) sum += math::exp(x.v[e] - m);
  }
  const A row_max = block_max(m);
  sum = block_sum(m == A(-INFINITY) ? A(0) : sum * math::exp(m - row_max));
  const A inv = t > 0 ? A(1) / sum : A(0);
  for (int j = threadIdx.x * V; j < p1; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(r, j, t, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < t ? math::exp(x.v[e] - row_max) * inv : A(0);
    store_within(r, j, p1, y);
  }
  if (threadIdx.x == 0) lse[b * T + t] = t > 0 ? row_max + math::log(sum) : A(0);
}

// Row t = c0 + blockIdx.x of a column panel (B, T, ld) (row t - c0 for t in [c0, T), column
// j for s = c0 + j in [c0, c0 + cw)), batch item blockIdx.y, holds the logits: it becomes
// alpha[t, s] = exp(logit - lse_t) for s < t, else 0, in place.
template <class A>
__global__ void __launch_bounds__(256) rebuild_alpha_kernel(A* panel, const A* lse, int T, int c0, int cw, int ld) {
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y;
  const int live = min(cw, int(blockIdx.x));  // columns j < live are s < t
  A* row = panel + (b * T + blockIdx.x) * int64_t(ld);
  const A l = lse[b * T + c0 + blockIdx.x];
  for (int j = threadIdx.x * V; j < cw; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(row, j, live, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < live ? math::exp(x.v[e] - l) : A(0);
    store_within(row, j, cw, y);
  }
}

// (S8') from G = df s^T, on the same rows: dl[t, s] = alpha[t, s] gamma_t (G[t, s] - dgamma_t)
// for s < t, else 0, in the input dtype X (dl may be g itself when X is A).
template <class X>
__global__ void __launch_bounds__(256) dlogits_kernel(const acc_t<X>* g, X* dl, const acc_t<X>* alpha, const X* gamma,
                                                      const acc_t<X>* dgamma, int T, int c0, int cw, int ld) {
  using A = acc_t<X>;
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y, row = b * T + c0 + blockIdx.x, off = (b * T + blockIdx.x) * int64_t(ld);
  const int live = min(cw, int(blockIdx.x));
  const A gm = load(gamma + row), dg = dgamma[row];
  for (int j = threadIdx.x * V; j < cw; j += blockDim.x * V) {
    const Pack<A, V> pg = load_live<V>(g + off, j, live, A(0)), pa = load_live<V>(alpha + off, j, live, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < live ? pa.v[e] * gm * (pg.v[e] - dg) : A(0);
    store_within(dl + off, j, cw, y);
  }
}

// ---- the two triangular solves --------------------------------------------------------
// Blocked as on the CPU, in row blocks of kRows = 64 visited in halves (sessa/solve_order.h):
// everything the other blocks contribute arrives by batched cuBLAS GEMMs (see use_tf32 for
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

// (S7) for rows [c0, c0 + cw) of each batch item: dgamma_t = df_t . ctx_t, one warp per row;
// dg (A) and dg_out (X, when X is not A).
template <class X>
__global__ void __launch_bounds__(256) dgamma_kernel(const acc_t<X>* df, const acc_t<X>* ctx, acc_t<X>* dg, X* dg_out,
                                                     int64_t B, int T, int D, int c0, int cw) {
  using A = acc_t<X>;
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (i >= B * cw) return;  // whole warps leave together
  const int64_t row = (i / cw) * T + c0 + i % cw;
  const A sum = warp_dot(df + row * D, ctx + row * D, D);
  if (threadIdx.x % 32 == 0) {
    dg[row] = sum;
    if constexpr (!std::is_same_v<X, A>) store(dg_out + row, sum);
  }
}

// Rows per panel: a multiple of 64 (the solve block) with the panel buffers, `cell` bytes per
// element of a (B, P, T) panel in all, within kPanelBytes (at least 64 rows), no more than a quarter of
// T (but at least kMinPanelRows) and no more than T needs. The panel GEMMs (logits, G, dq,
// dk) compute whole P x p1 rectangles of a causal triangle: with n panels they do (n + 1) / n
// of the triangle's work, 25% more for four panels where one does twice the work; more
// panels mean more launches. On the H200 (bf16, D 768) four panels of at least 512 rows were
// the fastest of T/8 (min 256), T/4 (min 512) and one panel (docs/performance.md).
constexpr int64_t kPanelBytes = int64_t(256) << 20;
constexpr int64_t kPanelsPerT = 4, kMinPanelRows = 512;
int forced_panel_rows = 0;  // set_feedback_panel_rows

int panel_rows(int B, int T, size_t cell) {
  const int64_t whole = int64_t(blocks_in(T)) * kRows;
  const int64_t share = std::max(kMinPanelRows, (T + kPanelsPerT * kRows - 1) / (kPanelsPerT * kRows) * kRows);
  const int64_t budget = kPanelBytes / (int64_t(B) * T * int64_t(cell)) / kRows * kRows;
  const int64_t p = forced_panel_rows > 0 ? forced_panel_rows : std::min(share, budget);
  return int(std::min(whole, std::max<int64_t>(kRows, p)));
}

int forced_leaf_blocks = 0;  // set_feedback_leaf_blocks

// The leaf shape for a grid of `ctas` thread blocks (LeafConfig): wide when they outnumber the
// multiprocessors, unless a test forced leaves of 2 (wide) or 4 blocks.
bool wide_leaves(int64_t ctas, int device) {
  return forced_leaf_blocks > 0 ? forced_leaf_blocks == LeafConfig<float, true>::kBlocks : ctas > sm_count(device);
}

// A leaf kernel, its dynamic shared memory and its blocks per leaf.
template <class Fn>
struct Leaf {
  Fn kernel;
  size_t smem;
  int blocks;
};

// The leaf kernel to launch, named by `kernel(std::bool_constant<kTf32>, std::bool_constant<kWide>)`:
// its products run on TF32 tensor cores exactly when the solve's GEMMs do (use_tf32: always
// for bfloat16, for float32 while TF32 is allowed, never for float64).
template <class X, class Kernel>
auto pick_leaf(Kernel kernel, bool wide) {
  using A = acc_t<X>;
  using std::bool_constant;
  const auto shaped = [&](auto tf32) {
    using Wide = LeafConfig<A, true>;
    using Narrow = LeafConfig<A, false>;
    return wide ? Leaf{kernel(tf32, bool_constant<true>{}), Wide::smem, Wide::kBlocks}
                : Leaf{kernel(tf32, bool_constant<false>{}), Narrow::smem, Narrow::kBlocks};
  };
  if constexpr (std::is_same_v<X, bf16_t>)
    return shaped(bool_constant<true>{});
  else if constexpr (std::is_same_v<X, float>)
    return use_tf32<X>() ? shaped(bool_constant<true>{}) : shaped(bool_constant<false>{});
  else
    return shaped(bool_constant<false>{});
}
template <class X>
auto forward_leaf(bool wide) {
  return pick_leaf<X>(
      [](auto tf32, auto w) { return solve_forward_leaf<X, decltype(tf32)::value, decltype(w)::value>; }, wide);
}
template <class X>
auto backward_leaf(bool wide) {
  return pick_leaf<X>(
      [](auto tf32, auto w) { return solve_backward_leaf<X, decltype(tf32)::value, decltype(w)::value>; }, wide);
}

}  // namespace

void set_feedback_leaf_blocks(int blocks) {
  SESSA_CHECK(blocks == 0 || blocks == 2 || blocks == 4, "set_feedback_leaf_blocks",
              "expected 0 (by the grid), 2 or 4 blocks per leaf, got " << blocks);
  forced_leaf_blocks = blocks;
}

void set_feedback_panel_rows(int rows) {
  SESSA_CHECK(rows >= 0 && rows % kRows == 0, "set_feedback_panel_rows",
              "expected 0 (from the memory budget) or a multiple of " << kRows << " rows, got " << rows);
  forced_panel_rows = rows;
}

layer::FeedbackOut feedback_solve(const Tensor& q_in, const Tensor& k_in, const Tensor& gamma_in, const Tensor& f_in) {
  const char* op = "feedback_solve";
  const Tensor q = ops::contiguous(q_in), k = ops::contiguous(k_in), gamma = ops::contiguous(gamma_in),
               f = ops::contiguous(f_in);
  const int B = int(q.size(0)), T = int(q.size(1)), D = int(q.size(2));
  const Device dev = q.device();
  return dispatch_float(q.dtype(), op, [&](auto tag) {
    using X = decltype(tag);
    using A = acc_t<X>;
    const DType adt = dtype_of<A>();
    const TensorOptions acc_opt{adt, dev};
    layer::FeedbackOut out{Tensor::empty({B, T, D}, q.options()), Tensor::empty({B, T, D}, acc_opt),
                           Tensor::empty({B, T}, acc_opt), Tensor::empty({B, blocks_in(T), kRows, kRows}, acc_opt)};
    if (B == 0 || T == 0) return out;
    const Tensor s_acc = std::is_same_v<X, A> ? out.s : Tensor::empty({B, T, D}, acc_opt);
    const cudaStream_t st = stream(dev.index), chain = stream(dev.index, Lane::priority);
    // Two panel buffers (B, P, Tp), alpha[p0:p1, 0:p1] with row stride Tp (T rounded up to 4
    // elements, so that rows are 16-byte aligned for the leaves' copies): the main lane prepares
    // panel p + 1 (logits, softmax, diagonal inverses: bulk work) while the priority lane solves
    // panel p (a chain of small kernels and GEMMs, mostly latency); a buffer is prepared again
    // only once the solve that read it is done.
    const int P = panel_rows(B, T, 2 * sizeof(A));
    const int Tp = (T + 3) / 4 * 4;
    const Tensor panels = Tensor::empty({2, B, P, Tp}, acc_opt);
    A *ctx = ptr<A>(out.ctx), *s = ptr<A>(s_acc);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    const int64_t TD = int64_t(T) * D, PT = int64_t(P) * Tp;
    A* inv = ptr<A>(out.inv);  // the diagonal blocks' inverses, saved for the backward
    const auto panel_of = [&](int p0) { return ptr<A>(panels) + p0 / P % 2 * (B * PT); };
    const auto prepare = [&](int p0) {  // main lane
      const int p1 = std::min(T, p0 + P);
      A* pa = panel_of(p0);
      gemm(dev.index, B, p1 - p0, p1, D, scale, {ptr<X>(q) + int64_t(p0) * D, q.dtype(), D, TD},
           {k.raw_data(), k.dtype(), D, TD, true}, pa, adt, Tp, PT, false,
           op);  // logits; the softmax masks s >= t
      panel_softmax_kernel<A>
          <<<dim3(unsigned(p1 - p0), unsigned(B)), row_threads<A>(p1), 0, st>>>(pa, ptr<A>(out.lse), T, P, Tp, p0, p1);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (D == 0) return;
      invert_diagonal_blocks<X><<<dim3(unsigned(blocks_in(p1 - p0)), unsigned(B)), kRows, 0, st>>>(
          AlphaView<A>{pa, PT, Tp, p0, 0}, ptr<X>(gamma), inv, T, p0, p1);
      SESSA_CUDA_LAUNCH_CHECK(op);
    };
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
    const auto leaf = forward_leaf<X>(wide_leaves(int64_t(grid.x) * grid.y, dev.index));
    if (D > 0) allow_dynamic_smem(leaf.kernel, leaf.smem, op);
    const auto solve = [&](int p0) {  // priority lane
      const int p1 = std::min(T, p0 + P);
      const A* pa = panel_of(p0);
      // ctx[r0:r1] (+)= alpha[r0:r1, c0:r0] s[c0:r0]. The contributions to a row arrive from left to
      // right, so the one from column 0 is the first and overwrites; later ones accumulate.
      const auto add_ctx = [&](int c0, int r0, int r1) {
        gemm(dev.index, B, r1 - r0, D, r0 - c0, 1.0, {pa + int64_t(r0 - p0) * Tp + c0, adt, Tp, PT},
             {s + int64_t(c0) * D, adt, D, TD}, ctx + int64_t(r0) * D, adt, D, TD, use_tf32<X>(), op, c0 > 0,
             Lane::priority);
      };
      if (p0 > 0) add_ctx(0, p0, p1);  // everything the earlier panels contribute
      const auto row = [&](int i) { return std::min(p1, p0 + kRows * i); };
      layer::solve_in_halves<false>(
          0, blocks_in(p1 - p0), leaf.blocks,
          [&](int lo, int hi) {  // row 0 has nothing before it; every later leaf has its ctx from the GEMMs
            leaf.kernel<<<grid, kApplyThreads, leaf.smem, chain>>>(AlphaView<A>{pa, PT, Tp, p0, 0}, inv, ptr<X>(gamma),
                                                                   ptr<X>(f), ctx, s, ptr<X>(out.s), T, D, row(lo),
                                                                   row(hi), row(lo) > 0);
            SESSA_CUDA_LAUNCH_CHECK(op);
          },
          [&](int lo, int mid, int hi) { add_ctx(row(lo), row(mid), row(hi)); });
    };
    // Declared after every buffer the lanes share, so the join is issued before any is freed.
    const LaneFork fork(dev.index);
    LaneEvent prepared(dev.index), solved[2] = {LaneEvent(dev.index), LaneEvent(dev.index)};
    prepare(0);
    for (int p0 = 0; p0 < T; p0 += P) {
      if (D > 0) {
        prepared.record(Lane::main);
        prepared.wait(Lane::priority);
        solve(p0);
        solved[p0 / P % 2].record(Lane::priority);
      }
      if (p0 + P < T) {
        if (p0 > 0 && D > 0) solved[(p0 / P + 1) % 2].wait(Lane::main);  // panel p - 1's solve read that buffer
        prepare(p0 + P);
      }
    }
    return out;
  });
}

layer::FeedbackGrads feedback_solve_backward(const Tensor& ds_in, const Tensor& q_in, const Tensor& k_in,
                                             const Tensor& gamma_in, const layer::FeedbackOut& saved) {
  const char* op = "feedback_solve_backward";
  const Tensor ds = ops::contiguous(ds_in), q = ops::contiguous(q_in), k = ops::contiguous(k_in),
               gamma = ops::contiguous(gamma_in);
  const int B = int(q.size(0)), T = int(q.size(1)), D = int(q.size(2));
  const Device dev = q.device();
  return dispatch_float(q.dtype(), op, [&](auto tag) {
    using X = decltype(tag);
    using A = acc_t<X>;
    const DType adt = dtype_of<A>();
    const Shape inv_shape{B, blocks_in(T), kRows, kRows};
    SESSA_CHECK(saved.lse.dtype() == adt && saved.ctx.dtype() == adt && saved.s.dtype() == q.dtype() &&
                    saved.inv.dtype() == adt && saved.lse.shape() == gamma.shape() && saved.ctx.shape() == q.shape() &&
                    saved.s.shape() == q.shape() && saved.inv.shape() == inv_shape && saved.lse.device() == dev &&
                    saved.ctx.device() == dev && saved.s.device() == dev && saved.inv.device() == dev,
                op,
                "saved tensors do not come from feedback_solve on "
                    << q.str() << ": lse " << saved.lse.str() << ", ctx " << saved.ctx.str() << ", s " << saved.s.str()
                    << ", inv " << saved.inv.str());
    const Tensor lse = ops::contiguous(saved.lse), ctx = ops::contiguous(saved.ctx),
                 inverses = ops::contiguous(saved.inv);
    layer::FeedbackGrads g{Tensor::empty(q.shape(), q.options()), Tensor::empty(k.shape(), k.options()),
                           Tensor::empty(gamma.shape(), gamma.options()), Tensor::empty(ds.shape(), ds.options())};
    if (B == 0 || T == 0) return g;
    const TensorOptions acc_opt{adt, dev};
    constexpr bool same = std::is_same_v<X, A>;
    const Tensor df = same ? g.df : Tensor::empty({B, T, D}, acc_opt), w = Tensor::empty({B, T, D}, acc_opt);
    const Tensor dg = same ? g.dgamma : Tensor::empty({B, T}, acc_opt);
    const Tensor dq = same ? g.dq : Tensor::empty(q.shape(), acc_opt);  // summed over panels in A
    const Tensor s_x = ops::contiguous(saved.s);                        // G, dq and dk take X operands (see use_tf32)
    // Two alpha buffers: while the priority lane solves panel c (a chain of small kernels and GEMMs,
    // mostly latency), the main lane rebuilds the alpha of the next panel in this order (c - P) and
    // turns panel c + P into gradients (dgamma, G, dlogits, dk, dq: bulk work).
    const int P = panel_rows(B, T, 3 * sizeof(A) + (same ? 0 : sizeof(X)));
    // Column panels (B, T, P): rows t - c0 for t in [c0, T), columns s - c0 for s in [c0, c1):
    // alpha (two) and G in A, dlogits in X (G's buffer itself when X is A).
    const Tensor alpha_panels = Tensor::empty({2, B, T, P}, acc_opt), g_panel = Tensor::empty({B, T, P}, acc_opt);
    const Tensor dl_panel = same ? g_panel : Tensor::empty({B, T, P}, q.options());
    A *pg = ptr<A>(g_panel), *pdf = ptr<A>(df), *pw = ptr<A>(w), *pdg = ptr<A>(dg);
    X* pdl = ptr<X>(dl_panel);
    const DType xdt = q.dtype();
    const cudaStream_t st = stream(dev.index), chain = stream(dev.index, Lane::priority);
    const int64_t TD = int64_t(T) * D, TP = int64_t(T) * P;
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    SESSA_CUDA_CHECK(cudaMemsetAsync(dq.raw_data(), 0, size_t(B) * TD * sizeof(A), st), op);
    const A* inv = ptr<A>(inverses);  // the forward's, of the same 64-row blocks
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
    const auto leaf = backward_leaf<X>(wide_leaves(int64_t(grid.x) * grid.y, dev.index));
    if (D > 0) allow_dynamic_smem(leaf.kernel, leaf.smem, op);
    const auto alpha_of = [&](int c0) { return ptr<A>(alpha_panels) + c0 / P % 2 * (B * TP); };
    const auto rebuild = [&](int c0) {  // main lane: alpha[c0:T, c0:c1] from the logits and lse
      const int cw = std::min(T, c0 + P) - c0;
      A* pal = alpha_of(c0);
      gemm(dev.index, B, T - c0, cw, D, scale, {ptr<X>(q) + int64_t(c0) * D, q.dtype(), D, TD},
           {ptr<X>(k) + int64_t(c0) * D, k.dtype(), D, TD, true}, pal, adt, P, TP, false, op);
      rebuild_alpha_kernel<A>
          <<<dim3(unsigned(T - c0), unsigned(B)), row_threads<A>(cw), 0, st>>>(pal, ptr<A>(lse), T, c0, cw, P);
      SESSA_CUDA_LAUNCH_CHECK(op);
    };
    const auto solve = [&](int c0) {  // priority lane: the transposed solve of the panel's rows
      const int c1 = std::min(T, c0 + P);
      A* pal = alpha_of(c0);
      // df[r0:r1] (+)= alpha[r1:t1, r0:r1]^T w[r1:t1]. The contributions to a row arrive from right
      // to left, so the one ending at row T is the first and overwrites; later ones accumulate.
      const auto add_df = [&](int r0, int r1, int t1) {
        gemm(dev.index, B, r1 - r0, D, t1 - r1, 1.0, {pal + int64_t(r1 - c0) * P + (r0 - c0), adt, P, TP, true},
             {pw + int64_t(r1) * D, adt, D, TD}, pdf + int64_t(r0) * D, adt, D, TD, use_tf32<X>(), op, t1 < T,
             Lane::priority);
      };
      if (c1 < T) add_df(c0, c1, T);  // everything the later panels contribute
      const auto row = [&](int i) { return std::min(c1, c0 + kRows * i); };
      layer::solve_in_halves<true>(
          0, blocks_in(c1 - c0), leaf.blocks,
          [&](int lo, int hi) {  // row T - 1 has nothing after it; every earlier leaf has its carry from the GEMMs
            leaf.kernel<<<grid, kApplyThreads, leaf.smem, chain>>>(AlphaView<A>{pal, TP, P, c0, c0}, inv, ptr<X>(gamma),
                                                                   ptr<X>(ds), pdf, ptr<X>(g.df), pw, T, D, row(lo),
                                                                   row(hi), row(hi) < T);
            SESSA_CUDA_LAUNCH_CHECK(op);
          },
          [&](int lo, int mid, int hi) { add_df(row(lo), row(mid), row(hi)); });
    };
    const auto gradients = [&](int c0) {  // main lane, once panel c0 is solved
      const int c1 = std::min(T, c0 + P), cw = c1 - c0;
      dgamma_kernel<X><<<blocks_for(int64_t(B) * cw * 32), kThreads, 0, st>>>(pdf, ptr<A>(ctx), pdg, ptr<X>(g.dgamma),
                                                                              B, T, D, c0, cw);
      SESSA_CUDA_LAUNCH_CHECK(op);
      // dl[c0:T, c0:c1]: G = df[c0:T] s[c0:c1]^T (df in X: g.df), then (S8'); every row it needs is solved.
      gemm(dev.index, B, T - c0, cw, D, 1.0, {ptr<X>(g.df) + int64_t(c0) * D, xdt, D, TD},
           {ptr<X>(s_x) + int64_t(c0) * D, xdt, D, TD, true}, pg, adt, P, TP, false, op);
      dlogits_kernel<X><<<dim3(unsigned(T - c0), unsigned(B)), row_threads<A>(cw), 0, st>>>(
          pg, pdl, alpha_of(c0), ptr<X>(gamma), pdg, T, c0, cw, P);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (D == 0) return;
      // (S9): dk[c0:c1] = dl^T q[c0:T] (complete: written in X), dq[c0:T] += dl k[c0:c1] (summed in A).
      gemm(dev.index, B, cw, D, T - c0, scale, {pdl, xdt, P, TP, true}, {ptr<X>(q) + int64_t(c0) * D, xdt, D, TD},
           ptr<X>(g.dk) + int64_t(c0) * D, xdt, D, TD, use_tf32<X>(), op);
      gemm(dev.index, B, T - c0, D, cw, scale, {pdl, xdt, P, TP}, {ptr<X>(k) + int64_t(c0) * D, xdt, D, TD},
           ptr<A>(dq) + int64_t(c0) * D, adt, D, TD, use_tf32<X>(), op, /*accumulate=*/true);
    };
    {
      // Declared after every buffer the lanes share, so the join is issued before any is freed.
      const LaneFork fork(dev.index);
      LaneEvent rebuilt(dev.index), solved(dev.index);
      // Column panels [c0, c1), c0 a multiple of P, from the last to the first. The buffer that
      // panel c - P's alpha overwrites was last read by panel c + P's solve, which the main lane
      // has waited for, and by its dlogits, earlier on the main lane.
      const int last = (T - 1) / P * P;
      rebuild(last);
      rebuilt.record(Lane::main);
      for (int c0 = last; c0 >= 0; c0 -= P) {
        rebuilt.wait(Lane::priority);
        if (D > 0) solve(c0);
        solved.record(Lane::priority);
        if (c0 >= P) {
          rebuild(c0 - P);
          rebuilt.record(Lane::main);
        }
        solved.wait(Lane::main);
        gradients(c0);
      }
    }
    if constexpr (!same) ops::copy_(g.dq, dq);
    return g;
  });
}

}  // namespace sessa::cuda
