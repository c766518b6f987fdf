// The Transformer baseline: a pre-LayerNorm GPT block.
//   h = x + Attention(LayerNorm(x));  y = h + MLP(LayerNorm(h)),  MLP = fc_out(GELU(fc_in(.)))
#pragma once
#include "nn/attention.h"

namespace sessa::nn {

struct TransformerOptions {
  int64_t d_model = 0, n_heads = 1, n_kv_heads = 0;
  bool rope = true;
  int64_t n_layers = 1;  // scales the init of the residual projections
};

class TransformerBlock : public Block {
 public:
  TransformerBlock(const TransformerOptions& opt, Generator& gen, TensorOptions topt = {});
  // The parameters the constructor registers, from the options alone (nothing built).
  static int64_t count_parameters(const TransformerOptions& opt);
  Tensor forward(const Tensor& x) override;
  std::unique_ptr<DecodeState> new_state(int64_t batch, int64_t max_len) const override;
  Tensor step(const Tensor& x, DecodeState& state) override;

  std::shared_ptr<LayerNorm> norm, mlp_norm;
  std::shared_ptr<Attention> mixer;
  std::shared_ptr<Linear> fc_in, fc_out;

 private:
  Tensor mlp(const Tensor& h) const;
};

}  // namespace sessa::nn
