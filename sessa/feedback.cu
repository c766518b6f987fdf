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
//
// Device code: the row kernels in sessa/feedback_rows.cuh, the inverses and leaf kernels in
// sessa/feedback_leaves.cuh.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "sessa/feedback_cuda.h"
#include "sessa/feedback_leaves.cuh"
#include "sessa/feedback_rows.cuh"
#include "sessa/solve_order.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"
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
      // Panels run from the last, and rows [c0, c1) get nothing from later panels: this panel's
      // part of them is their first and is written (no zeroed buffer), the rest is added.
      gemm(dev.index, B, cw, D, T - c0, scale, {pdl, xdt, P, TP, true}, {ptr<X>(q) + int64_t(c0) * D, xdt, D, TD},
           ptr<X>(g.dk) + int64_t(c0) * D, xdt, D, TD, use_tf32<X>(), op);
      const GemmOperand k_panel{ptr<X>(k) + int64_t(c0) * D, xdt, D, TD};
      gemm(dev.index, B, cw, D, cw, scale, {pdl, xdt, P, TP}, k_panel, ptr<A>(dq) + int64_t(c0) * D, adt, D, TD,
           use_tf32<X>(), op);
      if (c1 < T)
        gemm(dev.index, B, T - c1, D, cw, scale, {pdl + int64_t(cw) * P, xdt, P, TP}, k_panel,
             ptr<A>(dq) + int64_t(c1) * D, adt, D, TD, use_tf32<X>(), op, /*accumulate=*/true);
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
