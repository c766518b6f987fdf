// The feedback gate (S4, docs/sessa.md) as one fused op:
//   gamma_t = gamma_max tanh(z_t + b),   z (B, T) the gate projection w_gamma . abar_t, b the
//   0-d gamma_bias parameter.
// Backward, with u = tanh(z + b):  dz = dgamma gamma_max (1 - u^2),  db = sum over (B, T) of dz.
// One kernel forward, and one pass over (B, T) plus a one-block sum backward (CUDA), where the
// composed ops took a broadcast add, tanh and a scale forward and their gradients, a sum and
// an accumulate backward: eight launches per layer and step. b may be float32 beside
// bfloat16 z (the parameter itself under mixed precision: db is summed in float32 straight
// into its .grad when the engine offers it); gamma has z's dtype. The CPU runs float32 and
// float64 (tensor/cpu), CUDA also bfloat16 (sessa/gate.cu).
#pragma once
#include "tensor/tensor.h"

namespace sessa::layer {

// The differentiable op: gamma (B, T) from z (B, T) and the 0-d bias.
Tensor gate(const Tensor& z, const Tensor& bias, double gamma_max);

struct GateGrads {
  Tensor dz, dbias;
};
Tensor gate_forward(const Tensor& z, const Tensor& bias, double gamma_max);
// dz, and db added into dbias_sum when it is given (a 0-d tensor of the bias's dtype, its
// .grad) or written to a new 0-d tensor of that dtype.
GateGrads gate_backward(const Tensor& dgamma, const Tensor& z, const Tensor& bias, double gamma_max,
                        const Tensor& dbias_sum = {});

}  // namespace sessa::layer

namespace sessa::cuda {

// The CUDA kernels (sessa/gate.cu), called by the layer functions above after their checks.
Tensor gate_forward(const Tensor& z, const Tensor& bias, double gamma_max);
layer::GateGrads gate_backward(const Tensor& dgamma, const Tensor& z, const Tensor& bias, double gamma_max,
                               const Tensor& dbias_sum);

}  // namespace sessa::cuda
