#include "nn/optim.h"

#include <cmath>
#include <numbers>

#include "tensor/ops.h"

namespace sessa::nn {

AdamW::AdamW(std::vector<NamedParameter> params, AdamWOptions opt) : opt_(opt) {
  for (auto& p : params) {
    Tensor m = zeros(p.tensor->shape(), p.tensor->options()), v = zeros(p.tensor->shape(), p.tensor->options());
    slots_.push_back({std::move(p), m, v});
  }
}

void AdamW::step(double lr) {
  ++step_;
  for (auto& s : slots_) {
    Tensor g = s.param.tensor->grad();
    if (!g.defined()) continue;
    double wd = (s.param.weight_decay || opt_.decay_all) ? opt_.weight_decay : 0.0;
    ops::adamw_step_(*s.param.tensor, g, s.m, s.v, {lr, opt_.beta1, opt_.beta2, opt_.eps, wd, step_});
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_) {
    Tensor g = s.param.tensor->grad();
    if (g.defined()) ops::fill_(g, 0.0);
  }
}

double cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
  if (total <= warmup) return peak;
  double progress = std::min(1.0, double(step - warmup) / double(total - warmup));
  double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  Tensor total;  // summed on the device: one host read for the whole model
  for (const Tensor& p : params)
    if (p.grad().defined()) {
      Tensor sq = ops::sum_of_squares(p.grad());
      total = total.defined() ? ops::add(total, sq) : sq;
    }
  const double norm = total.defined() ? std::sqrt(total.item()) : 0.0;
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const Tensor& p : params)
      if (p.grad().defined()) ops::add_(p.grad(), p.grad(), scale - 1.0);  // g *= scale, in place
  }
  return norm;
}

}  // namespace sessa::nn
