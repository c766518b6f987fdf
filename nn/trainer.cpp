#include "nn/trainer.h"

#include "autograd/ops.h"
#include "tensor/cuda_hooks.h"

namespace sessa::nn {

TokenBatch to_device(const data::Batch& batch, Device device) {
  TensorOptions opt{DType::I32, device};
  return {from_vector(batch.inputs, {batch.B, batch.T}, opt), from_vector(batch.targets, {batch.B, batch.T}, opt)};
}

Trainer::Trainer(std::shared_ptr<LanguageModel> model, AdamWOptions opt, double grad_clip, DType compute_dtype)
    : model_(std::move(model)), optimizer_(model_->named_parameters(), opt), grad_clip_(grad_clip), compute_dtype_(compute_dtype) {}

StepResult Trainer::step(const std::vector<TokenBatch>& micro_batches, double lr) {
  SESSA_CHECK(!micro_batches.empty(), "Trainer::step", "no micro-batches");
  optimizer_.zero_grad();
  StepResult r;
  const double scale = 1.0 / double(micro_batches.size());
  AutocastScope autocast(compute_dtype_, compute_dtype_ != model_->embedding.dtype());
  for (const TokenBatch& b : micro_batches) {
    Tensor loss = model_->loss(b.ids, b.targets);
    autograd::backward(loss * scale);
    r.loss += loss.item() * scale;
  }
  r.grad_norm = clip_grad_norm(model_->parameters(), grad_clip_);
  optimizer_.step(lr);
  return r;
}

double Trainer::evaluate(data::TokenLoader& loader, int64_t batches) {
  autograd::NoGradGuard no_grad;
  AutocastScope autocast(compute_dtype_, compute_dtype_ != model_->embedding.dtype());
  double total = 0;
  data::Batch batch;
  for (int64_t i = 0; i < batches; ++i) {
    loader.next(batch);
    TokenBatch b = to_device(batch, model_->device());
    total += model_->loss(b.ids, b.targets).item();
  }
  return total / double(std::max<int64_t>(batches, 1));
}

double device_peak_flops(Device device, DType dtype) {
  if (!device.is_cuda()) return 0;
  std::string name;
  SESSA_CUDA_CALL(name = cuda::device_name(device.index));
  // NVIDIA H100/H200 SXM datasheet, dense: bf16 989 TFLOP/s, tf32 495 TFLOP/s.
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos)
    return dtype == DType::BF16 ? 989e12 : 495e12;
  return 0;
}

}  // namespace sessa::nn
