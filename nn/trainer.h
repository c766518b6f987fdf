// One optimisation step of a language model, shared by apps/train and apps/bench:
// forward and backward of each micro-batch (loss / micro-steps, so gradients
// accumulate to the mean), global-norm clipping, then AdamW.
#pragma once
#include <memory>
#include <vector>

#include "data/loader.h"
#include "nn/lm.h"
#include "nn/optim.h"

namespace sessa::nn {

struct TokenBatch {
  Tensor ids, targets;  // int32 (B, T) on the model's device
};
TokenBatch to_device(const data::Batch& batch, Device device);

struct StepResult {
  double loss = 0;       // mean over the micro-batches
  double grad_norm = 0;  // before clipping
};

class Trainer {
 public:
  // compute_dtype bf16: mixed precision (float32 master weights, bf16 activations).
  Trainer(std::shared_ptr<LanguageModel> model, AdamWOptions opt, double grad_clip, DType compute_dtype = DType::F32);
  StepResult step(const std::vector<TokenBatch>& micro_batches, double lr);
  // Mean loss over `batches` batches from `loader`, without gradients.
  double evaluate(data::TokenLoader& loader, int64_t batches);

  LanguageModel& model() { return *model_; }
  AdamW& optimizer() { return optimizer_; }

 private:
  std::shared_ptr<LanguageModel> model_;
  AdamW optimizer_;
  double grad_clip_;
  DType compute_dtype_;
};

// Dense peak FLOP/s of the device for matrix products in `dtype` (0 when unknown):
// used to report model FLOPs utilisation (MFU).
double device_peak_flops(Device device, DType dtype);

}  // namespace sessa::nn
