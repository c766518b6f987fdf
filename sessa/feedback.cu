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
//          half; down to single blocks, whose triangle is s = L^-1 (f + Gamma ctx), ctx += A s: dense
//          64 x 64 by 64 x 32 products (TF32 tensor cores as the GEMMs), one block per (32 columns,
//          batch).
// Backward, per column panel [c0, c1), from the last panel to the first:
//   alpha[c0:T, c0:c1] = exp(q k^T / sqrt(D) - lse_t), masked to s < t (rebuilt, not saved);
//   the transposed solve (S6') for rows c0..c1 backwards in time, as the forward mirrored:
//     df[c0:c1] = alpha[c1:T, c0:c1]^T w[c1:T], then the blocks in halves (the later half first),
//     down to single blocks: df = L^-T (ds + df) with the forward's L^-1; w = gamma df;
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
// their precision). What is left inside a block is the triangle (I - Gamma A) s = rhs, where A
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
using layer::kLeafBlocks;                   // row blocks per leaf kernel (sessa/solve_order.h)
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

// The block kernels: one thread block of kApplyThreads per (kCols columns, batch item). The
// leaves are a chain, so their latency is their cost: narrower column tiles mean more blocks
// (96 at B = 4, D = 768 for the H200's 132 multiprocessors) and a shorter share of each
// product per thread. On the H200 32 columns were the fastest of 16, 32 and 64 (Sessa small
// bf16: 179k, 177k and 166k tok/s at 4 x 4096; docs/performance.md, 2026-12-01). Square tiles
// (L^-1, alpha blocks) are 64 x 64, column tiles (right-hand sides, s, w) 64 x kCols.
// Square tiles go to shared memory as stored, by cp.async (stage_tile): no registers hold
// them, so a block's copies are all in flight at once and three blocks fit per
// multiprocessor (80 registers; staged through registers they took 155, one block per SM).
// A column tile's elements are formed in registers first (f + Gamma ctx, ds + carry): each
// thread holds kPerThreadC of them (row (256 / kCols) e + tid / kCols, column tid % kCols).
constexpr int kCols = 32;
constexpr int kApplyThreads = 256, kPerThreadC = kRows * kCols / kApplyThreads;
// Padded row stride of 64 x kCols tiles in shared memory: 16-byte rows, and kLdC = 8 mod 32
// words, so the 32 lanes of a B-fragment load (rows c, columns g) hit 32 banks.
constexpr int kLdC = kCols + 8;
__device__ inline int staged_row_c(int e) { return kApplyThreads / kCols * e + int(threadIdx.x) / kCols; }
__device__ inline int staged_col_c() { return int(threadIdx.x) % kCols; }

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

