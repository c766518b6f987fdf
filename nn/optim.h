// AdamW with decoupled weight decay over a ParameterBuffer (a multi-tensor update:
// one fused launch per contiguous run of elements, not one per parameter), the
// cosine learning-rate schedule with linear warm-up, and global-norm gradient
// clipping.
#pragma once
#include <vector>

#include "nn/parameter_buffer.h"

namespace sessa::nn {

struct AdamWOptions {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  bool decay_all = false;  // also decay biases, norms, gains and embeddings
};

class AdamW {
 public:
  // Updates the elements `owned` of `params` from params.grad(): the whole buffer by
  // default, or this rank's ZeRO-1 shard under data parallelism. The moments m and v
  // hold exactly the owned elements, range after range.
  AdamW(ParameterBuffer& params, AdamWOptions opt, std::vector<Range> owned = {});
  // One update at learning rate lr from grad_scale times the stored gradient (the clipping
  // factor, nn::clip_factor; the gradient itself is left as it is).
  void step(double lr, double grad_scale = 1.0);
  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  const AdamWOptions& options() const { return opt_; }

  const std::vector<Range>& owned() const { return owned_; }
  // Views of the gradient over the owned ranges (what clipping measures).
  std::vector<Tensor> owned_grads() const;
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }
  // Takes the owned elements of moments laid out like the parameter buffer (a checkpoint).
  void load_moments(const Tensor& full_m, const Tensor& full_v);

 private:
  ParameterBuffer& params_;
  AdamWOptions opt_;
  std::vector<Range> owned_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

// lr at `step` (0-based): linear warm-up over `warmup` steps to `peak`, then a
// cosine decay to min_ratio * peak at `total`.
double cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio = 0.1);

// Sum of squares of all elements of `grads` (pieces of one gradient vector), as a
// 0-d float64 tensor on their device: nothing is read back to the host.
Tensor sum_of_squares(const std::vector<Tensor>& grads);
// The factor that brings a gradient of L2 norm `norm` to at most max_norm (1 when max_norm
// <= 0 or norm <= max_norm): AdamW::step's grad_scale, so the clipped gradient is never stored.
double clip_factor(double norm, double max_norm);
// Scales `grads` in place by clip_factor of their norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

}  // namespace sessa::nn
