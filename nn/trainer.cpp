#include "nn/trainer.h"

#include <cmath>

#include "autograd/ops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::nn {

TokenBatch to_device(const data::Batch& batch, Device device) {
  TensorOptions opt{DType::I32, device};
  return {from_vector(batch.inputs, {batch.B, batch.T}, opt), from_vector(batch.targets, {batch.B, batch.T}, opt)};
}

Trainer::Trainer(std::shared_ptr<LanguageModel> model, TrainerOptions options)
    : model_(std::move(model)),
      options_(std::move(options)),
      buffer_(std::make_unique<ParameterBuffer>(model_->named_parameters(), options_.layout)),
      sync_(options_.data_parallel ? options_.data_parallel(*buffer_) : nullptr),
      optimizer_(
          std::make_unique<AdamW>(*buffer_, options_.adamw, sync_ ? sync_->owned_ranges() : std::vector<Range>{})) {}

StepResult Trainer::step(const std::vector<TokenBatch>& micro_batches, double lr) {
  SESSA_CHECK(!micro_batches.empty(), "Trainer::step", "no micro-batches");
  buffer_->zero_grad();
  const int replicas = sync_ ? sync_->replicas() : 1;
  const double scale = 1.0 / double(micro_batches.size() * size_t(replicas));
  AutocastScope autocast(options_.compute_dtype, mixed_precision(), compute_copies());
  Tensor loss_sum;  // on the device: read once per step
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const TokenBatch& mb = micro_batches[i];
    Tensor loss = options_.loss ? options_.loss(*model_, mb) : model_->loss(mb.ids, mb.targets);
    // Gradients are communicated only once, during the backward of the last micro-batch.
    const bool last = i + 1 == micro_batches.size();
    autograd::backward(loss * scale, {}, sync_ && last ? sync_->on_gradient_ready() : autograd::LeafReadyHook{});
    loss_sum = loss_sum.defined() ? ops::add(loss_sum, loss.detach()) : loss.detach();
  }
  if (sync_) sync_->finish_gradients();

  const std::vector<Tensor> grads = optimizer_->owned_grads();
  Tensor squares = sum_of_squares(grads);
  if (sync_) sync_->sum_over_shards_(squares);
  StepResult r;
  r.grad_norm = std::sqrt(squares.item());
  r.loss = loss_sum.item() / double(micro_batches.size());
  if (sync_) r.loss = sync_->average(r.loss);
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    // Skip the update: the weights and the AdamW moments (and its step count) stay as they were.
    r.skipped = true;
    ++bad_steps_in_a_row_;
    SESSA_CHECK(bad_steps_in_a_row_ < options_.max_bad_steps, "training diverged",
                bad_steps_in_a_row_ << " steps in a row had a non-finite loss or gradient norm (last: loss " << r.loss
                                    << ", gradient norm " << r.grad_norm
                                    << "); their updates were skipped, so the weights are those of the last good "
                                       "step. Resume from an earlier checkpoint with a lower --lr (or --grad-clip)");
    return r;
  }
  bad_steps_in_a_row_ = 0;
  optimizer_->step(lr, clip_factor(r.grad_norm, options_.grad_clip));  // clipped inside the update
  if (sync_) sync_->after_step();
  return r;
}

const ComputeCopies* Trainer::compute_copies() {
  return mixed_precision() ? &buffer_->refresh_compute_copies(options_.compute_dtype) : nullptr;
}

bool all_finite(const Tensor& t) { return std::isfinite(ops::sum_of_squares(t).item()); }

OptimizerState Trainer::optimizer_state() {
  auto full = [&](const Tensor& owned) { return sync_ ? sync_->gather_owned(owned) : owned; };
  return {buffer_.get(), full(optimizer_->m()), full(optimizer_->v()), optimizer_->steps_taken()};
}

void Trainer::load_optimizer_state(const Checkpoint& ckpt) {
  OptimizerState state = read_optimizer_state(ckpt, *buffer_);
  optimizer_->load_moments(state.m, state.v);
  optimizer_->set_steps_taken(state.steps);
}

double Trainer::evaluate(data::TokenLoader& loader, int64_t batches) {
  autograd::NoGradGuard no_grad;
  AutocastScope autocast(options_.compute_dtype, mixed_precision(), compute_copies());
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
