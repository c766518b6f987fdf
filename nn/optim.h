// AdamW with decoupled weight decay, the cosine learning-rate schedule with
// linear warm-up, and global-norm gradient clipping.
#pragma once
#include <vector>

#include "nn/module.h"

namespace sessa::nn {

struct AdamWOptions {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  bool decay_all = false;  // also decay biases, norms, gains and embeddings
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, AdamWOptions opt);
  // Applies one update with learning rate `lr` to every parameter that has a grad.
  void step(double lr);
  void zero_grad();  // zeroes gradient buffers in place (keeps them allocated)
  int64_t steps_taken() const { return step_; }

  // State for checkpoints: moments per parameter, in parameter order.
  struct Slot {
    NamedParameter param;
    Tensor m, v;
  };
  std::vector<Slot>& slots() { return slots_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  const AdamWOptions& options() const { return opt_; }

 private:
  std::vector<Slot> slots_;
  AdamWOptions opt_;
  int64_t step_ = 0;
};

// lr at `step` (0-based): linear warm-up over `warmup` steps to `peak`, then a
// cosine decay to min_ratio * peak at `total`.
double cosine_lr(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio = 0.1);

// Scales all gradients so their global L2 norm is at most max_norm (when > 0);
// returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace sessa::nn
