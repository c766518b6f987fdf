// The two fused kernels of the Mamba mixer (Gu & Dao 2023), forward and backward
// side by side, and their differentiable wrappers (one autograd node each).
//
// causal_conv1d: a depthwise convolution over time that only looks back,
//   y[b,t,c] = bias[c] + sum_{j=0}^{K-1} w[c,j] * x[b, t-K+1+j, c]   (x = 0 before t = 0),
//   optionally followed by SiLU (the mixer's u = SiLU(conv(x)) as one op).
// selective_scan: the diagonal, input-dependent linear recurrence, per (b, c, n),
//   h_t = exp(delta_t[c] * A[c,n]) * h_{t-1} + delta_t[c] * Bm_t[n] * u_t[c],   h_{-1} = 0,
//   y_t[c] = sum_n Cm_t[n] * h_t[c,n] + Dskip[c] * u_t[c],   optionally times SiLU(z_t[c]).

#pragma once
#include "tensor/tensor.h"

namespace sessa::nn {

// The raw kernels (no autograd) are name_forward / name_backward; the differentiable
// ops at the end keep the plain names.

// The widest conv kernel K the CUDA backward takes (its windows live in registers); the
// Mamba mixer checks d_conv against it when built.
constexpr int64_t kMaxConvTaps = 16;

// x: (B, T, C), w: (C, K), bias: (C) -> (B, T, C); SiLU of the result if `silu`.
Tensor causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu = false);
struct Conv1dGrads {
  Tensor dx, dw, dbias;
};
// With `silu`, the backward recomputes the pre-activation from x, w and bias (needed then).
Conv1dGrads causal_conv1d_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias = {},
                                   bool silu = false);

// u, delta: (B, T, Di); A: (Di, N); Bm, Cm: (B, T, N); Dskip: (Di) -> y (B, T, Di).
// With z (B, T, Di) the output is gated, y * SiLU(z) (the mixer's gate, fused).
// On CUDA, `checkpoints` (if given) receives the states at the segment boundaries of the
// parallel scan, for selective_scan_backward to reuse; on the CPU it is left undefined.
Tensor selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                              const Tensor& Dskip, const Tensor& z = {}, Tensor* checkpoints = nullptr);
struct SelectiveScanGrads {
  Tensor du, ddelta, dA, dB, dC, dD, dz;  // dz only with z
};
// `checkpoints`: from selective_scan_forward on the same inputs, or undefined (recomputed).
// With `ddelta_wrt_dt`, delta is softplus(dt) and ddelta comes back as the gradient with
// respect to dt: times softplus'(dt) = sigmoid(dt) = 1 - exp(-delta), applied as it is
// written (docs/models.md, "Mamba's fused ops").
SelectiveScanGrads selective_scan_backward(const Tensor& dy, const Tensor& u, const Tensor& delta, const Tensor& A,
                                           const Tensor& Bm, const Tensor& Cm, const Tensor& Dskip,
                                           const Tensor& z = {}, const Tensor& checkpoints = {},
                                           bool ddelta_wrt_dt = false);

// Differentiable versions (one autograd node each).
Tensor causal_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu = false);
// With `delta_softplus`, the second argument is dt and the scan runs on delta = softplus(dt)
// (the mixer's step sizes), computed outside the graph: one node, which keeps delta and
// returns dt's gradient (no softplus node, no saved dt, no softplus backward pass).
Tensor selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                      const Tensor& Dskip, const Tensor& z = {}, bool delta_softplus = false);

}  // namespace sessa::nn
