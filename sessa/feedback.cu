// The Sessa feedback solve on CUDA (docs/sessa.md, S3-S9 and "Memory-linear solve"), on
// the plan of the CPU code in sessa/feedback.cpp. X is the input dtype and A = acc_t<X> the
// compute dtype (float for float32 and bfloat16, double for float64). ctx, lse and every
// internal buffer are A, so bfloat16 inputs are rounded only on the way in and out; s is
// returned in X. No (B, T, T) tensor exists: alpha lives in panels of P rows (forward) or
// P columns (backward), P a multiple of 64 chosen so the panel buffers stay within
// kPanelBytes, and only s, ctx and the row statistic lse are saved.
//
// Forward, per row panel [p0, p1):
//   logits = q[p0:p1] k[0:p1]^T / sqrt(D)  cuBLAS (bf16 tensor cores, float output, for bf16);
//   alpha  = causal softmax                 one block per row; lse_t = log sum_{s<t} exp(logit);
//   solve, per row block [t0, t0 + 64) of the panel:
//     ctx[t0:t1] = alpha[t0:t1, 0:t0] s[0:t0]   one batched cuBLAS GEMM (float32; TF32 for bf16 inputs);
//     the 64-row triangle                        one block per (batch, 32 columns of D), rows
//                                                in order, 4 threads per column (warp shuffles).
// Backward, per column panel [c0, c1), from the last panel to the first:
//   alpha[c0:T, c0:c1] = exp(q k^T / sqrt(D) - lse_t), masked to s < t (rebuilt, not saved);
//   the transposed solve (S6') for rows c0..c1 backwards in time, per 64-row block: one GEMM
//     df[s0:s1] = alpha[s1:T, s0:s1]^T w[s1:T], then the triangle; w = gamma df;
//   dgamma    one warp per row of the panel: dgamma_t = df_t . ctx_t                 (S7)
//   dlogits   cuBLAS G = df[c0:T] s[c0:c1]^T, then alpha gamma (G - dgamma)          (S8')
//   dq, dk    dk[c0:c1] = dl^T q[c0:T] complete; dq[c0:T] += dl k[c0:c1]              (S9)
//             (float32 or TF32, see use_tf32).
#include <cmath>
#include <type_traits>

#include "sessa/feedback_cuda.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

// ---- products through cuBLAS (cuda::gemm) ------------------------------------------------
// Every product writes its result in the compute dtype A (float or double). Operands may be
// bfloat16 (tensor cores, float accumulation) or A. Float operands run in exact float32
// unless use_tf32 says otherwise: the solve's products and dq, dk use TF32 tensor cores for
// bfloat16 inputs (10 mantissa bits, more than the inputs carry) and, as every float32
// matmul, for float32 inputs while TF32 is allowed. G = df s^T is always exact, because
// dlogits subtracts two close numbers (S8').

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
  __device__ A at(int64_t b, int t, int s) const { return p[b * batch_stride + int64_t(t - row0) * ld + (s - col0)]; }
};

// Element e of the region rows [c0, T) x columns [0, cw) of a column panel (B, T, ld):
// batch item b, time t (the row), column j (time c0 + j) and the offset in the panel.
struct PanelIndex {
  int64_t b, off;
  int t, j;
};
__device__ inline PanelIndex panel_index(int64_t e, int T, int c0, int cw, int ld) {
  const int64_t rows = T - c0, per = rows * cw, b = e / per, rem = e % per;
  const int r = int(rem / cw), j = int(rem % cw);
  return {b, (b * T + r) * ld + j, c0 + r, j};
}

// alpha[t, c0 + j] = exp(logit - lse_t) for c0 + j < t, else 0, in place over the logits.
template <class A>
__global__ void rebuild_alpha_kernel(A* panel, const A* lse, int T, int c0, int cw, int ld, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const PanelIndex i = panel_index(e, T, c0, cw, ld);
  panel[i.off] = c0 + i.j < i.t ? math::exp(panel[i.off] - lse[i.b * T + i.t]) : A(0);
}

// (S8') in place over G = df s^T: dl[t, s] = alpha[t, s] gamma_t (G[t, s] - dgamma_t) for s < t, else 0.
template <class X>
__global__ void dlogits_kernel(acc_t<X>* g, const acc_t<X>* alpha, const X* gamma, const acc_t<X>* dgamma, int T,
                               int c0, int cw, int ld, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const PanelIndex i = panel_index(e, T, c0, cw, ld);
  const int64_t row = i.b * T + i.t;
  g[i.off] = c0 + i.j < i.t ? alpha[i.off] * load(gamma + row) * (g[i.off] - dgamma[row]) : acc_t<X>(0);
}

