// The feedback solve on the CPU. Both triangular solves are blocked: rows are
// taken in blocks of kBlock, in halves (sessa/solve_order.h); everything a block needs
// from earlier (forward) or later (backward) blocks arrives by GEMMs, and only the small
// triangle inside the block is substituted row by row. The CUDA kernels follow the same
// plan and order.
// Memory: only s, ctx and the row statistic lse are saved (O(T D)). This is the
// float64 reference for small T, so each batch element's alpha (and dlogits) is a
// transient (T, T) buffer of the call, rebuilt in the backward from lse; the CUDA
// code works in bounded row/column panels instead (docs/sessa.md "Memory-linear solve").
#include "sessa/feedback.h"

#include <cmath>
#include <vector>

#include "autograd/node.h"
#include "sessa/feedback_cuda.h"
#include "sessa/solve_order.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::layer {

namespace {

constexpr int64_t kBlock = 64;

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f) {
  const bool shapes_ok =
      q.dim() == 3 && k.shape() == q.shape() && f.shape() == q.shape() && gamma.shape() == Shape{q.size(0), q.size(1)};
  SESSA_CHECK(shapes_ok, "feedback_solve",
              "expected q, k, f of one shape (B, T, D) and gamma (B, T), got q "
                  << q.shape() << ", k " << k.shape() << ", gamma " << gamma.shape() << ", f " << f.shape());
  for (const Tensor* t : {&k, &gamma, &f})
    SESSA_CHECK(t->dtype() == q.dtype() && t->device() == q.device(), "feedback_solve",
                "inputs differ in dtype or device: " << q.str() << " vs " << t->str());
}

// alpha = causal softmax of q k^T * scale over s < t, for one batch element (S3);
// lse[t] = log sum_{s<t} exp(logit[t, s]) (0 for row 0), what the backward rebuilds alpha from.
template <class T>
void feedback_probabilities(const T* q, const T* k, T* alpha, T* lse, int64_t n, int64_t d) {
  const T scale = T(1.0 / std::sqrt(double(d)));
  cpu::gemm<T>(false, true, n, n, d, scale, q, d, k, d, T(0), alpha, n);
  for (int64_t t = 0; t < n; ++t) {
    T* row = alpha + t * n;
    T mx = t > 0 ? row[0] : T(0);
    for (int64_t s = 1; s < t; ++s) mx = std::max(mx, row[s]);
    double total = 0;
    for (int64_t s = 0; s < t; ++s) total += double(row[s] = std::exp(row[s] - mx));
    const T inv = t > 0 ? T(1.0 / total) : T(0);
    for (int64_t s = 0; s < t; ++s) row[s] *= inv;
    for (int64_t s = t; s < n; ++s) row[s] = T(0);
    lse[t] = t > 0 ? T(mx + std::log(total)) : T(0);
  }
}

// alpha again from the saved statistic: exp(logit[t, s] - lse[t]) for s < t, else 0.
template <class T>
void rebuild_probabilities(const T* q, const T* k, const T* lse, T* alpha, int64_t n, int64_t d) {
  const T scale = T(1.0 / std::sqrt(double(d)));
  cpu::gemm<T>(false, true, n, n, d, scale, q, d, k, d, T(0), alpha, n);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < n; ++s) alpha[t * n + s] = s < t ? std::exp(alpha[t * n + s] - lse[t]) : T(0);
}

// Forward substitution (S5) for one batch element: ctx and s, (n, d) row-major. The blocks
// in halves (solve_in_halves, the order the GPU runs): what earlier blocks contribute arrives
// by GEMMs into ctx; inside a block, row by row.
template <class T>
void forward_substitution(const T* alpha, const T* gamma, const T* f, T* ctx, T* s, int64_t n, int64_t d) {
  const auto row = [n](int i) { return std::min(n, kBlock * i); };
  std::fill(ctx, ctx + n * d, T(0));
  solve_in_halves<false>(
      0, int((n + kBlock - 1) / kBlock), kLeafBlocks,
      [&](int lo, int hi) {  // the triangle inside the leaf's blocks [lo, hi), row by row
        for (int64_t t = row(lo); t < row(hi); ++t) {
          T* c = ctx + t * d;
          for (int64_t j = row(lo); j < t; ++j) {
            const T a = alpha[t * n + j];
            const T* sj = s + j * d;
            for (int64_t e = 0; e < d; ++e) c[e] += a * sj[e];
          }
          for (int64_t e = 0; e < d; ++e) s[t * d + e] = f[t * d + e] + gamma[t] * c[e];
        }
      },
      [&](int lo, int mid, int hi) {  // ctx[mid:hi] += alpha[mid:hi, lo:mid] @ s[lo:mid] (rows of those blocks)
        cpu::gemm<T>(false, false, row(hi) - row(mid), d, row(mid) - row(lo), T(1), alpha + row(mid) * n + row(lo), n,
                     s + row(lo) * d, d, T(1), ctx + row(mid) * d, d);
      });
}

