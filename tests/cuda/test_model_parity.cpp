// Whole-model parity: one training step of each tiny LM on the CPU and on the GPU
// (same seed, so the same initial weights) gives the same loss and gradients in
// float32, and stays within a stated tolerance in bf16 mixed precision; each family trains
// in bf16, every step on its current weights.
#include <doctest/doctest.h>

#include "autograd/ops.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/cuda/parity.h"

using namespace sessa;
using namespace sessa::layer;  // sessa/: build_model, SessaLayer, the feedback solve, influence, memory
using sessa::test::gpu;
using sessa::test::max_rel_diff;

namespace {

nn::ModelConfig tiny(const std::string& family) {
  nn::ModelConfig c = nn::preset(family, "tiny", 50);
  c.d_model = 32;
  c.n_heads = 2;
  c.mamba_d_state = 4;
  return c;
}

data::Batch random_batch(int64_t B, int64_t T, int64_t vocab, Generator& gen) {
  data::Batch b{B, T, {}, {}};
  for (double v : uniform({B, T}, 0, double(vocab) - 1e-9, gen, {DType::F64}).to_vector<double>())
    b.inputs.push_back(int32_t(v));
  for (double v : uniform({B, T}, 0, double(vocab) - 1e-9, gen, {DType::F64}).to_vector<double>())
    b.targets.push_back(int32_t(v));
  return b;
}

struct StepOutcome {
  double loss;
  std::vector<Tensor> grads;
};
StepOutcome one_step(nn::LanguageModel& model, const data::Batch& batch, DType compute) {
  nn::TokenBatch b = nn::to_device(batch, model.device());
  nn::AutocastScope autocast(compute, compute != DType::F32);
  Tensor loss = model.loss(b.ids, b.targets);
  autograd::backward(loss);
  StepOutcome out{loss.item(), {}};
  for (const Tensor& p : model.parameters()) out.grads.push_back(p.grad().to(Device::cpu()).to(DType::F64));
  return out;
}

}  // namespace

TEST_CASE("one training step: CPU and GPU agree (fp32), and bf16 stays close") {
  test::NoTf32 exact;
  for (const std::string family : {"sessa", "transformer", "mamba"}) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    Generator gen(11);
    data::Batch batch = random_batch(3, 37, c.vocab_size, gen);  // odd batch, T not a multiple of any tile
    auto cpu_model = build_model(c, 5), gpu_model = build_model(c, 5, {DType::F32, gpu()});
    auto cp = cpu_model->parameters(), gp = gpu_model->parameters();
    for (size_t i = 0; i < cp.size(); ++i) CHECK(cp[i].to_vector<float>() == gp[i].to_vector<float>());  // same init

    StepOutcome ref = one_step(*cpu_model, batch, DType::F32);
    StepOutcome fp32 = one_step(*gpu_model, batch, DType::F32);
    CHECK(std::abs(fp32.loss - ref.loss) / ref.loss < 1e-5);
    auto names = cpu_model->named_parameters();
    for (size_t i = 0; i < ref.grads.size(); ++i) {
      CAPTURE(names[i].name);
      CHECK(max_rel_diff(fp32.grads[i], ref.grads[i]) < 1e-4);
    }
    // bf16 mixed precision: loss within 2%, each gradient within 10% of its largest entry.
    for (const Tensor& p : gp) p.set_grad({});
    StepOutcome bf16 = one_step(*gpu_model, batch, DType::BF16);
    CHECK(std::abs(bf16.loss - ref.loss) / ref.loss < 2e-2);
    for (size_t i = 0; i < ref.grads.size(); ++i) {
      CAPTURE(names[i].name);
      CHECK(max_rel_diff(bf16.grads[i], ref.grads[i]) < 1e-1);
    }
  }
}

TEST_CASE("each family trains on the GPU in bf16: loss falls on a fixed batch") {
  for (const std::string family : {"sessa", "transformer", "mamba"}) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    auto model = build_model(c, 6, {DType::F32, gpu()});
    nn::Trainer trainer(model, {.adamw = {.lr = 3e-3, .weight_decay = 0.0}, .compute_dtype = DType::BF16});
    Generator gen(12);
    std::vector<nn::TokenBatch> batch{nn::to_device(random_batch(4, 32, c.vocab_size, gen), gpu())};
    double first = trainer.step(batch, 3e-3).loss, last = first;
    for (int i = 0; i < 60; ++i) {
      if (i % 20 != 0) {
        last = trainer.step(batch, 3e-3).loss;
        continue;
      }
      // The step runs on the current weights: its compute copy (every parameter converted to
      // bf16 once per step) is refreshed, so its loss is the plain autocast one.
      double plain;
      {
        autograd::NoGradGuard no_grad;
        nn::AutocastScope autocast(DType::BF16);
        plain = model->loss(batch[0].ids, batch[0].targets).item();
      }
      last = trainer.step(batch, 3e-3).loss;
      CHECK(std::abs(last - plain) <= 1e-6 * plain);
    }
    MESSAGE(family << " bf16 loss " << first << " -> " << last);
    CHECK(last < 0.5 * first);
  }
}