// dst[b, c0:T, :] += src[b, c0:T, :] over (B, T, D) tensors: dq's share from one column panel.
template <class A>
__global__ void add_rows_kernel(A* dst, const A* src, int T, int D, int c0, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int64_t per = int64_t(T - c0) * D, o = (e / per) * T * D + int64_t(c0) * D + e % per;
  dst[o] += src[o];
}

// ---- probabilities (S3) -------------------------------------------------------------
// Row r of a row panel (B, P, T) holding the logits of rows [p0, p1), columns [0, p1); one
// block per (r, batch). Row t = p0 + r becomes the softmax over s < t (zero for t <= s < p1),
// and lse_t = log sum_{s<t} exp(logit[t, s]) (0 for row 0) is saved for the backward.
template <class A>
__global__ void __launch_bounds__(256) panel_softmax_kernel(A* panel, A* lse, int T, int P, int p0, int p1) {
  const int64_t b = blockIdx.y;
  const int t = p0 + int(blockIdx.x);
  A* r = panel + (b * P + blockIdx.x) * int64_t(T);
  A mx = A(-INFINITY);
  for (int s = threadIdx.x; s < t; s += blockDim.x) mx = max(mx, r[s]);
  mx = block_max(mx);
  A sum = 0;
  for (int s = threadIdx.x; s < t; s += blockDim.x) sum += math::exp(r[s] - mx);
  sum = block_sum(sum);
  const A inv = t > 0 ? A(1) / sum : A(0);
  for (int s = threadIdx.x; s < p1; s += blockDim.x) r[s] = s < t ? math::exp(r[s] - mx) * inv : A(0);
  if (threadIdx.x == 0) lse[b * T + t] = t > 0 ? mx + math::log(sum) : A(0);
}

// ---- the two triangular solves --------------------------------------------------------
// Blocked as on the CPU, one row block of 64 per step: the host first adds everything the
// other blocks contribute with one batched cuBLAS GEMM (see use_tf32 for its precision), then a kernel with
// one block of kSolveThreads per (32 columns, batch) solves the 64-row triangle. Shared
// memory (in A elements): the diagonal alpha block Ad (64 x 65), the contribution of the
// other blocks Cs and the right-hand side Fs (64 x 33 each), the solved rows Ss (64 x 40:
// the 4 threads of a column read 4 distinct banks), gamma Gs.
constexpr int kRows = 64, kCols = 32, kSolveThreads = 128;
constexpr int kAd = 0, kCs = kAd + kRows * 65, kFs = kCs + kRows * 33, kSs = kFs + kRows * 33, kGs = kSs + kRows * 40,
              kSolveSmem = kGs + kRows;

// Loads the diagonal block alpha[r0:r0+nb, r0:r0+nb], the other blocks' contribution
// (rows of `carry`, or zero), the right-hand side rows and gamma.
template <class A, class X>
__device__ void load_block(A* sm, const AlphaView<A>& alpha, int64_t b, const A* carry, bool has_carry, const X* rhs,
                           const X* gamma, int r0, int nb, int T, int D, int c0, int ncols) {
  for (int e = threadIdx.x; e < kRows * kRows; e += kSolveThreads) {
    const int r = e / kRows, j = e % kRows;
    sm[kAd + r * 65 + j] = r < nb && j < nb ? alpha.at(b, r0 + r, r0 + j) : A(0);
  }
  for (int e = threadIdx.x; e < kRows * kCols; e += kSolveThreads) {
    const int r = e / kCols, c = e % kCols;
    const bool in = r < nb && c < ncols;
    const int64_t o = int64_t(r0 + r) * D + c0 + c;
    sm[kFs + r * 33 + c] = in ? load(rhs + o) : A(0);
    sm[kCs + r * 33 + c] = in && has_carry ? carry[o] : A(0);
  }
  if (threadIdx.x < kRows) sm[kGs + threadIdx.x] = int(threadIdx.x) < nb ? load(gamma + r0 + threadIdx.x) : A(0);
}