// v[0..N) = p[0..N) from shared memory, in 8- or 16-byte loads where N elements fill one
// (p aligned to N elements).
template <int N, class A>
__device__ inline void load_row(const A* p, A (&v)[N]) {
  if constexpr (std::is_same_v<A, float> && N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else if constexpr ((std::is_same_v<A, float> && N == 2) || (std::is_same_v<A, double> && N % 2 == 0)) {
    using V2 = std::conditional_t<std::is_same_v<A, float>, float2, double2>;
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const V2 t = *reinterpret_cast<const V2*>(p + i);
      v[i] = t.x, v[i + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = p[i];
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

// acc[i] += sum_k M(share_row(i), k) V[k, share_col(i)]: one 64 x kCols tile of the product
// of a 64 x 64 shared tile M and a 64 x kCols one V. The tile at m holds M (kTransposed false:
// m[row * kLd + k] = M(row, k)) or its transpose (true: m[k * kLd + row] = M(row, k)); the
// forward leaf multiplies by L^-1 and alpha blocks as stored, the backward by their
// transposes, which are the stored tiles read the other way. kTf32: on tensor cores
// (mma.sync m16n8k8, operands rounded to TF32, float32 accumulation: 16 MMAs per warp);
// else in the accumulation type on the FMA pipe (float32 without TF32, float64).
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
  for (int i = 0; i < kShare; ++i) tile[share_row(i) * kLdC + share_col(i)] = v[i];
}

constexpr int kTile = kRows * kLd;    // one 64 x 64 tile in shared memory
constexpr int kTileC = kRows * kLdC;  // one 64 x kCols tile
// Shared memory of a leaf kernel of J blocks: `square` square tiles, the right-hand side and
// the J - 1 column tiles of the leaf's earlier (forward) or later (backward) blocks.
template <class A>
constexpr size_t leaf_smem(int square, int J) {
  return (square * kTile + J * kTileC) * sizeof(A);
}
constexpr int kForwardSquares = 3, kBackwardSquares = 2;

// The launch bounds of the leaves: three blocks per multiprocessor in float32 (80 registers),
// one in float64 (whose products need more).
template <class X>
constexpr int kLeafMinBlocks = sizeof(acc_t<X>) == 4 ? 3 : 1;

// (S5) for a leaf of up to J row blocks [t0, t1) of one batch item, columns [c0, c0 + kCols): ctx
// already holds what the rows before t0 contribute (when has_prev). Block j of the leaf (rows
// from tj = t0 + 64 j) first gathers what the leaf's earlier blocks contribute,
// part = sum_{m<j} A[j, m] s_m (their s stay in shared memory); then, with ctx_prev = ctx + part,
//   s_j = L_j^-1 (f_j + Gamma_j ctx_prev),  ctx_j = ctx_prev + A_jj s_j.
// Writes ctx and s (A), and s_out (X) when X is not A. Shared memory: L_j^-1, A_jj and A[j, m]
// as stored (the diagonal block is zero on and above its diagonal in the panel; rows and columns
// past T arrive as zeros), the right-hand side (then s), and the s of the leaf's first J - 1
// blocks. The alpha panel's rows must be 16-byte aligned (feedback_solve pads them).
template <class X, int J, bool kTf32>
__global__ void __launch_bounds__(kApplyThreads, kLeafMinBlocks<X>)
    solve_forward_leaf(const AlphaView<acc_t<X>> alpha, const acc_t<X>* inv, const X* gamma, const X* f, acc_t<X>* ctx,
                       acc_t<X>* s, X* s_out, int T, int D, int t0, int t1, bool has_prev) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A *Ls = reinterpret_cast<A*>(smem_bytes), *As = Ls + kTile, *Cs = As + kTile, *Rs = Cs + kTile, *Ss = Rs + kTileC;
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0);
  const int cc = staged_col_c();
  for (int j = 0; j < J && t0 + kRows * j < t1; ++j) {
    const int tj = t0 + kRows * j, nb = min(kRows, t1 - tj);
    const int64_t base = (int64_t(b) * T + tj) * D + c0;  // element (tj, c0) of batch item b
    __syncthreads();                                      // the previous block's products are done with every tile
    stage_tile(Ls, inv + (int64_t(b) * blocks_in(T) + tj / kRows) * kBlockElems, kRows, kRows, kRows);
    stage_tile(As, alpha.ptr(b, tj, tj), alpha.ld, nb, nb);
    if (j > 0) stage_tile(Cs, alpha.ptr(b, tj, t0), alpha.ld, nb, kRows);
    mma::cp_async_commit();
    A rv[kPerThreadC], gv[kPerThreadC];  // f + Gamma ctx and gamma of the staged elements
#pragma unroll
    for (int e = 0; e < kPerThreadC; ++e) {
      const int r = staged_row_c(e);
      const int64_t o = base + int64_t(r) * D + cc;
      gv[e] = r < nb ? load(gamma + int64_t(b) * T + tj + r) : A(0);
      rv[e] = r < nb && cc < ncols ? load(f + o) + (has_prev ? gv[e] * ctx[o] : A(0)) : A(0);
    }
    mma::cp_async_wait<0>();
    __syncthreads();
    A part[kShare] = {};  // sum_{m<j} A[j, m] s_m (the thread's share)
    for (int m = 0; m < j; ++m) {
      if (m > 0) {  // (leaves of more than two blocks) A[j, m] replaces A[j, m - 1]
        __syncthreads();
        stage_tile(Cs, alpha.ptr(b, tj, t0 + kRows * m), alpha.ld, nb, kRows);
        mma::cp_async_commit();
        mma::cp_async_wait<0>();
        __syncthreads();
      }
      tile_product<false, kTf32>(Cs, Ss + m * kTileC, part);
    }
    if (j > 0) store_share(Rs, part);  // for the staging threads to fold into the right-hand side
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kPerThreadC; ++e) {
      const int r = staged_row_c(e);
      Rs[r * kLdC + cc] = rv[e] + (j > 0 ? gv[e] * Rs[r * kLdC + cc] : A(0));  // f + Gamma ctx_prev (0 outside)
    }
    __syncthreads();
    A acc[kShare] = {};
    tile_product<false, kTf32>(Ls, Rs, acc);
    __syncthreads();  // everyone has read the right-hand side: s takes its place
    store_share(Rs, acc);
    if (j + 1 < J) store_share(Ss + j * kTileC, acc);  // for the leaf's later blocks
    __syncthreads();
    A cacc[kShare] = {};
    tile_product<false, kTf32>(As, Rs, cacc);
#pragma unroll
    for (int i = 0; i < kShare; ++i) {
      const int r = share_row(i), col = share_col(i);
      if (r >= nb || col >= ncols) continue;
      const int64_t o = base + int64_t(r) * D + col;
      ctx[o] = (has_prev ? ctx[o] : A(0)) + part[i] + cacc[i];
      s[o] = acc[i];
      if constexpr (!std::is_same_v<X, A>) store(s_out + o, acc[i]);
    }
  }
}