// The transposed solve (S6), backwards in time: df_s = ds_s + sum_{t > s} alpha[t, s] w_t
// with w_t = gamma_t df_t. Fills df and w, (n, d) row-major; the blocks in halves, later first.
template <class T>
void backward_substitution(const T* alpha, const T* gamma, const T* ds, T* df, T* w, int64_t n, int64_t d) {
  const auto row = [n](int i) { return std::min(n, kBlock * i); };
  std::copy(ds, ds + n * d, df);
  solve_in_halves<true>(
      0, int((n + kBlock - 1) / kBlock), kLeafBlocks,
      [&](int lo, int hi) {  // the triangle inside the leaf's blocks [lo, hi), from its last row up
        for (int64_t s = row(hi) - 1; s >= row(lo); --s) {
          T* g = df + s * d;
          for (int64_t t = s + 1; t < row(hi); ++t) {
            const T a = alpha[t * n + s];
            const T* wt = w + t * d;
            for (int64_t e = 0; e < d; ++e) g[e] += a * wt[e];
          }
          for (int64_t e = 0; e < d; ++e) w[s * d + e] = gamma[s] * g[e];
        }
      },
      [&](int lo, int mid, int hi) {  // df[lo:mid] += alpha[mid:hi, lo:mid]^T @ w[mid:hi]
        cpu::gemm<T>(true, false, row(mid) - row(lo), d, row(hi) - row(mid), T(1), alpha + row(mid) * n + row(lo), n,
                     w + row(mid) * d, d, T(1), df + row(lo) * d, d);
      });
}

}  // namespace

FeedbackOut feedback_solve_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& gamma_in, const Tensor& f_in) {
  check_inputs(q_in, k_in, gamma_in, f_in);
  if (q_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::feedback_solve(q_in, k_in, gamma_in, f_in));
  }
  Tensor q = ops::contiguous(q_in), k = ops::contiguous(k_in), gamma = ops::contiguous(gamma_in),
         f = ops::contiguous(f_in);
  const int64_t B = q.size(0), n = q.size(1), d = q.size(2);
  FeedbackOut out{empty_like(f), empty_like(f), Tensor::empty({B, n}, q.options()), Tensor()};  // no inverses
  cpu::dispatch_float(q.dtype(), "feedback_solve", [&](auto tag) {
    using T = decltype(tag);
#pragma omp parallel for if (B > 1)
    for (int64_t b = 0; b < B; ++b) {
      std::vector<T> alpha(size_t(n * n));  // (n, n), this batch element only
      feedback_probabilities(q.data<T>() + b * n * d, k.data<T>() + b * n * d, alpha.data(), out.lse.data<T>() + b * n,
                             n, d);
      forward_substitution(alpha.data(), gamma.data<T>() + b * n, f.data<T>() + b * n * d,
                           out.ctx.data<T>() + b * n * d, out.s.data<T>() + b * n * d, n, d);
    }
  });
  return out;
}

// With the adjoint df from (S6):  dgamma_t = df_t . ctx_t                          (S7)
//   dlogits[t, s] = alpha[t, s] gamma_t (df_t . s_s - dgamma_t)  for s < t          (S8)
//   dq = dlogits k / sqrt(D),  dk = dlogits^T q / sqrt(D)                           (S9)
FeedbackGrads feedback_solve_backward(const Tensor& ds_in, const Tensor& q_in, const Tensor& k_in,
                                      const Tensor& gamma_in, const FeedbackOut& saved) {
  check_inputs(q_in, k_in, gamma_in, ds_in);
  if (q_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::feedback_solve_backward(ds_in, q_in, k_in, gamma_in, saved));
  }
  Tensor ds = ops::contiguous(ds_in), q = ops::contiguous(q_in), k = ops::contiguous(k_in),
         gamma = ops::contiguous(gamma_in);
  const int64_t B = q.size(0), n = q.size(1), d = q.size(2);
  FeedbackGrads g{empty_like(q), empty_like(k), empty_like(gamma), empty_like(ds)};
  Tensor w = empty_like(ds);
  cpu::dispatch_float(q.dtype(), "feedback_solve_backward", [&](auto tag) {
    using T = decltype(tag);
    const T scale = T(1.0 / std::sqrt(double(d)));
#pragma omp parallel for if (B > 1)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t at = b * n * d;
      std::vector<T> alpha_buf(size_t(n * n)), dl_buf(size_t(n * n));  // (n, n), this batch element only
      const T* alpha = alpha_buf.data();
      rebuild_probabilities(q.data<T>() + at, k.data<T>() + at, saved.lse.data<T>() + b * n, alpha_buf.data(), n, d);
      const T* gam = gamma.data<T>() + b * n;
      const T *s = saved.s.data<T>() + at, *ctx = saved.ctx.data<T>() + at;
      T* df = g.df.data<T>() + at;
      T* dgam = g.dgamma.data<T>() + b * n;
      T* dl = dl_buf.data();
      backward_substitution(alpha, gam, ds.data<T>() + at, df, w.data<T>() + at, n, d);
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += double(df[t * d + i]) * double(ctx[t * d + i]);
        dgam[t] = T(dot);
      }
      cpu::gemm<T>(false, true, n, n, d, T(1), df, d, s, d, T(0), dl, n);  // df_t . s_s for all pairs
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < n; ++j)
          dl[t * n + j] = j < t ? alpha[t * n + j] * gam[t] * (dl[t * n + j] - dgam[t]) : T(0);
      cpu::gemm<T>(false, false, n, d, n, scale, dl, n, k.data<T>() + at, d, T(0), g.dq.data<T>() + at, d);
      cpu::gemm<T>(true, false, n, d, n, scale, dl, n, q.data<T>() + at, d, T(0), g.dk.data<T>() + at, d);
    }
  });
  return g;
}

Tensor feedback_solve(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f) {
  FeedbackOut out = feedback_solve_forward(q, k, gamma, f);
  FeedbackOut saved{out.s.detach(), out.ctx, out.lse, out.inv};  // detached: the node must not own its output
  return autograd::record("feedback_solve", out.s, {q, k, gamma, f},
                          [q = q.detach(), k = k.detach(), gamma = gamma.detach(), saved](const Tensor& ds) {
                            auto g = feedback_solve_backward(ds, q, k, gamma, saved);
                            return std::vector<Tensor>{g.dq, g.dk, g.dgamma, g.df};
                          });
}

}  // namespace sessa::layer
