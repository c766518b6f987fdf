// The fused AdamW update: one elementwise pass reads param, grad, m, v and writes
// param, m, v (the formula is in tensor/ops/optim.cpp), in 16-byte packs of the parameter's
// dtype (a bfloat16 gradient in packs of the same count) when every pointer allows. The
// state has the parameter's dtype; the gradient may be the parameter's dtype or bfloat16.
// Arithmetic in float (double for double). sum_of_squares lives in reduce.cu with the other reductions.
#include <cmath>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

template <class A>
struct AdamWConst {
  A beta1, one_minus_beta1, beta2, one_minus_beta2, c1, c2, eps, lr, weight_decay, grad_scale;
};

// One element's update, in A = float (double for double).
template <class A, class P, class G>
__device__ __forceinline__ void adamw_update(P& param, G grad, P& m, P& v, const AdamWConst<A>& k) {
  const A g = k.grad_scale * A(load(&grad));
  const A mi = k.beta1 * load(&m) + k.one_minus_beta1 * g;
  const A vi = k.beta2 * load(&v) + k.one_minus_beta2 * g * g;
  store(&m, mi);
  store(&v, vi);
  const A update = (mi / k.c1) / (math::sqrt(vi / k.c2) + k.eps);
  const A p = load(&param);
  store(&param, p - k.lr * (k.weight_decay * p + update));
}

// Grid-stride over packs of W elements (16 bytes of the parameter's dtype when every pointer
// allows, else W = 1), then the n % W tail one element at a time.
template <int W, class P, class G>
__global__ void adamw_kernel(P* param, const G* grad, P* m, P* v, int64_t n, AdamWConst<acc_t<P>> k) {
  const int64_t packs = n / W, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < packs; i += stride) {
    Pack<P, W> p = load_pack<W>(param, i * W), mi = load_pack<W>(m, i * W), vi = load_pack<W>(v, i * W);
    const Pack<G, W> g = load_pack<W>(grad, i * W);
#pragma unroll
    for (int e = 0; e < W; ++e) adamw_update(p.v[e], g.v[e], mi.v[e], vi.v[e], k);
    store_pack(param, i * W, p);
    store_pack(m, i * W, mi);
    store_pack(v, i * W, vi);
  }
  for (int64_t i = W * packs + first; i < n; i += stride) adamw_update(param[i], grad[i], m[i], v[i], k);
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
    cudaStream_t st = stream(param.device().index);
    auto launch = [&](auto* g) {
      using G = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
      constexpr int W = kPackOf<P>;
      const bool packed = pack_aligned<W>(ptr<P>(param)) && pack_aligned<W>(g) && pack_aligned<W>(ptr<P>(m)) &&
                          pack_aligned<W>(ptr<P>(v));
      with_pack<W>(packed, [&](auto pack) {
        constexpr int w = decltype(pack)::value;
        adamw_kernel<w, P, G><<<grid_stride_blocks(std::max<int64_t>(n / w, 1)), kThreads, 0, st>>>(
            ptr<P>(param), g, ptr<P>(m), ptr<P>(v), n, k);
      });
    };
    if (grad.dtype() == DType::BF16 && param.dtype() != DType::BF16)
      launch(ptr<const bf16_t>(grad));
    else
      launch(ptr<const P>(grad));
    SESSA_CUDA_LAUNCH_CHECK("adamw_step_");
  });
}

}  // namespace sessa::cuda
