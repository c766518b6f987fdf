#include "sessa/model.h"

#include <cstdlib>

#include "nn/mamba.h"
#include "nn/transformer.h"
#include "sessa/layer.h"

namespace sessa::layer {

namespace {
// Puts the Sessa layer (which carries its own norm and residual) under the name
// "mixer", so parameters read layers.<i>.mixer.proj_fb.weight and so on.
class SessaBlock : public nn::Block {
 public:
  SessaBlock(const SessaOptions& opt, Generator& gen, TensorOptions topt)
      : mixer_(register_module("mixer", std::make_shared<SessaLayer>(opt, gen, topt))) {}
  Tensor forward(const Tensor& x) override { return mixer_->forward(x); }
  std::unique_ptr<nn::DecodeState> new_state(int64_t batch, int64_t max_len) const override {
    return mixer_->new_state(batch, max_len);
  }
  Tensor step(const Tensor& x, nn::DecodeState& state) override { return mixer_->step(x, state); }

 private:
  std::shared_ptr<SessaLayer> mixer_;
};

// Each family's block options from the config: shared by build_block and block_parameter_count.
SessaOptions sessa_options(const nn::ModelConfig& c) {
  return {.d_model = c.d_model,
          .n_heads = c.n_heads,
          .n_kv_heads = c.n_kv_heads,
          .rope = c.rope,
          .gamma_max = c.gamma_max,
          .n_layers = c.n_layers};
}
nn::TransformerOptions transformer_options(const nn::ModelConfig& c) {
  return {
      .d_model = c.d_model, .n_heads = c.n_heads, .n_kv_heads = c.n_kv_heads, .rope = c.rope, .n_layers = c.n_layers};
}
nn::MambaOptions mamba_options(const nn::ModelConfig& c) {
  return {.d_model = c.d_model,
          .expand = c.mamba_expand,
          .d_state = c.mamba_d_state,
          .d_conv = c.mamba_d_conv,
          .n_layers = c.n_layers};
}
}  // namespace

std::shared_ptr<nn::Block> build_block(const nn::ModelConfig& c, int64_t, Generator& gen, TensorOptions topt) {
  switch (c.family) {
    case nn::Family::sessa:
      return std::make_shared<SessaBlock>(sessa_options(c), gen, topt);
    case nn::Family::transformer:
      return std::make_shared<nn::TransformerBlock>(transformer_options(c), gen, topt);
    case nn::Family::mamba:
      return std::make_shared<nn::MambaBlock>(mamba_options(c), gen, topt);
  }
  SESSA_FAIL("build_block", "no block for model family value " << int(c.family));
}

int64_t block_parameter_count(const nn::ModelConfig& c) {
  c.validate();
  switch (c.family) {
    case nn::Family::sessa:
      return SessaLayer::count_parameters(sessa_options(c));  // SessaBlock adds none of its own
    case nn::Family::transformer:
      return nn::TransformerBlock::count_parameters(transformer_options(c));
    case nn::Family::mamba:
      return nn::MambaBlock::count_parameters(mamba_options(c));
  }
  SESSA_FAIL("block_parameter_count", "no block for model family value " << int(c.family));
}

std::shared_ptr<nn::LanguageModel> build_model(const nn::ModelConfig& c, uint64_t seed, TensorOptions topt) {
  c.validate();
  Generator gen(seed);
  nn::BlockFactory make_block = [&](int64_t layer) { return build_block(c, layer, gen, topt); };
  return std::make_shared<nn::LanguageModel>(c, gen, make_block, topt);
}

int64_t parameter_count(const nn::ModelConfig& c) {
  return nn::LanguageModel::own_parameter_count(c) + c.n_layers * block_parameter_count(c);
}

nn::ModelConfig match_parameters(nn::ModelConfig c, int64_t target) {
  const int64_t fixed = nn::LanguageModel::own_parameter_count(c), per_layer = block_parameter_count(c);
  int64_t best = 1;
  for (int64_t layers = 2; layers <= 512; ++layers)
    if (std::abs(fixed + layers * per_layer - target) < std::abs(fixed + best * per_layer - target)) best = layers;
  c.n_layers = best;
  return c;
}

double train_flops_per_token(const nn::ModelConfig& c, int64_t seq_len) {
  const double matrix_params = double(parameter_count(c));  // embedding counted once: as the head
  const double attention = 6.0 * double(c.n_layers) * double(c.d_model) * double(seq_len);
  return 6.0 * matrix_params + double(nn::family_info(c.family).attention_passes) * attention;
}

}  // namespace sessa::layer
