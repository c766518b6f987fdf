// model_flags.cpp - shared model-size flags (see model_flags.h).
#include "apps/common/model_flags.h"

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

nn::ModelConfig model_config(const ModelFlags& f, int64_t vocab) {
  nn::ModelConfig c = nn::preset(f.model, f.preset, vocab);
  if (f.d_model > 0) c.d_model = f.d_model;
  if (f.layers > 0) c.n_layers = f.layers;
  if (f.heads > 0) c.n_heads = f.heads;
  if (f.kv_heads >= 0) c.n_kv_heads = f.kv_heads;
  c.validate();
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
