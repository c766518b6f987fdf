#include "nn/transformer.h"

#include <cmath>

#include "autograd/ops.h"

namespace sessa::nn {

namespace {
struct TransformerState : DecodeState {
  KVCache kv;
};

// A child module named "mlp" holding fc_in and fc_out, for checkpoint names
// layers.N.mlp.fc_in.weight etc.
struct MlpModule : Module {
  MlpModule(std::shared_ptr<Linear> in, std::shared_ptr<Linear> out) {
    register_module("fc_in", std::move(in));
    register_module("fc_out", std::move(out));
  }
};

double residual_init_std(const TransformerOptions& opt) { return 0.02 / std::sqrt(2.0 * double(opt.n_layers)); }

AttentionOptions attention_options(const TransformerOptions& opt) {
  return {.d_model = opt.d_model,
          .n_heads = opt.n_heads,
          .n_kv_heads = opt.n_kv_heads,
          .rope = opt.rope,
          .out_bias = true,
          .out_proj_one_head = false,
          .out_init_std = residual_init_std(opt)};
}
}  // namespace

TransformerBlock::TransformerBlock(const TransformerOptions& opt, Generator& gen, TensorOptions topt) {
  const int64_t D = opt.d_model;
  const double out_std = residual_init_std(opt);
  norm = register_module("norm", std::make_shared<LayerNorm>(D, 1e-5, topt));
  mixer = register_module("mixer", std::make_shared<Attention>(attention_options(opt), gen, topt));
  mlp_norm = register_module("mlp_norm", std::make_shared<LayerNorm>(D, 1e-5, topt));
  fc_in = std::make_shared<Linear>(D, 4 * D, gen, LinearOptions{}, topt);
  fc_out = std::make_shared<Linear>(4 * D, D, gen, LinearOptions{true, out_std}, topt);
  register_module("mlp", std::make_shared<MlpModule>(fc_in, fc_out));
}

int64_t TransformerBlock::count_parameters(const TransformerOptions& opt) {
  const int64_t D = opt.d_model;
  return 2 * LayerNorm::count_parameters(D) + Attention::count_parameters(attention_options(opt)) +
         Linear::count_parameters(D, 4 * D, true) + Linear::count_parameters(4 * D, D, true);
}

Tensor TransformerBlock::mlp(const Tensor& h) const {
  return fc_out->forward(gelu(fc_in->forward(mlp_norm->forward(h))), h);  // h + MLP(h), the add in fc_out
}

// x + attention(x) with the residual added in the attention's out_proj (nn::Linear::forward).
Tensor TransformerBlock::forward(const Tensor& x) { return mlp(mixer->forward(norm->forward(x), x)); }

std::unique_ptr<DecodeState> TransformerBlock::new_state(int64_t batch, int64_t max_len) const {
  auto st = std::make_unique<TransformerState>();
  st->kv = mixer->new_cache(batch, max_len);
  return st;
}

Tensor TransformerBlock::step(const Tensor& x, DecodeState& state) {
  auto& st = static_cast<TransformerState&>(state);
  Tensor h = mixer->step(norm->forward(x), st.kv, st.position, x);
  st.position += 1;
  return mlp(h);
}

}  // namespace sessa::nn