// (S5) for rows [t0, t0 + nb): s_t = f_t + gamma_t ctx_t, where ctx already holds the
// earlier blocks' part of ctx_t = sum_{j<t} alpha[t, j] s_j. Writes ctx and s (A), and
// s_out (X) when X is not A.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_forward_block(const AlphaView<acc_t<X>> alpha, const X* gamma, const X* f, acc_t<X>* ctx, acc_t<X>* s,
                        X* s_out, int T, int D, int t0) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), nb = min(kRows, T - t0);
  const int64_t bd = int64_t(b) * T * D;
  gamma += int64_t(b) * T, f += bd, ctx += bd, s += bd, s_out += bd;
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;  // column col, terms j = part mod 4
  load_block(sm, alpha, b, ctx, t0 > 0, f, gamma, t0, nb, T, D, c0, ncols);
  __syncthreads();
  for (int r = 0; r < nb; ++r) {  // the triangle, row by row
    A p = 0;
    for (int j = part; j < r; j += 4) p += sm[kAd + r * 65 + j] * sm[kSs + j * 40 + col];
    p += __shfl_xor_sync(0xffffffffu, p, 1);
    p += __shfl_xor_sync(0xffffffffu, p, 2);
    if (part == 0) {
      const A c = sm[kCs + r * 33 + col] + p, v = sm[kFs + r * 33 + col] + sm[kGs + r] * c;
      sm[kSs + r * 40 + col] = v;
      if (col < ncols) {
        const int64_t o = int64_t(t0 + r) * D + c0 + col;
        ctx[o] = c, s[o] = v;
        if constexpr (!std::is_same_v<X, A>) store(s_out + o, v);
      }
    }
    __syncwarp();
  }
}

