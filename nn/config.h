// ModelConfig: everything needed to rebuild a model, stored as JSON in a
// checkpoint's __metadata__ so a checkpoint means the same model everywhere.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/json.h"

namespace sessa::nn {

struct ModelConfig {
  std::string family = "sessa";  // sessa | transformer | mamba
  int64_t vocab_size = 257;
  int64_t d_model = 64, n_layers = 2, n_heads = 4, n_kv_heads = 0;  // n_kv_heads 0: = n_heads
  bool rope = true;
  double gamma_max = 0.999;                                        // Sessa
  int64_t mamba_expand = 2, mamba_d_state = 16, mamba_d_conv = 4;  // Mamba

  data::Json to_json() const;
  static ModelConfig from_json(const data::Json& j);  // throws naming a missing/bad field
  void validate() const;                              // throws naming the bad field
  std::string summary() const;                        // one line for logs
};

// Named presets, one shape for every family: tiny (D 64, 2 layers, 4 heads),
// small (GPT-2 small scale: D 768, 12 layers, 12 heads), medium (~350M scale:
// D 1024, 24 layers, 16 heads).
const std::vector<std::string>& preset_names();
ModelConfig preset(const std::string& family, const std::string& name, int64_t vocab_size);

// The exact parameter count of the model `c` describes (without building it).
int64_t parameter_count(const ModelConfig& c);
// `c` with the layer count whose parameter count is closest to `target`, to compare
// families at matched size (e.g. Sessa matched to a Transformer preset).
ModelConfig match_parameters(ModelConfig c, int64_t target);

// Floating-point operations of one training step (forward + backward) per token at
// sequence length T: 6 per parameter in a matrix product (tied head included, the
// embedding lookup excluded) plus the sequence-mixing terms (causal attention
// 6 L D T; Sessa adds the same again for the feedback scores and solve).
double train_flops_per_token(const ModelConfig& c, int64_t seq_len);

}  // namespace sessa::nn
