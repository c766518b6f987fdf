#include "nn/optim.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "tensor/ops.h"

namespace sessa::nn {

AdamW::AdamW(ParameterBuffer& params, AdamWOptions opt, std::vector<Range> owned)
    : params_(params), opt_(opt), owned_(std::move(owned)) {
  if (owned_.empty()) owned_.push_back({0, params.numel()});
  int64_t n = 0;
  for (const Range& r : owned_) {
    SESSA_CHECK(r.begin >= 0 && r.begin <= r.end && r.end <= params.numel(), "AdamW",
                "owned range [" << r.begin << ", " << r.end << ") outside the buffer of " << params.numel());
    n += r.size();
  }
  m_ = zeros({n}, params.data().options());
  v_ = zeros({n}, params.data().options());
}

void AdamW::step(double lr, double grad_scale) {
  ++step_;
  auto update = [&](int64_t begin, int64_t end, int64_t state_at, double wd) {
    if (end <= begin) return;
    auto slice = [&](const Tensor& t, int64_t at) { return ops::narrow(t, 0, at, end - begin); };
    ops::adamw_step_(slice(params_.data(), begin), slice(params_.grad(), begin), slice(m_, state_at),
                     slice(v_, state_at), {lr, opt_.beta1, opt_.beta2, opt_.eps, wd, step_, grad_scale});
  };
  int64_t state_at = 0;
  for (const Range& r : owned_) {  // each range splits at most once, where decay ends
    const int64_t split = std::clamp(params_.decay_end(), r.begin, r.end);
    update(r.begin, split, state_at, opt_.weight_decay);
    update(split, r.end, state_at + (split - r.begin), opt_.decay_all ? opt_.weight_decay : 0.0);
    state_at += r.size();
  }
}

std::vector<Tensor> AdamW::owned_grads() const {
  std::vector<Tensor> out;
  for (const Range& r : owned_) out.push_back(ops::narrow(params_.grad(), 0, r.begin, r.size()));
  return out;
}

void AdamW::load_moments(const Tensor& full_m, const Tensor& full_v) {
  int64_t state_at = 0;
  for (const Range& r : owned_) {
    ops::copy_(ops::narrow(m_, 0, state_at, r.size()), ops::narrow(full_m, 0, r.begin, r.size()));
    ops::copy_(ops::narrow(v_, 0, state_at, r.size()), ops::narrow(full_v, 0, r.begin, r.size()));
    state_at += r.size();
  }
}

double cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
  if (total <= warmup) return peak;
  double progress = std::min(1.0, double(step - warmup) / double(total - warmup));
  double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

Tensor sum_of_squares(const std::vector<Tensor>& grads) {
  SESSA_CHECK(!grads.empty(), "sum_of_squares", "no gradients");
  Tensor total;
  for (const Tensor& g : grads) {
    Tensor sq = ops::sum_of_squares(g);
    total = total.defined() ? ops::add(total, sq) : sq;
  }
  return total;
}

double clip_factor(double norm, double max_norm) {
  return max_norm <= 0 || norm <= max_norm ? 1.0 : max_norm / (norm + 1e-6);
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  const double norm = std::sqrt(sum_of_squares(grads).item()), scale = clip_factor(norm, max_norm);
  if (scale != 1.0)
    for (const Tensor& g : grads) ops::add_(g, g, scale - 1.0);  // g *= scale, in place
  return norm;
}

}  // namespace sessa::nn
