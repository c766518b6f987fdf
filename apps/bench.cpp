// apps/bench: times full training steps (forward, backward, clipping, AdamW) of a
// model on random tokens and prints median ms/step, tokens/s, MFU and peak memory.
//
//   bench --model sessa --preset small --batch 16 --seq-len 1024 --dtype bf16
//   mpirun -np 2 bench ...   data parallel: --batch per rank, tokens/s of the whole job
// On the CPU a model and batch past the machine's memory are refused before any work,
// naming the flags (apps/common/memory_check.h, the bound train uses).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/memory_check.h"
#include "apps/common/model_flags.h"
#include "dist/data_parallel.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tensor/cuda_hooks.h"

using namespace sessa;

namespace {

struct Flags {
  apps::ModelFlags model;  // --model, --preset (default small here), --d-model, --layers, ...
  std::string device = "auto", dtype = "fp32";
  int64_t batch = 16, seq_len = 1024, warmup = 3, steps = 10, vocab = 50304;
  bool zero1 = false, count_params = false;
};

void add_flags(CLI::App& app, Flags& f) {
  using namespace apps;
  f.model.preset = "small";  // bench times a GPT-2-small-sized model unless told otherwise
  add_model_flags(app, f.model);
  app.add_option("--vocab", f.vocab, "Vocabulary size")->check(whole_number(2, 1 << 24))->capture_default_str();
  app.add_option("--batch", f.batch, "Sequences per step (per rank under mpirun)")
      ->check(positive_int(1 << 20))
      ->capture_default_str();
  app.add_option("--seq-len", f.seq_len, "Tokens per sequence")->check(positive_int(1 << 20))->capture_default_str();
  app.add_option("--warmup", f.warmup, "Untimed steps first")
      ->check(non_negative_int(1'000'000))
      ->capture_default_str();
  app.add_option("--steps", f.steps, "Timed steps (the median is reported)")
      ->check(positive_int(1'000'000))
      ->capture_default_str();
  app.add_option("--device", f.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", f.dtype, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  app.add_flag("--zero1", f.zero1, "Under mpirun: shard the optimizer state over the ranks (ZeRO stage 1)");
  app.add_flag("--count-params", f.count_params, "Print the model's exact parameter count and exit (no training)");
}

data::Batch random_batch(int64_t B, int64_t T, int64_t vocab, Generator& gen) {
  data::Batch b{B, T, {}, {}};
  std::vector<double> u = uniform({B, T + 1}, 0, double(vocab) - 1e-6, gen, {DType::F64}).to_vector<double>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < T; ++t) {
      b.inputs.push_back(int32_t(u[size_t(r * (T + 1) + t)]));
      b.targets.push_back(int32_t(u[size_t(r * (T + 1) + t + 1)]));
    }
  return b;
}

int run(const Flags& f, dist::World& world) {
  const nn::ModelConfig config = apps::model_config(f.model, f.vocab);
  if (f.count_params) {  // the exact count, e.g. for bench/torch_models.py --check-params
    if (world.rank() == 0) std::printf("%ld\n", long(layer::parameter_count(config)));
    return 0;
  }
  const Device device = dist::device_for_rank(world, f.device);
  const DType dtype = dtype_from_name(f.dtype);
  SESSA_CHECK(dtype == DType::F32 || device.is_cuda(), "--dtype", "bf16 mixed precision needs --device cuda");
  apps::check_fits_in_memory(config, f.batch, f.seq_len, device);  // refused naming the flags, before building
  apps::set_activity("building the model");
  auto model = layer::build_model(config, 1, {DType::F32, device});
  nn::TrainerOptions topt{.compute_dtype = dtype};
  dist::enable_data_parallel(topt, world, device, f.zero1);
  nn::Trainer trainer(model, topt);
  Generator gen(7 + uint64_t(world.rank()));  // each rank its own tokens
  apps::set_activity("making a batch of " + std::to_string(f.batch) + " x " + std::to_string(f.seq_len) +
                     " random tokens");
  std::vector<nn::TokenBatch> batch{nn::to_device(random_batch(f.batch, f.seq_len, f.vocab, gen), device)};

  apps::set_activity("running training steps at batch " + std::to_string(f.batch) + " x " + std::to_string(f.seq_len) +
                     " tokens");
  std::vector<double> ms;
  for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
    if (i == f.warmup && device.is_cuda()) SESSA_CUDA_CALL(cuda::reset_peak_memory(device.index));
    auto t0 = std::chrono::steady_clock::now();
    trainer.step(batch, 1e-4);  // ends by reading the loss: the device work is done
    if (i >= f.warmup)
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double tokens = double(f.batch * f.seq_len * world.size()), tps = tokens / (median / 1e3);
  const double peak = nn::device_peak_flops(device, dtype) * world.size();
  const double mfu = peak > 0 ? layer::train_flops_per_token(config, f.seq_len) * tps / peak : 0;
  double peak_gib = 0;
  if (device.is_cuda()) SESSA_CUDA_CALL(peak_gib = double(cuda::peak_memory(device.index)) / double(1ull << 30));
  if (world.rank() != 0) return 0;  // rank 0 reports for the job (its peak memory stands for each GPU)
  std::printf(
      "%-11s %-6s %3ld layers  B=%-3ld T=%-5ld %-5s %-7s x%d%s | %9.2f ms/step (min %.2f, max %.2f) | %9.0f tok/s | "
      "MFU %5.1f%% | peak %6.2f GiB | %.1fM params\n",
      f.model.model.c_str(), f.model.preset.c_str(), long(config.n_layers), long(f.batch), long(f.seq_len),
      f.dtype.c_str(), device.str().c_str(), world.size(), f.zero1 ? " zero1" : "", median, ms.front(), ms.back(), tps,
      100 * mfu, peak_gib, double(model->parameter_count()) / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"Time full training steps of a model on random tokens."};
  add_flags(app, f);
  return apps::run_app("bench", app, argc, argv, [&](dist::World& world) { return run(f, world); });
}
