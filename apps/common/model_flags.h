// model_flags.h - the model-size flags every training app shares (--model, --preset,
// --d-model, --layers, --heads, --kv-heads, --match-params) and the ModelConfig they mean.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "nn/config.h"

namespace sessa::apps {

struct ModelFlags {
  std::string model = "sessa", preset = "tiny", match_params;
  int64_t d_model = 0, layers = 0, heads = 0, kv_heads = -1;  // 0 / -1: the preset's
};

void add_model_flags(CLI::App& app, ModelFlags& f);

// The preset of the family with the overrides; with --match-params FAMILY, the layer
// count whose parameter count is closest to that family's model of the same shape
// (printed; counting allocates nothing, so any width is fine). Throws naming the flag
// at fault. Whether the model fits in memory is the app's check (train: check_fits_in_memory).
nn::ModelConfig model_config(const ModelFlags& f, int64_t vocab);

}  // namespace sessa::apps