// (S6') for a leaf of up to J row blocks [s0, s1) of one batch item, columns [c0, c0 + kCols), from
// its last block to its first: df already holds what the rows from s1 on contribute (when
// has_carry). Block j first gathers what the leaf's later blocks contribute,
// part = sum_{m>j} A[m, j]^T w_m (their w stay in shared memory), then
//   df_j = L_j^-T (ds_j + carry + part),  w_j = Gamma_j df_j.
// Writes df and w (A), and df_out (X) when X is not A. The products' left operands L_j^-T and
// A[m, j]^T are read from L_j^-1 and A[m, j] as stored (tile_product's transposed form).
template <class X, int J, bool kTf32>
__global__ void __launch_bounds__(kApplyThreads, kLeafMinBlocks<X>)
    solve_backward_leaf(const AlphaView<acc_t<X>> alpha, const acc_t<X>* inv, const X* gamma, const X* ds, acc_t<X>* df,
                        X* df_out, acc_t<X>* w, int T, int D, int s0, int s1, bool has_carry) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A *Ls = reinterpret_cast<A*>(smem_bytes), *Cs = Ls + kTile, *Rs = Cs + kTile, *Ws = Rs + kTileC;
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), blocks = blocks_in(s1 - s0);
  const int cc = staged_col_c();
  // A[m, j]: rows of block m (up to 64, fewer past T), all 64 columns of block j.
  auto stage_coupling = [&](int m, int sj) {
    const int sm = s0 + kRows * m;
    stage_tile(Cs, alpha.ptr(b, sm, sj), alpha.ld, min(kRows, s1 - sm), kRows);
  };
  for (int j = blocks - 1; j >= 0; --j) {
    const int sj = s0 + kRows * j, nb = min(kRows, s1 - sj);
    const int64_t base = (int64_t(b) * T + sj) * D + c0;
    __syncthreads();  // the previous block's products are done with every tile
    stage_tile(Ls, inv + (int64_t(b) * blocks_in(T) + sj / kRows) * kBlockElems, kRows, kRows, kRows);
    if (j + 1 < blocks) stage_coupling(j + 1, sj);
    mma::cp_async_commit();
    A rv[kPerThreadC];  // ds + carry of the staged elements
#pragma unroll
    for (int e = 0; e < kPerThreadC; ++e) {
      const int r = staged_row_c(e);
      const int64_t o = base + int64_t(r) * D + cc;
      rv[e] = r < nb && cc < ncols ? load(ds + o) + (has_carry ? df[o] : A(0)) : A(0);
    }
    mma::cp_async_wait<0>();
    __syncthreads();
    A part[kShare] = {};  // sum_{m>j} A[m, j]^T w_m (the thread's share)
    for (int m = j + 1; m < blocks; ++m) {
      if (m > j + 1) {  // (leaves of more than two blocks) A[m, j] replaces A[m - 1, j]
        __syncthreads();
        stage_coupling(m, sj);
        mma::cp_async_commit();
        mma::cp_async_wait<0>();
        __syncthreads();
      }
      tile_product<true, kTf32>(Cs, Ws + (m - 1) * kTileC, part);
    }
    if (j + 1 < blocks) store_share(Rs, part);
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kPerThreadC; ++e) {
      const int r = staged_row_c(e);
      Rs[r * kLdC + cc] = rv[e] + (j + 1 < blocks && r < nb && cc < ncols ? Rs[r * kLdC + cc] : A(0));
    }
    __syncthreads();
    A acc[kShare] = {};
    tile_product<true, kTf32>(Ls, Rs, acc);
    const A g[2] = {share_row(0) < nb ? A(load(gamma + int64_t(b) * T + sj + share_row(0))) : A(0),
                    share_row(2) < nb ? A(load(gamma + int64_t(b) * T + sj + share_row(2))) : A(0)};
