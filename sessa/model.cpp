#include "sessa/model.h"

#include "nn/mamba.h"
#include "nn/transformer.h"
#include "sessa/layer.h"

namespace sessa {

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
}  // namespace

std::shared_ptr<nn::LanguageModel> build_model(const nn::ModelConfig& c, uint64_t seed, TensorOptions topt) {
  c.validate();
  Generator gen(seed);
  nn::BlockFactory make_block = [&](int64_t) -> std::shared_ptr<nn::Block> {
    if (c.family == "sessa")
      return std::make_shared<SessaBlock>(SessaOptions{.d_model = c.d_model,
                                                       .n_heads = c.n_heads,
                                                       .n_kv_heads = c.n_kv_heads,
                                                       .rope = c.rope,
                                                       .gamma_max = c.gamma_max,
                                                       .n_layers = c.n_layers},
                                          gen, topt);
    if (c.family == "transformer")
      return std::make_shared<nn::TransformerBlock>(nn::TransformerOptions{.d_model = c.d_model,
                                                                           .n_heads = c.n_heads,
                                                                           .n_kv_heads = c.n_kv_heads,
                                                                           .rope = c.rope,
                                                                           .n_layers = c.n_layers},
                                                    gen, topt);
    return std::make_shared<nn::MambaBlock>(nn::MambaOptions{.d_model = c.d_model,
                                                             .expand = c.mamba_expand,
                                                             .d_state = c.mamba_d_state,
                                                             .d_conv = c.mamba_d_conv,
                                                             .n_layers = c.n_layers},
                                            gen, topt);
  };
  return std::make_shared<nn::LanguageModel>(c, gen, make_block, topt);
}

}  // namespace sessa