// (S6') for rows [s0, s1): df_j = ds_j + sum_{t>j} alpha[t, j] w_t with w_t = gamma_t df_t,
// where df already holds the later blocks' part of the sum. Writes df and w (A), and
// df_out (X) when X is not A.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_backward_block(const AlphaView<acc_t<X>> alpha, const X* gamma, const X* ds, acc_t<X>* df, X* df_out,
                         acc_t<X>* w, int T, int D, int s0, int s1) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), nb = s1 - s0;
  const int64_t bd = int64_t(b) * T * D;
  gamma += int64_t(b) * T, ds += bd, df += bd, df_out += bd, w += bd;
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;
  load_block(sm, alpha, b, df, s1 < T, ds, gamma, s0, nb, T, D, c0, ncols);
  __syncthreads();
  for (int r = nb - 1; r >= 0; --r) {  // the triangle, from the last row up
    A p = 0;
    for (int t = r + 1 + part; t < nb; t += 4) p += sm[kAd + t * 65 + r] * sm[kSs + t * 40 + col];
    p += __shfl_xor_sync(0xffffffffu, p, 1);
    p += __shfl_xor_sync(0xffffffffu, p, 2);
    if (part == 0) {
      const A g = sm[kFs + r * 33 + col] + sm[kCs + r * 33 + col] + p, wv = sm[kGs + r] * g;
      sm[kSs + r * 40 + col] = wv;
      if (col < ncols) {
        const int64_t o = int64_t(s0 + r) * D + c0 + col;
        df[o] = g, w[o] = wv;
        if constexpr (!std::is_same_v<X, A>) store(df_out + o, g);
      }
    }
    __syncwarp();
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

// Rows per panel: a multiple of 64 (the solve block) with `buffers` panels of (B, P, T)
// elements of `elem` bytes within kPanelBytes (at least 64 rows), no more than T needs.
constexpr int64_t kPanelBytes = int64_t(256) << 20;
int forced_panel_rows = 0;  // set_feedback_panel_rows

int panel_rows(int B, int T, int buffers, size_t elem) {
  const int64_t whole = (int64_t(T) + kRows - 1) / kRows * kRows;
  int64_t p = forced_panel_rows > 0 ? forced_panel_rows
                                    : kPanelBytes / (int64_t(buffers) * B * T * int64_t(elem)) / kRows * kRows;
  return int(std::min(whole, std::max<int64_t>(kRows, p)));
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
                           Tensor::empty({B, T}, acc_opt)};
    if (B == 0 || T == 0) return out;
    const Tensor s_acc = std::is_same_v<X, A> ? out.s : Tensor::empty({B, T, D}, acc_opt);
    const cudaStream_t st = stream(dev.index);
    const int P = panel_rows(B, T, 1, sizeof(A));
    const Tensor panel = Tensor::empty({B, P, T}, acc_opt);  // alpha[p0:p1, 0:p1], row stride T
    A *pa = ptr<A>(panel), *ctx = ptr<A>(out.ctx), *s = ptr<A>(s_acc);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    const int64_t TD = int64_t(T) * D, PT = int64_t(P) * T;
    const size_t smem = kSolveSmem * sizeof(A);
    if (D > 0)
      SESSA_CUDA_CHECK(
          cudaFuncSetAttribute(solve_forward_block<X>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
    for (int p0 = 0; p0 < T; p0 += P) {
      const int p1 = std::min(T, p0 + P);
      gemm(dev.index, B, p1 - p0, p1, D, scale, {ptr<X>(q) + int64_t(p0) * D, q.dtype(), D, TD},
           {k.raw_data(), k.dtype(), D, TD, true}, pa, adt, T, PT, false, op);  // logits; the softmax masks s >= t
      panel_softmax_kernel<A><<<dim3(unsigned(p1 - p0), unsigned(B)), 256, 0, st>>>(pa, ptr<A>(out.lse), T, P, p0, p1);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (D == 0) continue;
      const AlphaView<A> alpha{pa, PT, T, p0, 0};
      for (int t0 = p0; t0 < p1; t0 += kRows) {
        const int nb = std::min(kRows, T - t0);
        if (t0 > 0)  // ctx[t0:t0+nb] = alpha[t0:t0+nb, 0:t0] s[0:t0]
          gemm(dev.index, B, nb, D, t0, 1.0, {pa + int64_t(t0 - p0) * T, adt, T, PT}, {s, adt, D, TD},
               ctx + int64_t(t0) * D, adt, D, TD, use_tf32<X>(), op);
        solve_forward_block<X>
            <<<grid, kSolveThreads, smem, st>>>(alpha, ptr<X>(gamma), ptr<X>(f), ctx, s, ptr<X>(out.s), T, D, t0);
        SESSA_CUDA_LAUNCH_CHECK(op);
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
    SESSA_CHECK(
        saved.lse.dtype() == adt && saved.ctx.dtype() == adt && saved.s.dtype() == q.dtype() &&
            saved.lse.shape() == gamma.shape() && saved.ctx.shape() == q.shape() && saved.s.shape() == q.shape() &&
            saved.lse.device() == dev && saved.ctx.device() == dev && saved.s.device() == dev,
        op,
        "saved tensors do not come from feedback_solve on " << q.str() << ": lse " << saved.lse.str() << ", ctx "
                                                            << saved.ctx.str() << ", s " << saved.s.str());
    const Tensor lse = ops::contiguous(saved.lse), ctx = ops::contiguous(saved.ctx);
    layer::FeedbackGrads g{Tensor::empty(q.shape(), q.options()), Tensor::empty(k.shape(), k.options()),
                           Tensor::empty(gamma.shape(), gamma.options()), Tensor::empty(ds.shape(), ds.options())};
    if (B == 0 || T == 0) return g;
    const TensorOptions acc_opt{adt, dev};
    constexpr bool same = std::is_same_v<X, A>;
    const Tensor df = same ? g.df : Tensor::empty({B, T, D}, acc_opt), w = Tensor::empty({B, T, D}, acc_opt);
    const Tensor dg = same ? g.dgamma : Tensor::empty({B, T}, acc_opt);
    const Tensor dq = same ? g.dq : Tensor::empty(q.shape(), acc_opt),
                 dk = same ? g.dk : Tensor::empty(k.shape(), acc_opt);
    const Tensor dq_part = Tensor::empty(q.shape(), acc_opt);  // one column panel's share of dq
    // Operands in the compute dtype: G exact; dq, dk as use_tf32 says.
    const Tensor s_a = ops::cast(saved.s, adt), k_a = ops::cast(k, adt), q_a = ops::cast(q, adt);
    const int P = panel_rows(B, T, 2, sizeof(A));
    // Column panels (B, T, P): rows t - c0 for t in [c0, T), columns s - c0 for s in [c0, c1).
    const Tensor alpha_panel = Tensor::empty({B, T, P}, acc_opt), dl_panel = Tensor::empty({B, T, P}, acc_opt);
    A *pal = ptr<A>(alpha_panel), *pdl = ptr<A>(dl_panel), *pdf = ptr<A>(df), *pw = ptr<A>(w), *pdg = ptr<A>(dg);
    const cudaStream_t st = stream(dev.index);
    const int64_t TD = int64_t(T) * D, TP = int64_t(T) * P;
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    SESSA_CUDA_CHECK(cudaMemsetAsync(dq.raw_data(), 0, size_t(B) * TD * sizeof(A), st), op);
    const size_t smem = kSolveSmem * sizeof(A);
    if (D > 0)
      SESSA_CUDA_CHECK(
          cudaFuncSetAttribute(solve_backward_block<X>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
    const dim3 grid(blocks_for(D, kCols), unsigned(B));
    for (int c1 = T; c1 > 0; c1 -= P) {
      const int c0 = std::max(0, c1 - P), cw = c1 - c0;
      const int64_t cells = int64_t(B) * (T - c0) * cw;
      // alpha[c0:T, c0:c1] from the logits and lse.
      gemm(dev.index, B, T - c0, cw, D, scale, {ptr<X>(q) + int64_t(c0) * D, q.dtype(), D, TD},
           {ptr<X>(k) + int64_t(c0) * D, k.dtype(), D, TD, true}, pal, adt, P, TP, false, op);
      rebuild_alpha_kernel<A><<<blocks_for(cells), kThreads, 0, st>>>(pal, ptr<A>(lse), T, c0, cw, P, cells);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (D > 0) {
        const AlphaView<A> alpha{pal, TP, P, c0, c0};
        for (int s1 = c1; s1 > c0; s1 -= kRows) {
          const int s0 = std::max(c0, s1 - kRows), nb = s1 - s0;
          if (s1 < T)  // df[s0:s1] = alpha[s1:T, s0:s1]^T w[s1:T]
            gemm(dev.index, B, nb, D, T - s1, 1.0, {pal + int64_t(s1 - c0) * P + (s0 - c0), adt, P, TP, true},
                 {pw + int64_t(s1) * D, adt, D, TD}, pdf + int64_t(s0) * D, adt, D, TD, use_tf32<X>(), op);
          solve_backward_block<X><<<grid, kSolveThreads, smem, st>>>(alpha, ptr<X>(gamma), ptr<X>(ds), pdf,
                                                                     ptr<X>(g.df), pw, T, D, s0, s1);
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
      }
      dgamma_kernel<X><<<blocks_for(int64_t(B) * cw * 32), kThreads, 0, st>>>(pdf, ptr<A>(ctx), pdg, ptr<X>(g.dgamma),
                                                                              B, T, D, c0, cw);
      SESSA_CUDA_LAUNCH_CHECK(op);
      // dl[c0:T, c0:c1]: G = df[c0:T] s[c0:c1]^T (exact), then (S8'); every row it needs is solved.
      gemm(dev.index, B, T - c0, cw, D, 1.0, {pdf + int64_t(c0) * D, adt, D, TD},
           {ptr<A>(s_a) + int64_t(c0) * D, adt, D, TD, true}, pdl, adt, P, TP, false, op);
      dlogits_kernel<X><<<blocks_for(cells), kThreads, 0, st>>>(pdl, pal, ptr<X>(gamma), pdg, T, c0, cw, P, cells);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (D == 0) continue;
      // (S9): dk[c0:c1] = dl^T q[c0:T] (complete), dq[c0:T] += dl k[c0:c1].
      gemm(dev.index, B, cw, D, T - c0, scale, {pdl, adt, P, TP, true}, {ptr<A>(q_a) + int64_t(c0) * D, adt, D, TD},
           ptr<A>(dk) + int64_t(c0) * D, adt, D, TD, use_tf32<X>(), op);
      gemm(dev.index, B, T - c0, D, cw, scale, {pdl, adt, P, TP}, {ptr<A>(k_a) + int64_t(c0) * D, adt, D, TD},
           ptr<A>(dq_part) + int64_t(c0) * D, adt, D, TD, use_tf32<X>(), op);
      const int64_t n = int64_t(B) * (T - c0) * D;
      add_rows_kernel<A><<<blocks_for(n), kThreads, 0, st>>>(ptr<A>(dq), ptr<A>(dq_part), T, D, c0, n);
      SESSA_CUDA_LAUNCH_CHECK(op);
    }
    if constexpr (!same) ops::copy_(g.dq, dq), ops::copy_(g.dk, dk);
    return g;
  });
}

}  // namespace sessa::cuda
