#include "nn/layers.h"

#include <utility>

#include "autograd/ops.h"

namespace sessa::nn {

Linear::Linear(int64_t in, int64_t out, Generator& gen, LinearOptions opt, TensorOptions topt)
    : in_features(in), out_features(out) {
  weight = normal({out, in}, 0.0, opt.init_std, gen, topt);
  register_parameter("weight", weight, true);
  if (opt.bias) {
    bias = zeros({out}, topt);
    register_parameter("bias", bias, false);
  }
}

Linear::Linear(Tensor weight_, Tensor bias_) : weight(std::move(weight_)), bias(std::move(bias_)) {
  SESSA_CHECK(weight.dim() == 2 && (!bias.defined() || bias.shape() == Shape{weight.size(0)}), "Linear",
              "weight " << weight.shape() << " must be (out, in) and bias (out), got bias "
                        << (bias.defined() ? bias.shape() : Shape{}));
  in_features = weight.size(1);
  out_features = weight.size(0);
  register_parameter("weight", weight, true);
  if (bias.defined()) register_parameter("bias", bias, false);
}

namespace {
thread_local bool g_autocast = false;
thread_local DType g_autocast_dtype = DType::F32;
thread_local const ComputeCopies* g_compute_copies = nullptr;
}  // namespace

AutocastScope::AutocastScope(DType dtype, bool active, const ComputeCopies* copies)
    : previous_(g_autocast_dtype), had_previous_(g_autocast), previous_copies_(g_compute_copies) {
  if (!active) return;
  g_autocast = true;
  g_autocast_dtype = dtype;
  g_compute_copies = copies;
}
AutocastScope::~AutocastScope() {
  g_autocast = had_previous_;
  g_autocast_dtype = previous_;
  g_compute_copies = previous_copies_;
}

Tensor compute(const Tensor& t) {
  if (!g_autocast) return t;
  if (g_compute_copies && t.dtype() != g_autocast_dtype) {
    const auto it = g_compute_copies->find(t.identity());
    if (it != g_compute_copies->end()) return cast(t, g_autocast_dtype, it->second);
  }
  return cast(t, g_autocast_dtype);
}

bool has_compute_copy(const Tensor& t) {
  return g_autocast && t.dtype() != g_autocast_dtype && compute_copy(t, g_autocast_dtype).defined();
}

Tensor compute_copy(const Tensor& t, DType dtype) {
  if (!g_autocast || !g_compute_copies || dtype != g_autocast_dtype) return {};
  const auto it = g_compute_copies->find(t.identity());
  return it != g_compute_copies->end() ? it->second : Tensor{};
}

Tensor Linear::forward(const Tensor& x, const Tensor& residual) const {
  SESSA_CHECK(x.size(-1) == in_features, "Linear",
              "input " << x.shape() << " has last dim " << x.size(-1) << ", layer expects " << in_features);
  return linear(compute(x), compute(weight), bias.defined() ? compute(bias) : Tensor{},
                residual.defined() ? compute(residual) : Tensor{});
}

std::vector<Tensor> Linear::forward_parts(const Tensor& x, const std::vector<int64_t>& sizes) const {
  SESSA_CHECK(x.size(-1) == in_features, "Linear",
              "input " << x.shape() << " has last dim " << x.size(-1) << ", layer expects " << in_features);
  const Tensor xc = compute(x);
  const std::vector<Tensor> w = split(compute(weight), 0, sizes);
  const std::vector<Tensor> b = bias.defined() ? split(compute(bias), 0, sizes) : std::vector<Tensor>(sizes.size());
  std::vector<Tensor> parts;
  for (size_t i = 0; i < sizes.size(); ++i) parts.push_back(linear(xc, w[i], b[i]));
  return parts;
}

LayerNorm::LayerNorm(int64_t dim, double eps_, TensorOptions topt) : eps(eps_) {
  weight = ones({dim}, topt);
  bias = zeros({dim}, topt);
  register_parameter("weight", weight, false);
  register_parameter("bias", bias, false);
}

Tensor LayerNorm::forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }

// The weight and bias gradients go straight into the parameters' .grad, and the input's
// into the residual stream's running gradient, when the engine hands them over
// (autograd/node.h: record_summing), instead of new tensors and an add each.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  auto out = ops::layer_norm(x, weight, bias, eps);
  return autograd::record_summing(
      "layer_norm", out.y, {x, weight, bias},
      [x = x.detach(), w = weight.detach(), mean = out.mean, rstd = out.rstd](const Tensor& g,
                                                                              const std::vector<Tensor>& sums) {
        auto grads = ops::layer_norm_backward(g, x, w, mean, rstd, {sums[0], sums[1], sums[2]});
        return std::vector<Tensor>{grads.dx, grads.dweight, grads.dbias};
      });
}

}  // namespace sessa::nn
