// model_flags.cpp - shared model-size flags (see model_flags.h).
#include "apps/common/model_flags.h"

#include <unistd.h>

#include <cstdio>

#include "apps/common/flags.h"
#include "sessa/model.h"
#include "tensor/error.h"

namespace sessa::apps {

void add_model_flags(CLI::App& app, ModelFlags& f) {
  constexpr int64_t kMaxWidth = 1 << 16, kMaxCount = 4096;
  app.add_option("--model", f.model, "Model family, one of\n" + nn::family_help())
      ->check(CLI::IsMember(nn::family_names()))
      ->capture_default_str();
  app.add_option("--preset", f.preset, "Size preset: tiny, small (GPT-2 small scale), medium (~350M)")
      ->check(CLI::IsMember(nn::preset_names()))
      ->capture_default_str();
  app.add_option("--d-model", f.d_model, "Override the model width")->check(positive_int(kMaxWidth));
  app.add_option("--layers", f.layers, "Override the number of layers")->check(positive_int(kMaxCount));
  app.add_option("--heads", f.heads, "Override the number of attention heads")->check(positive_int(kMaxCount));
  app.add_option("--kv-heads", f.kv_heads, "Key/value heads for grouped-query attention (0: same as --heads)")
      ->check(non_negative_int(kMaxCount));
  app.add_option(
         "--match-params", f.match_params,
         "Pick the layer count to match this family's parameter count at the same shape (" + nn::family_list() + ")")
      ->check(CLI::IsMember(nn::family_names()));
}

void check_block_fits(const nn::ModelConfig& c) {
  const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  const double block_bytes = 64.0 * double(c.d_model) * double(c.d_model);
  SESSA_CHECK(memory <= 0 || block_bytes < 0.5 * memory, "--d-model/--layers/--vocab",
              "--d-model " << c.d_model << " is too wide: one layer alone needs up to " << block_bytes / 1e9
                           << " GB, more than half of this machine's " << memory / 1e9 << " GB");
}

nn::ModelConfig model_config(const ModelFlags& f, int64_t vocab) {
  nn::ModelConfig c = nn::preset(f.model, f.preset, vocab);
  if (f.d_model > 0) c.d_model = f.d_model;
  if (f.layers > 0) c.n_layers = f.layers;
  if (f.heads > 0) c.n_heads = f.heads;
  if (f.kv_heads >= 0) c.n_kv_heads = f.kv_heads;
  c.validate();
  check_block_fits(c);
  if (!f.match_params.empty()) {
    nn::ModelConfig reference = c;
    reference.family = nn::family_from_name(f.match_params);
    reference.validate();
    const int64_t target = layer::parameter_count(reference);
    c = layer::match_parameters(c, target);
    std::printf("matched to %s (%.3fM parameters): %ld layers, %.3fM parameters\n", f.match_params.c_str(),
                double(target) / 1e6, long(c.n_layers), double(layer::parameter_count(c)) / 1e6);
  }
  return c;
}

}  // namespace sessa::apps
