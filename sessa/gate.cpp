// The feedback gate (sessa/gate.h): argument checks, the CPU loops (float32, float64) and the
// autograd node. CUDA tensors go to sessa/gate.cu after the checks.
#include "sessa/gate.h"

#include <cmath>

#include "autograd/node.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::layer {

namespace {

void check_gate(const char* op, const Tensor& z, const Tensor& bias, double gamma_max) {
  SESSA_CHECK(bias.dim() == 0 && bias.device() == z.device(), op,
              "the bias must be a 0-d tensor on the device of z " << z.str() << ", got " << bias.str());
  SESSA_CHECK(bias.dtype() == z.dtype() || (z.dtype() == DType::BF16 && bias.dtype() == DType::F32), op,
              "the bias " << bias.str() << " must have the dtype of z " << z.str() << " (or float32 beside bfloat16)");
  SESSA_CHECK(std::isfinite(gamma_max) && gamma_max > 0, op, "gamma_max must be positive, got " << gamma_max);
}

}  // namespace

Tensor gate_forward(const Tensor& z_in, const Tensor& bias, double gamma_max) {
  check_gate("gate", z_in, bias, gamma_max);
  if (z_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::gate_forward(z_in, bias, gamma_max));
  }
  const Tensor z = ops::contiguous(z_in);
  Tensor gamma = empty_like(z);
  cpu::dispatch_float(z.dtype(), "gate", [&](auto tag) {
    using T = decltype(tag);
    const T b = T(bias.item()), c = T(gamma_max), *pz = z.data<T>();
    T* out = gamma.data<T>();
    const int64_t n = z.numel();
#pragma omp parallel for if (n >= cpu::kParallelGrain)
    for (int64_t i = 0; i < n; ++i) out[i] = c * std::tanh(pz[i] + b);
  });
  return gamma;
}

GateGrads gate_backward(const Tensor& dgamma_in, const Tensor& z_in, const Tensor& bias, double gamma_max,
                        const Tensor& dbias_sum) {
  const char* op = "gate_backward";
  check_gate(op, z_in, bias, gamma_max);
  SESSA_CHECK(
      dgamma_in.shape() == z_in.shape() && dgamma_in.dtype() == z_in.dtype() && dgamma_in.device() == z_in.device(), op,
      "the gradient " << dgamma_in.str() << " does not match z " << z_in.str());
  SESSA_CHECK(!dbias_sum.defined() ||
                  (dbias_sum.dim() == 0 && dbias_sum.dtype() == bias.dtype() && dbias_sum.device() == bias.device()),
              op, "the bias gradient's sum " << dbias_sum.str() << " must be 0-d like the bias " << bias.str());
  if (z_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::gate_backward(dgamma_in, z_in, bias, gamma_max, dbias_sum));
  }
  const Tensor z = ops::contiguous(z_in), dgamma = ops::contiguous(dgamma_in);
  GateGrads g{empty_like(z), dbias_sum.defined() ? dbias_sum : Tensor::empty({}, bias.options())};
  cpu::dispatch_float(z.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T b = T(bias.item()), c = T(gamma_max), *pz = z.data<T>(), *pd = dgamma.data<T>();
    T* dz = g.dz.data<T>();
    const int64_t n = z.numel();
    double total = 0;  // in index order: the result does not depend on the threads
    for (int64_t i = 0; i < n; ++i) {
      const T u = std::tanh(pz[i] + b);
      total += double(dz[i] = pd[i] * c * (T(1) - u * u));
    }
    T* db = g.dbias.data<T>();
    *db = dbias_sum.defined() ? T(*db + total) : T(total);
  });
  return g;
}

Tensor gate(const Tensor& z, const Tensor& bias, double gamma_max) {
  return autograd::record_summing(
      "gate", gate_forward(z, bias, gamma_max), {z, bias},
      [z = z.detach(), bias = bias.detach(), gamma_max](const Tensor& g, const std::vector<Tensor>& sums) {
        GateGrads d = gate_backward(g, z, bias, gamma_max, sums[1]);
        return std::vector<Tensor>{d.dz, d.dbias};
      });
}

}  // namespace sessa::layer
