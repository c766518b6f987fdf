// tests/fuzz/fuzz_train_flags.cpp - libFuzzer target: the command line of apps/train.
// The input, split on '\n', is argv; it goes through train's own CLI11 app
// (apps/train_flags.h add_flags) and, when CLI11 accepts it, through the checks the
// app runs before any work (the model configuration, the memory bound). A
// CLI::ParseError or a sessa::Error is a clean refusal; anything else escaping
// (std::out_of_range from a conversion, std::bad_alloc, ...) aborts as a crash.
// Properties of an accepted command line: every count is in its documented range
// and every float is finite.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "apps/common/memory_check.h"
#include "apps/train_flags.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  std::vector<std::string> args{"train"};
  std::string current;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') {
      args.push_back(current), current.clear();
    } else {
      current.push_back(char(data[i]));
    }
  }
  if (!current.empty()) args.push_back(current);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());

  using namespace sessa::apps::train;
  Flags f;
  CLI::App app{"train (fuzz)"};
  add_flags(app, f);
  bool parsed = false;
  try {
    app.parse(int(argv.size()), argv.data());
    parsed = true;
  } catch (const CLI::ParseError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: CLI parse: an exception other than CLI::ParseError escaped: %s\n", e.what());
    std::abort();
  }
  if (!parsed) return 0;
  sessa::fuzz::require(f.batch > 0 && f.seq_len > 0 && f.steps > 0 && f.accum > 0, "counts are positive");
  sessa::fuzz::require(f.warmup >= 0 && f.ckpt_every >= 0 && f.eval_every >= 0, "intervals are non-negative");
  sessa::fuzz::require(f.model.d_model >= 0 && f.model.layers >= 0 && f.model.heads >= 0 && f.model.kv_heads >= -1,
                       "overrides in range");
  sessa::fuzz::require(std::isfinite(f.lr) && f.lr > 0, "--lr is finite and positive");
  sessa::fuzz::require(std::isfinite(f.weight_decay) && f.weight_decay >= 0, "--weight-decay is finite");
  sessa::fuzz::require(std::isfinite(f.grad_clip) && f.grad_clip >= 0, "--grad-clip is finite");
  sessa::fuzz::require(std::isfinite(f.bucket_mb) && f.bucket_mb > 0, "--bucket-mb is finite and positive");
  sessa::fuzz::require(f.threads >= 0, "--threads is not negative");
  sessa::fuzz::expect_clean("train's checks of the flags", [&] {
    const sessa::nn::ModelConfig c = sessa::apps::model_config(f.model, f.vocab);
    sessa::apps::check_fits_in_memory(c, f.batch, f.seq_len, sessa::Device::cpu());
  });
  return 0;
}
