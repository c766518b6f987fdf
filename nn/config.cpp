#include "nn/config.h"

#include <sstream>

#include "tensor/error.h"

namespace sessa::nn {

data::Json ModelConfig::to_json() const {
  data::Json j = data::Json::object();
  j["family"] = family_info(family).name;
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

ModelConfig ModelConfig::from_json(const data::Json& j, const std::string& where) {
  const data::JsonFields fields(j, where);
  ModelConfig c;
  const std::string family = fields.string("family");
  c.vocab_size = fields.integer("vocab_size", 1);
  c.d_model = fields.integer("d_model", 1);
  c.n_layers = fields.integer("n_layers", 1);
  c.n_heads = fields.integer("n_heads", 0);
  c.n_kv_heads = fields.integer("n_kv_heads", 0);
  c.rope = fields.boolean("rope");
  c.gamma_max = fields.number("gamma_max");
  c.mamba_expand = fields.integer("mamba_expand", 1);
  c.mamba_d_state = fields.integer("mamba_d_state", 1);
  c.mamba_d_conv = fields.integer("mamba_d_conv", 1);
  try {
    c.family = family_from_name(family);
    c.validate();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  return c;
}

void ModelConfig::validate() const {
  SESSA_CHECK(vocab_size > 0 && d_model > 0 && n_layers > 0, "model config",
              "vocab_size, d_model and n_layers must be positive (got " << vocab_size << ", " << d_model << ", "
                                                                        << n_layers << ")");
  if (family_info(family).attention_passes > 0) {  // the attention's heads
    int64_t kv = n_kv_heads > 0 ? n_kv_heads : n_heads;
    SESSA_CHECK(n_heads > 0 && d_model % n_heads == 0, "model config",
                "--heads " << n_heads << " must divide --d-model " << d_model);
    SESSA_CHECK(n_heads % kv == 0, "model config", "--kv-heads " << kv << " must divide --heads " << n_heads);
    SESSA_CHECK(!rope || (d_model / n_heads) % 2 == 0, "model config",
                "rotary embedding needs an even head dim, got d_model/heads = " << d_model / n_heads);
  }
  SESSA_CHECK(family != Family::sessa || (gamma_max > 0 && gamma_max < 1), "model config",
              "gamma_max must lie in (0, 1), got " << gamma_max);
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << family_info(family).name << " d_model=" << d_model << " layers=" << n_layers;
  if (family_info(family).attention_passes > 0)
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
  c.family = family_from_name(family);
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

}  // namespace sessa::nn
