// The Sessa feedback branch as one fused op (docs/sessa.md):
//   alpha[t, s] = softmax_{s < t}(q[t] . k[s] / sqrt(D))   (row 0 all zero)      (S3)
//   s_t = f_t + gamma_t * ctx_t,  ctx_t = sum_{s < t} alpha[t, s] s_s            (S5)
// i.e. the unit lower-triangular system (I - diag(gamma) alpha) s = f per batch row.
// Memory-linear (docs/sessa.md "Memory-linear solve"): alpha is never kept. The forward
// saves the row log-sum-exp of the logits, and the backward rebuilds the alpha blocks it
// needs as exp(q[t] . k[s] / sqrt(D) - lse[t]); on CUDA it also saves the inverses of the
// solve's 64 x 64 diagonal blocks (64 numbers per row).
#pragma once
#include "tensor/tensor.h"

namespace sessa::layer {

// The raw kernels (no autograd), feedback_solve_forward / _backward; the differentiable
// op at the end keeps the plain name.

// q, k, f: (B, T, D); gamma: (B, T). Returns s and what backward needs.
struct FeedbackOut {
  Tensor s, ctx;  // (B, T, D): the states and ctx_t = sum_{s<t} alpha[t, s] s_s
  Tensor lse;     // (B, T): log sum_{s<t} exp(logit[t, s]), the softmax row statistic; 0 for row 0
  Tensor inv;     // CUDA only (B, ceil(T / 64), 64, 64): the inverses of the solve's diagonal blocks
                  // (sessa/feedback.cu); the CPU substitutes row by row and leaves it undefined
};
FeedbackOut feedback_solve_forward(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f);

struct FeedbackGrads {
  Tensor dq, dk, dgamma, df;
};
FeedbackGrads feedback_solve_backward(const Tensor& ds, const Tensor& q, const Tensor& k, const Tensor& gamma,
                                      const FeedbackOut& saved);

// Differentiable: one autograd node over (q, k, gamma, f).
Tensor feedback_solve(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f);

}  // namespace sessa::layer
