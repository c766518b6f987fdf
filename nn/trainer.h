// One optimisation step of a language model, shared by apps/train and apps/bench:
// forward and backward of each micro-batch (loss / micro-steps, so gradients
// accumulate to the mean), global-norm clipping, then AdamW. The parameters live
// in one ParameterBuffer; with a GradientSync (dist/) the step is data-parallel.
//
// Divergence guard: a step whose loss or gradient norm is not finite is skipped
// before the optimizer touches the weights or its moments (StepResult::skipped);
// after TrainerOptions::max_bad_steps such steps in a row, step() throws. Both
// numbers are the same on every replica (averaged / summed over them), so the
// replicas always agree on skipping.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "data/loader.h"
#include "nn/checkpoint.h"
#include "nn/gradient_sync.h"
#include "nn/lm.h"
#include "nn/optim.h"

namespace sessa::nn {

struct TokenBatch {
  Tensor ids, targets;  // int32 (B, T) on the model's device
};
TokenBatch to_device(const data::Batch& batch, Device device);

struct StepResult {
  double loss = 0;       // mean over the micro-batches (and replicas)
  double grad_norm = 0;  // before clipping
  bool skipped = false;  // loss or gradient norm not finite: no update was applied
};

struct TrainerOptions {
  AdamWOptions adamw{};
  double grad_clip = 1.0;  // 0: off
  // bf16: mixed precision (float32 master weights, bf16 activations).
  DType compute_dtype = DType::F32;
  ParameterLayout layout{};  // buckets; shards = replicas for ZeRO-1
  // Consecutive non-finite steps tolerated (each skipped) before step() throws.
  int64_t max_bad_steps = 3;
  // Makes the data-parallel gradient synchronisation over the parameter buffer
  // (empty: a single process).
  std::function<std::unique_ptr<GradientSync>(ParameterBuffer&)> data_parallel{};
  // The loss of one micro-batch (empty: model.loss(ids, targets), next-token cross-entropy);
  // e.g. apps/symbolsoup scores only the label position and counts correct classes.
  std::function<Tensor(LanguageModel&, const TokenBatch&)> loss{};
};

class Trainer {
 public:
  Trainer(std::shared_ptr<LanguageModel> model, TrainerOptions options);
  // Throws sessa::Error after max_bad_steps consecutive skipped steps.
  StepResult step(const std::vector<TokenBatch>& micro_batches, double lr);
  // Mean loss over `batches` batches from `loader`, without gradients.
  double evaluate(data::TokenLoader& loader, int64_t batches);

  // The optimizer state for a checkpoint (a collective under ZeRO-1: call on every rank).
  OptimizerState optimizer_state();
  void load_optimizer_state(const Checkpoint& ckpt);

  LanguageModel& model() { return *model_; }
  const ParameterBuffer& parameters() const { return *buffer_; }
  AdamW& optimizer() { return *optimizer_; }

 private:
  std::shared_ptr<LanguageModel> model_;
  TrainerOptions options_;
  std::unique_ptr<ParameterBuffer> buffer_;
  std::unique_ptr<GradientSync> sync_;
  std::unique_ptr<AdamW> optimizer_;
  int64_t bad_steps_in_a_row_ = 0;

  bool mixed_precision() const { return options_.compute_dtype != model_->embedding.dtype(); }
  // Mixed precision: the parameters converted once for this step (ParameterBuffer), else null.
  const ComputeCopies* compute_copies();
};

// True when every element of `t` is finite (one float64 sum of squares, which
// cannot overflow for finite float32 or bf16 values). Checkpoints are checked with it.
bool all_finite(const Tensor& t);

// Dense peak FLOP/s of the device for matrix products in `dtype` (0 when unknown):
// used to report model FLOPs utilisation (MFU).
double device_peak_flops(Device device, DType dtype);

}  // namespace sessa::nn