#pragma unroll
    for (int i = 0; i < kShare; ++i) {
      const int r = share_row(i), col = share_col(i);
      const A wi = g[i / 2 % 2] * acc[i];
      if (j > 0) Ws[(j - 1) * kTileC + r * kLdC + col] = wi;  // w_j, for the leaf's earlier blocks
      if (r >= nb || col >= ncols) continue;
      const int64_t o = base + int64_t(r) * D + col;
      df[o] = acc[i];
      w[o] = wi;
      if constexpr (!std::is_same_v<X, A>) store(df_out + o, acc[i]);
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

// Opts a kernel into `bytes` of dynamic shared memory (above the 48 KB default).
template <class Kernel>
void set_shared_memory(Kernel kernel, size_t bytes, const char* op) {
  SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
}

// The leaf kernel to launch, named by `kernel(std::bool_constant<kTf32>)`: its
// products run on TF32 tensor cores exactly when the solve's GEMMs do (use_tf32: always for
// bfloat16, for float32 while TF32 is allowed, never for float64).
template <class X, class Kernel>
auto pick_leaf(Kernel kernel) {
  using std::bool_constant;
  if constexpr (std::is_same_v<X, bf16_t>)
    return kernel(bool_constant<true>{});
  else if constexpr (std::is_same_v<X, float>)
    return use_tf32<X>() ? kernel(bool_constant<true>{}) : kernel(bool_constant<false>{});
  else
    return kernel(bool_constant<false>{});
}
template <class X>
auto forward_leaf() {
  return pick_leaf<X>([](auto tf32) { return solve_forward_leaf<X, kLeafBlocks, decltype(tf32)::value>; });
}
template <class X>
auto backward_leaf() {
  return pick_leaf<X>([](auto tf32) { return solve_backward_leaf<X, kLeafBlocks, decltype(tf32)::value>; });
}

}  // namespace

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
    const size_t smem = leaf_smem<A>(kForwardSquares, kLeafBlocks);
    const auto leaf_kernel = forward_leaf<X>();
    if (D > 0) set_shared_memory(leaf_kernel, smem, op);
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
    const auto solve = [&](int p0) {  // priority lane
      const int p1 = std::min(T, p0 + P), blocks = blocks_in(p1 - p0);
      const A* pa = panel_of(p0);
      const AlphaView<A> alpha{pa, PT, Tp, p0, 0};
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
          0, blocks, kLeafBlocks,
          [&](int lo, int hi) {  // row 0 has nothing before it; every later leaf has its ctx from the GEMMs
            leaf_kernel<<<grid, kApplyThreads, smem, chain>>>(alpha, inv, ptr<X>(gamma), ptr<X>(f), ctx, s,
                                                              ptr<X>(out.s), T, D, row(lo), row(hi), row(lo) > 0);
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
    const size_t smem = leaf_smem<A>(kBackwardSquares, kLeafBlocks);
    const auto leaf_kernel = backward_leaf<X>();
    if (D > 0) set_shared_memory(leaf_kernel, smem, op);
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
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
      const int c1 = std::min(T, c0 + P), blocks = blocks_in(c1 - c0);
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
          0, blocks, kLeafBlocks,
          [&](int lo, int hi) {  // row T - 1 has nothing after it; every earlier leaf has its carry from the GEMMs
            leaf_kernel<<<grid, kApplyThreads, smem, chain>>>(AlphaView<A>{pal, TP, P, c0, c0}, inv, ptr<X>(gamma),
                                                              ptr<X>(ds), pdf, ptr<X>(g.df), pw, T, D, row(lo), row(hi),
                                                              row(hi) < T);
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
