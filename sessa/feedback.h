// The Sessa feedback branch as one fused op (docs/sessa.md):
//   alpha[t, s] = softmax_{s < t}(q[t] . k[s] / sqrt(D))   (row 0 all zero)      (S3)
//   s_t = f_t + gamma_t * ctx_t,  ctx_t = sum_{s < t} alpha[t, s] s_s            (S5)
// i.e. the unit lower-triangular system (I - diag(gamma) alpha) s = f per batch row.
#pragma once
#include "tensor/tensor.h"

namespace sessa::ops {

// q, k, f: (B, T, D); gamma: (B, T). Returns s and what backward needs.
struct FeedbackOut {
  Tensor s, alpha, ctx;  // alpha: (B, T, T) strictly lower triangular; ctx: (B, T, D)
};
FeedbackOut feedback_solve(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f);

struct FeedbackGrads {
  Tensor dq, dk, dgamma, df;
};
FeedbackGrads feedback_solve_backward(const Tensor& ds, const Tensor& q, const Tensor& k, const Tensor& gamma,
                                      const FeedbackOut& saved);

}  // namespace sessa::ops

namespace sessa {

// Differentiable: one autograd node over (q, k, gamma, f).
Tensor feedback_solve(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f);

}  // namespace sessa
