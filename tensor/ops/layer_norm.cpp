// Fused LayerNorm over the last dimension, forward and backward.
// Backward, per row with xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows dy * xhat,  dbias = sum_rows dy.
#include <cmath>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/rowops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

LayerNormOut layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  SESSA_CHECK(x_in.dim() >= 1 && weight.shape() == Shape{x_in.size(-1)} && bias.shape() == weight.shape(), "layer_norm",
              "input " << x_in.shape() << " needs weight and bias of shape [" << x_in.size(-1) << "], got "
                       << weight.shape() << " and " << bias.shape());
  if (x_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::layer_norm(x_in, weight, bias, eps));
  }
  // Named: a pointer into a temporary contiguous copy would dangle after its statement.
  const Tensor x = contiguous(x_in), wc = contiguous(weight), bc = contiguous(bias);
  const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
  Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  LayerNormOut out{empty_like(x), Tensor::empty(stat_shape, x.options()), Tensor::empty(stat_shape, x.options())};
  cpu::dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *w = wc.data<T>(), *b = bc.data<T>();
    T *y = out.y.data<T>(), *mu = out.mean.data<T>(), *rs = out.rstd.data<T>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = px + r * D;
      double s = 0, ss = 0;
      for (int64_t i = 0; i < D; ++i) s += double(row[i]);
      const double m = s / double(D);
      for (int64_t i = 0; i < D; ++i) ss += (double(row[i]) - m) * (double(row[i]) - m);
      const double rstd = 1.0 / std::sqrt(ss / double(D) + eps);
      mu[r] = T(m), rs[r] = T(rstd);
      for (int64_t i = 0; i < D; ++i) y[r * D + i] = T((double(row[i]) - m) * rstd) * w[i] + b[i];
    }
  });
  return out;
}

LayerNormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight, const Tensor& mean,
                                   const Tensor& rstd, const LayerNormGrads& sums) {
  SESSA_CHECK(dy_in.shape() == x_in.shape(), "layer_norm_backward",
              "gradient " << dy_in.shape() << " vs input " << x_in.shape());
  for (const Tensor* s : {&sums.dweight, &sums.dbias})
    SESSA_CHECK(!s->defined() || (s->shape() == weight.shape() && s->dtype() == weight.dtype() &&
                                  s->device() == weight.device() && s->is_contiguous()),
                "layer_norm_backward",
                "a parameter gradient sum " << s->str() << " must be contiguous and like the weight " << weight.str());
  SESSA_CHECK(!sums.dx.defined() || (sums.dx.shape() == x_in.shape() && sums.dx.dtype() == x_in.dtype() &&
                                     sums.dx.device() == x_in.device() && sums.dx.is_contiguous()),
              "layer_norm_backward",
              "the input gradient sum " << sums.dx.str() << " must be contiguous and like the input " << x_in.str());
  if (x_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::layer_norm_backward(dy_in, x_in, weight, mean, rstd, sums));
  }
  const Tensor x = contiguous(x_in), dy = contiguous(dy_in), wc = contiguous(weight);
  const Tensor mc = contiguous(mean), rc = contiguous(rstd);
  const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
  const bool add_dx = sums.dx.defined();
  LayerNormGrads g{add_dx ? sums.dx : empty_like(x), zeros({D}, x.options()), zeros({D}, x.options())};
  cpu::dispatch_float(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pdy = dy.data<T>(), *w = wc.data<T>();
    const T *mu = mc.data<T>(), *rs = rc.data<T>();
    T* dx = g.dx.data<T>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      double mean_g = 0, mean_gx = 0;
      for (int64_t i = 0; i < D; ++i) {
        double xhat = (double(px[r * D + i]) - double(mu[r])) * double(rs[r]);
        double gi = double(pdy[r * D + i]) * double(w[i]);
        mean_g += gi, mean_gx += gi * xhat;
      }
      mean_g /= double(D), mean_gx /= double(D);
      for (int64_t i = 0; i < D; ++i) {
        double xhat = (double(px[r * D + i]) - double(mu[r])) * double(rs[r]);
        double gi = double(pdy[r * D + i]) * double(w[i]);
        const double d = double(rs[r]) * (gi - mean_g - xhat * mean_gx);
        dx[r * D + i] = T(add_dx ? double(dx[r * D + i]) + d : d);
      }
    }
    // Parameter gradients: reduce over rows, parallel over columns.
    T *dw = g.dweight.data<T>(), *db = g.dbias.data<T>();
#pragma omp parallel for if (x.numel() >= cpu::kParallelGrain)
    for (int64_t i = 0; i < D; ++i) {
      double sw = 0, sb = 0;
      for (int64_t r = 0; r < rows; ++r) {
        double xhat = (double(px[r * D + i]) - double(mu[r])) * double(rs[r]);
        sw += double(pdy[r * D + i]) * xhat, sb += double(pdy[r * D + i]);
      }
      dw[i] = T(sw), db[i] = T(sb);
    }
  });
  if (sums.dweight.defined()) add_(sums.dweight, g.dweight), g.dweight = sums.dweight;
  if (sums.dbias.defined()) add_(sums.dbias, g.dbias), g.dbias = sums.dbias;
  return g;
}

}  // namespace sessa::ops
