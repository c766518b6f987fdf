// apps/train_flags.h - The flags of apps/train and the check it runs on them before
// any work beyond apps::model_config: CLI11 options with their validators
// (apps/common/flags.h, model_flags.h) and the memory bound. Shared by apps/train.cpp
// and the CLI fuzz target (tests/fuzz/fuzz_train_flags.cpp).
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <string>

#include "apps/common/flags.h"
#include "apps/common/model_flags.h"
#include "nn/family.h"
#include "sessa/model.h"
#include "tensor/device.h"
#include "tensor/error.h"

namespace sessa::apps::train {

struct Flags {
  apps::ModelFlags model;  // --model, --preset, --d-model, --layers, --heads, --kv-heads, --match-params
  int64_t vocab = 257;
  std::string data, val_data, out, resume;
  int64_t batch = 16, seq_len = 128, steps = 1000, warmup = 50, accum = 1;
  double lr = 3e-3, weight_decay = 0.1, grad_clip = 1.0;
  std::string device = "auto", dtype = "fp32";
  uint64_t seed = 1337;
  int64_t ckpt_every = 500, eval_every = 100, eval_batches = 20, log_every = 10, max_bad_steps = 3;
  int threads = 0;
  bool zero1 = false;
  double bucket_mb = 32;
};

inline void add_flags(CLI::App& app, Flags& f) {
  constexpr int64_t kMaxSteps = 1'000'000'000'000;
  add_model_flags(app, f.model);
  app.add_option("--vocab", f.vocab, "Vocabulary size (257 for byte-level data, 50304 for GPT-2 shards)")
      ->check(whole_number(2, 1 << 24))
      ->capture_default_str();
  app.add_option("--data", f.data,
                 "Training shards: files, globs (comma-separated), or a directory holding train.bin/val.bin (required "
                 "unless --resume)");
  app.add_option("--val-data", f.val_data, "Validation shards (default: val.bin beside --data when it is a directory)");
  app.add_option("--batch", f.batch, "Sequences per micro-batch")->check(positive_int(1 << 20))->capture_default_str();
  app.add_option("--seq-len", f.seq_len, "Tokens per sequence")->check(positive_int(1 << 20))->capture_default_str();
  app.add_option("--steps", f.steps, "Optimizer steps in total")->check(positive_int(kMaxSteps))->capture_default_str();
  app.add_option("--lr", f.lr, "Peak learning rate")->check(finite_positive(10))->capture_default_str();
  app.add_option("--warmup", f.warmup, "Linear warm-up steps before the cosine decay")
      ->check(non_negative_int(kMaxSteps))
      ->capture_default_str();
  app.add_option("--weight-decay", f.weight_decay, "AdamW decoupled weight decay (matrices only)")
      ->check(finite_non_negative(100))
      ->capture_default_str();
  app.add_option("--grad-clip", f.grad_clip, "Clip the global gradient norm to this (0: off)")
      ->check(finite_non_negative(1e6))
      ->capture_default_str();
  app.add_option("--accum", f.accum, "Gradient accumulation: micro-batches per optimizer step")
      ->check(positive_int(1 << 16))
      ->capture_default_str();
  app.add_option("--device", f.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", f.dtype, "fp32, or bf16 mixed precision (CUDA)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the initialisation and of the data order")
      ->check(seed_number())
      ->capture_default_str();
  app.add_option("--out", f.out, "Run directory for checkpoints, log.csv and loss.svg (default runs/<model>-<preset>)");
  app.add_option("--ckpt-every", f.ckpt_every, "Checkpoint every N steps (and always at the end; 0: only at the end)")
      ->check(non_negative_int(kMaxSteps))
      ->capture_default_str();
  app.add_option("--resume", f.resume, "Continue the run in this directory (or from this checkpoint file)")
      ->check(existing_path());
  app.add_option("--eval-every", f.eval_every, "Validation every N steps (0: only at the end)")
      ->check(non_negative_int(kMaxSteps))
      ->capture_default_str();
  app.add_option("--eval-batches", f.eval_batches, "Batches per validation")
      ->check(positive_int(1'000'000))
      ->capture_default_str();
  app.add_option("--log-every", f.log_every, "Print a progress line every N steps (every step on a terminal)")
      ->check(positive_int(kMaxSteps))
      ->capture_default_str();
  app.add_option("--max-bad-steps", f.max_bad_steps,
                 "Stop the run after this many steps in a row with a non-finite loss or gradient norm (each is "
                 "skipped without updating the weights)")
      ->check(positive_int(1'000'000))
      ->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads (default: all cores)")->check(thread_count());
  app.add_flag("--zero1", f.zero1, "Under mpirun: shard the optimizer state over the ranks (ZeRO stage 1)");
  app.add_option("--bucket-mb", f.bucket_mb,
                 "Under mpirun: gradients are reduced in buckets of about this many MiB, overlapping backward")
      ->check(finite_positive(1 << 20))
      ->capture_default_str();
}

// Refuses a configuration whose weights, gradients, AdamW moments and logits alone
// (a lower bound of what training needs) exceed this machine's memory, naming the
// flags, instead of failing later with an out-of-memory error.
inline void check_fits_in_memory(const nn::ModelConfig& c, const Flags& f, Device device) {
  const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  const double params = double(layer::parameter_count(c));
  const double bytes = 16 * params + 8.0 * double(f.batch) * double(f.seq_len) * double(c.vocab_size);
  SESSA_CHECK(params < 1e11, "--d-model/--layers/--vocab",
              c.summary() << " has " << params / 1e9 << "B parameters: more than this engine trains (100B)");
  if (device.is_cuda()) return;  // device memory is checked by the allocator, with its own message
  SESSA_CHECK(memory <= 0 || bytes < memory, "--d-model/--layers/--vocab/--batch/--seq-len",
              c.summary() << " (" << params / 1e6 << "M parameters) at batch " << f.batch << " x " << f.seq_len
                          << " tokens needs at least " << bytes / 1e9 << " GB for weights, gradients, AdamW moments "
                          << "and logits, more than this machine's " << memory / 1e9 << " GB");
}

}  // namespace sessa::apps::train
