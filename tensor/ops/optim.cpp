// Optimizer kernels: the fused AdamW update and the squared norm used for clipping.
#include <cmath>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (wd p + mhat / (sqrt(vhat) + eps))
// with mhat = m / (1 - b1^t), vhat = v / (1 - b2^t)  (Loshchilov & Hutter, AdamW), and
// g = grad_scale * grad (the clipping factor: the stored gradient is read once, not rescaled).
void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const AdamWHyper& h) {
  for (const Tensor* t : {&grad, &m, &v})
    SESSA_CHECK(t->shape() == param.shape() && t->is_contiguous() && t->device() == param.device(), "adamw_step_",
                "state " << t->str() << " does not match parameter " << param.str());
  SESSA_CHECK(param.is_contiguous(), "adamw_step_", "needs a contiguous parameter, got " << param.str());
  if (param.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::adamw_step_(param, grad, m, v, h));
  }
  const double c1 = 1.0 - std::pow(h.beta1, double(h.step)), c2 = 1.0 - std::pow(h.beta2, double(h.step));
  cpu::dispatch_float(param.dtype(), "adamw_step_", [&](auto tag) {
    using T = decltype(tag);
    T *p = param.data<T>(), *pm = m.data<T>(), *pv = v.data<T>();
    const T* g = grad.data<T>();
    const int64_t n = param.numel();
#pragma omp parallel for simd if (n >= cpu::kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = T(h.grad_scale) * g[i];
      pm[i] = T(h.beta1) * pm[i] + T(1 - h.beta1) * gi;
      pv[i] = T(h.beta2) * pv[i] + T(1 - h.beta2) * gi * gi;
      T update = (pm[i] / T(c1)) / (std::sqrt(pv[i] / T(c2)) + T(h.eps));
      p[i] -= T(h.lr) * (T(h.weight_decay) * p[i] + update);
    }
  });
}

Tensor sum_of_squares(const Tensor& x) {
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::sum_of_squares(x));
  }
  Tensor c = contiguous(x);
  const double total = cpu::dispatch_float(c.dtype(), "sum_of_squares", [&](auto tag) {
    using T = decltype(tag);
    const T* p = c.data<T>();
    double acc = 0;
#pragma omp parallel for reduction(+ : acc) if (c.numel() >= cpu::kParallelGrain)
    for (int64_t i = 0; i < c.numel(); ++i) acc += double(p[i]) * double(p[i]);
    return acc;
  });
  return scalar(total, {DType::F64});
}

}  // namespace sessa::ops
