#include "sessa/layer.h"

#include <cmath>

#include "autograd/ops.h"
#include "sessa/feedback.h"
#include "sessa/gate.h"

namespace sessa::layer {

namespace {
// Decoding cache: the forward branch's keys/values, and the feedback branch's past
// keys k_b and states s, so token t costs O(t D).
struct SessaState : nn::DecodeState {
  nn::KVCache kv;
  Tensor k_b, s;  // (B, max_len, D)
};

// The forward branch (S2): no bias on out_proj, and none at all with one head.
nn::AttentionOptions attention_options(const SessaOptions& opt) {
  return {.d_model = opt.d_model,
          .n_heads = opt.n_heads,
          .n_kv_heads = opt.n_kv_heads,
          .rope = opt.rope,
          .out_bias = false,
          .out_proj_one_head = true,
          .out_init_std = 0.02};
}
}  // namespace

SessaLayer::SessaLayer(const SessaOptions& opt, Generator& gen, TensorOptions topt) : opt_(opt) {
  SESSA_CHECK(opt.gamma_max > 0 && opt.gamma_max < 1, "SessaLayer",
              "gamma_max must lie in (0, 1), got " << opt.gamma_max);
  const int64_t D = opt.d_model;
  const double out_std = 0.02 / std::sqrt(2.0 * double(opt.n_layers));
  norm = register_module("norm", std::make_shared<nn::LayerNorm>(D, 1e-5, topt));
  proj_in = register_module("proj_in", std::make_shared<nn::Linear>(D, 2 * D, gen, nn::LinearOptions{}, topt));
  attn = register_module("attn", std::make_shared<nn::Attention>(attention_options(opt), gen, topt));
  proj_fb = register_module("proj_fb", std::make_shared<nn::Linear>(D, 2 * D, gen, nn::LinearOptions{}, topt));
  gamma_proj =
      register_module("gamma_proj", std::make_shared<nn::Linear>(D, 1, gen, nn::LinearOptions{false, 0.02}, topt));
  gamma_bias = full({}, 1.0, topt);
  register_parameter("gamma_bias", gamma_bias, false);
  proj_out =
      register_module("proj_out", std::make_shared<nn::Linear>(D, D, gen, nn::LinearOptions{true, out_std}, topt));
}

int64_t SessaLayer::count_parameters(const SessaOptions& opt) {
  using nn::Linear;
  const int64_t D = opt.d_model;
  return nn::LayerNorm::count_parameters(D) + Linear::count_parameters(D, 2 * D, true)           // norm, proj_in
         + nn::Attention::count_parameters(attention_options(opt))                               // attn
         + Linear::count_parameters(D, 2 * D, true) + Linear::count_parameters(D, 1, false) + 1  // proj_fb, gamma
         + Linear::count_parameters(D, D, true);                                                 // proj_out
}

SessaLayer::Branches SessaLayer::branches(const Tensor& x) const {
  const int64_t D = opt_.d_model;
  SESSA_CHECK(x.dim() == 3 && x.size(2) == D, "SessaLayer", "expected input (B, T, " << D << "), got " << x.shape());
  auto ag = proj_in->forward_parts(norm->forward(x), {D, D});
  Tensor abar = gelu(ag[0]);
  auto qk = proj_fb->forward_parts(abar, {D, D});
  Tensor gamma = gate(squeeze(gamma_proj->forward(abar), -1), gamma_bias, opt_.gamma_max);  // (S4)
  return {abar, ag[1], qk[0], qk[1], gamma};
}

Tensor SessaLayer::forward(const Tensor& x) {
  Branches br = branches(x);
  Tensor f = attn->forward(br.abar);
  Tensor s = feedback_solve(br.q_b, br.k_b, br.gamma, f);
  return proj_out->forward(s * br.g, x);  // x + proj_out(s * g), the add in the GEMM
}

std::unique_ptr<nn::DecodeState> SessaLayer::new_state(int64_t batch, int64_t max_len) const {
  auto st = std::make_unique<SessaState>();
  st->kv = attn->new_cache(batch, max_len);
  st->k_b = Tensor::empty({batch, max_len, opt_.d_model}, proj_fb->weight.options());
  st->s = Tensor::empty({batch, max_len, opt_.d_model}, proj_fb->weight.options());
  return st;
}

// Row t of (S5): s_t = f_t + gamma_t * softmax_{s<t}(q_t . k_s / sqrt(D)) @ s_{<t}.
Tensor SessaLayer::step(const Tensor& x, nn::DecodeState& state) {
  auto& st = static_cast<SessaState&>(state);
  const int64_t t = st.position;
  Branches br = branches(x);
  Tensor f = attn->step(br.abar, st.kv, t);
  ops::copy_(ops::narrow(st.k_b, 1, t, 1), br.k_b);
  Tensor s_t = f;
  if (t > 0) {
    Tensor logits = matmul(br.q_b, ops::narrow(st.k_b, 1, 0, t), false, true) * (1.0 / std::sqrt(double(opt_.d_model)));
    Tensor ctx = matmul(softmax(logits), ops::narrow(st.s, 1, 0, t));
    s_t = f + unsqueeze(br.gamma, -1) * ctx;
  }
  ops::copy_(ops::narrow(st.s, 1, t, 1), s_t);
  st.position = t + 1;
  return proj_out->forward(s_t * br.g, x);
}

}  // namespace sessa::layer
