// ModelConfig: everything needed to rebuild a model, stored as JSON in a
// checkpoint's __metadata__ so a checkpoint means the same model everywhere.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/json_fields.h"
#include "nn/family.h"

namespace sessa::nn {

struct ModelConfig {
  Family family = Family::sessa;  // stored by name (nn/family.h)
  int64_t vocab_size = 257;
  int64_t d_model = 64, n_layers = 2, n_heads = 4, n_kv_heads = 0;  // n_kv_heads 0: = n_heads
  bool rope = true;
  double gamma_max = 0.999;                                        // Sessa
  int64_t mamba_expand = 2, mamba_d_state = 16, mamba_d_conv = 4;  // Mamba

  data::Json to_json() const;
  // Throws naming `where` ("checkpoint X: metadata 'config'") and the missing/bad key.
  static ModelConfig from_json(const data::Json& j, const std::string& where = "model config");
  void validate() const;        // throws naming the bad field
  std::string summary() const;  // one line for logs
};

// Named presets, one shape for every family: tiny (D 64, 2 layers, 4 heads),
// small (GPT-2 small scale: D 768, 12 layers, 12 heads), medium (~350M scale:
// D 1024, 24 layers, 16 heads). `family` by name (an unknown one throws, listing them).
// Parameter counts, matched sizes and FLOPs (from the shapes, nothing built): sessa/model.h.
const std::vector<std::string>& preset_names();
ModelConfig preset(const std::string& family, const std::string& name, int64_t vocab_size);

}  // namespace sessa::nn
