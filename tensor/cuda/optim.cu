// The fused AdamW update: one elementwise pass reads param, grad, m, v and writes
// param, m, v (the formula is in tensor/ops/optim.cpp). The state has the parameter's
// dtype; the gradient may be the parameter's dtype or bfloat16. Arithmetic in float
// (double for double). sum_of_squares lives in reduce.cu with the other reductions.
#include <cmath>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

template <class A>
struct AdamWConst {
  A beta1, one_minus_beta1, beta2, one_minus_beta2, c1, c2, eps, lr, weight_decay, grad_scale;
};

template <class P, class G>
__global__ void adamw_kernel(P* param, const G* grad, P* m, P* v, int64_t n, AdamWConst<acc_t<P>> k) {
  using A = acc_t<P>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const A g = k.grad_scale * A(load(grad + i));
    const A mi = k.beta1 * load(m + i) + k.one_minus_beta1 * g;
    const A vi = k.beta2 * load(v + i) + k.one_minus_beta2 * g * g;
    store(m + i, mi);
    store(v + i, vi);
    const A update = (mi / k.c1) / (math::sqrt(vi / k.c2) + k.eps);
    const A p = load(param + i);
    store(param + i, p - k.lr * (k.weight_decay * p + update));
  }
}

}  // namespace

void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const ops::AdamWHyper& h) {
  SESSA_CHECK(m.dtype() == param.dtype() && v.dtype() == param.dtype(), "adamw_step_",
              "optimizer state " << m.str() << ", " << v.str() << " must have the parameter's dtype " << param.str());
  SESSA_CHECK(grad.dtype() == param.dtype() || grad.dtype() == DType::BF16, "adamw_step_",
              "gradient " << grad.str() << " must be " << dtype_name(param.dtype()) << " or bfloat16");
  const int64_t n = param.numel();
  if (n == 0) return;
  dispatch_float(param.dtype(), "adamw_step_", [&](auto tag) {
    using P = decltype(tag);
    using A = acc_t<P>;
    const AdamWConst<A> k{A(h.beta1),
                          A(1 - h.beta1),
                          A(h.beta2),
                          A(1 - h.beta2),
                          A(1.0 - std::pow(h.beta1, double(h.step))),
                          A(1.0 - std::pow(h.beta2, double(h.step))),
                          A(h.eps),
                          A(h.lr),
                          A(h.weight_decay),
                          A(h.grad_scale)};
    const unsigned blocks = grid_stride_blocks(n);
    cudaStream_t st = stream(param.device().index);
    if (grad.dtype() == DType::BF16 && param.dtype() != DType::BF16)
      adamw_kernel<P, bf16_t>
          <<<blocks, kThreads, 0, st>>>(ptr<P>(param), ptr<const bf16_t>(grad), ptr<P>(m), ptr<P>(v), n, k);
    else
      adamw_kernel<P, P><<<blocks, kThreads, 0, st>>>(ptr<P>(param), ptr<const P>(grad), ptr<P>(m), ptr<P>(v), n, k);
    SESSA_CUDA_LAUNCH_CHECK("adamw_step_");
  });
}

}  // namespace sessa::cuda
