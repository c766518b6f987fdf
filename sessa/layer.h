// The Sessa layer (arXiv 2604.18580), docs/sessa.md equations (S1)-(S6):
//   a, g = split(W_in(LayerNorm(x)));  abar = GELU(a)                        (S1)
//   f = causal multi-head attention of abar (RoPE, GQA; out_proj when H > 1)  (S2)
//   q_b, k_b = split(W_fb abar);  alpha = strictly causal softmax            (S3)
//   gamma_t = gamma_max * tanh(gamma_bias + w_gamma . abar_t)                (S4)
//   s = (I - diag(gamma) alpha)^-1 f                                         (S5)
//   y = x + W_out(s * g)                                                     (S6)
#pragma once
#include <memory>

#include "nn/attention.h"
#include "nn/block.h"
#include "nn/layers.h"

namespace sessa::layer {

struct SessaOptions {
  int64_t d_model = 0, n_heads = 1, n_kv_heads = 0;  // n_kv_heads 0: same as n_heads
  bool rope = true;
  double gamma_max = 0.999;  // must satisfy 0 < gamma_max < 1
  int64_t n_layers = 1;      // scales the init of the residual projection
};

class SessaLayer : public nn::Block {
 public:
  SessaLayer(const SessaOptions& opt, Generator& gen, TensorOptions topt = {});
  // The parameters the constructor registers, from the options alone (nothing built).
  static int64_t count_parameters(const SessaOptions& opt);
  Tensor forward(const Tensor& x) override;
  std::unique_ptr<nn::DecodeState> new_state(int64_t batch, int64_t max_len) const override;
  Tensor step(const Tensor& x, nn::DecodeState& state) override;

  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Linear> proj_in, proj_fb, gamma_proj, proj_out;
  std::shared_ptr<nn::Attention> attn;
  Tensor gamma_bias;  // 0-d

 private:
  struct Branches {
    Tensor abar, g, q_b, k_b, gamma;
  };
  Branches branches(const Tensor& x) const;  // (S1), (S3) inputs, (S4)
  SessaOptions opt_;
};

}  // namespace sessa::layer
