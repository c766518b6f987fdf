#include "nn/config.h"

#include <cstdlib>
#include <sstream>

#include "tensor/error.h"

namespace sessa::nn {

data::Json ModelConfig::to_json() const {
  data::Json j = data::Json::Object{};
  j["family"] = family;
  j["vocab_size"] = vocab_size;
  j["d_model"] = d_model;
  j["n_layers"] = n_layers;
  j["n_heads"] = n_heads;
  j["n_kv_heads"] = n_kv_heads;
  j["rope"] = rope;
  j["gamma_max"] = gamma_max;
  j["mamba_expand"] = mamba_expand;
  j["mamba_d_state"] = mamba_d_state;
  j["mamba_d_conv"] = mamba_d_conv;
  return j;
}

ModelConfig ModelConfig::from_json(const data::Json& j) {
  ModelConfig c;
  c.family = j.at("family").as_string();
  c.vocab_size = j.at("vocab_size").as_int();
  c.d_model = j.at("d_model").as_int();
  c.n_layers = j.at("n_layers").as_int();
  c.n_heads = j.at("n_heads").as_int();
  c.n_kv_heads = j.at("n_kv_heads").as_int();
  c.rope = j.at("rope").as_bool();
  c.gamma_max = j.at("gamma_max").as_double();
  c.mamba_expand = j.at("mamba_expand").as_int();
  c.mamba_d_state = j.at("mamba_d_state").as_int();
  c.mamba_d_conv = j.at("mamba_d_conv").as_int();
  c.validate();
  return c;
}

void ModelConfig::validate() const {
  SESSA_CHECK(family == "sessa" || family == "transformer" || family == "mamba", "model config",
              "unknown model family '" << family << "' (expected sessa, transformer or mamba)");
  SESSA_CHECK(vocab_size > 0 && d_model > 0 && n_layers > 0, "model config",
              "vocab_size, d_model and n_layers must be positive (got " << vocab_size << ", " << d_model << ", "
                                                                        << n_layers << ")");
  if (family != "mamba") {
    int64_t kv = n_kv_heads > 0 ? n_kv_heads : n_heads;
    SESSA_CHECK(n_heads > 0 && d_model % n_heads == 0, "model config",
                "--heads " << n_heads << " must divide --d-model " << d_model);
    SESSA_CHECK(n_heads % kv == 0, "model config", "--kv-heads " << kv << " must divide --heads " << n_heads);
    SESSA_CHECK(!rope || (d_model / n_heads) % 2 == 0, "model config",
                "rotary embedding needs an even head dim, got d_model/heads = " << d_model / n_heads);
  }
  SESSA_CHECK(family != "sessa" || (gamma_max > 0 && gamma_max < 1), "model config",
              "gamma_max must lie in (0, 1), got " << gamma_max);
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << family << " d_model=" << d_model << " layers=" << n_layers;
  if (family != "mamba")
    os << " heads=" << n_heads << " kv_heads=" << (n_kv_heads > 0 ? n_kv_heads : n_heads);
  else
    os << " expand=" << mamba_expand << " d_state=" << mamba_d_state;
  os << " vocab=" << vocab_size;
  return os.str();
}

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names{"tiny", "small", "medium"};
  return names;
}

ModelConfig preset(const std::string& family, const std::string& name, int64_t vocab_size) {
  ModelConfig c;
  c.family = family;
  c.vocab_size = vocab_size;
  if (name == "tiny")
    c.d_model = 64, c.n_layers = 2, c.n_heads = 4;  // tests and CPU demos
  else if (name == "small")
    c.d_model = 768, c.n_layers = 12, c.n_heads = 12;  // GPT-2 small scale
  else if (name == "medium")
    c.d_model = 1024, c.n_layers = 24, c.n_heads = 16;  // ~350M scale
  else
    SESSA_FAIL("preset", "unknown preset '" << name << "' (expected tiny, small or medium)");
  c.validate();
  return c;
}

// Counted per module as the constructors in nn/ and sessa/ register them.
int64_t parameter_count(const ModelConfig& c) {
  const int64_t D = c.d_model, V = c.vocab_size;
  const int64_t norm = 2 * D;
  auto linear = [](int64_t in, int64_t out, bool bias) { return in * out + (bias ? out : 0); };
  int64_t per_layer = 0;
  if (c.family == "mamba") {
    const int64_t Di = c.mamba_expand * D, N = c.mamba_d_state, R = (D + 15) / 16;
    per_layer = norm + linear(D, 2 * Di, false) + Di * c.mamba_d_conv + Di + linear(Di, R + 2 * N, false) +
                linear(R, Di, true) + Di * N + Di + linear(Di, D, false);
  } else {
    const int64_t kv = (c.n_kv_heads > 0 ? c.n_kv_heads : c.n_heads) * (D / c.n_heads);
    const int64_t attn_in = linear(D, D, true) + 2 * linear(D, kv, true);
    if (c.family == "transformer") {
      per_layer = 2 * norm + attn_in + linear(D, D, true) + linear(D, 4 * D, true) + linear(4 * D, D, true);
    } else {
      const int64_t out_proj = c.n_heads > 1 ? linear(D, D, false) : 0;
      per_layer = norm + linear(D, 2 * D, true) + attn_in + out_proj + linear(D, 2 * D, true) + linear(D, 1, false) +
                  1 + linear(D, D, true);
    }
  }
  return V * D + c.n_layers * per_layer + norm;  // tied embedding/head, final norm
}

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double matrix_params = double(parameter_count(c));  // embedding counted once: as the head
  const double mixing = c.family == "mamba" ? 0.0 : 6.0 * double(c.n_layers) * double(c.d_model) * double(seq_len);
  return 6.0 * matrix_params + (c.family == "sessa" ? 2.0 : 1.0) * mixing;
}

ModelConfig match_parameters(ModelConfig c, int64_t target) {
  int64_t best = 1, best_gap = -1;
  for (int64_t layers = 1; layers <= 512; ++layers) {
    c.n_layers = layers;
    int64_t gap = std::abs(parameter_count(c) - target);
    if (best_gap < 0 || gap < best_gap) best = layers, best_gap = gap;
  }
  c.n_layers = best;
  return c;
}

}  // namespace sessa::nn
