#include "nn/mamba.h"

#include <cmath>
#include <vector>

#include "autograd/ops.h"
#include "nn/mamba_ops.h"

namespace sessa::nn {

namespace {
int64_t dt_rank_of(const MambaOptions& o) { return (o.d_model + 15) / 16; }  // R = ceil(D / 16)
}  // namespace

MambaMixer::MambaMixer(const MambaOptions& o, Generator& gen, TensorOptions topt)
    : d_model(o.d_model), d_inner(o.expand * o.d_model), d_state(o.d_state), d_conv(o.d_conv), dt_rank(dt_rank_of(o)) {
  SESSA_CHECK(o.d_model > 0 && o.expand > 0 && o.d_state > 0 && o.d_conv > 0 && o.n_layers > 0, "MambaBlock",
              "d_model, expand, d_state, d_conv and n_layers must be positive; got d_model "
                  << o.d_model << ", expand " << o.expand << ", d_state " << o.d_state << ", d_conv " << o.d_conv
                  << ", n_layers " << o.n_layers);
  SESSA_CHECK(o.d_conv <= kMaxConvTaps, "MambaBlock",
              "d_conv " << o.d_conv << " is wider than the " << kMaxConvTaps << " taps the conv's CUDA backward holds");
  const int64_t Dm = d_model, Di = d_inner, N = d_state, K = d_conv, R = dt_rank;

  // Drawn from `gen` in the order below (in_proj, conv1d, x_proj, dt_proj, out_proj).
  in_proj = register_module("in_proj", std::make_shared<Linear>(Dm, 2 * Di, gen, LinearOptions{false, 0.02}, topt));

  const double conv_bound = 1.0 / std::sqrt(double(K));
  conv_weight = uniform({Di, K}, -conv_bound, conv_bound, gen, topt);
  register_parameter("conv1d.weight", conv_weight, true);
  conv_bias = zeros({Di}, topt);
  register_parameter("conv1d.bias", conv_bias, false);

  x_proj = register_module("x_proj", std::make_shared<Linear>(Di, R + 2 * N, gen, LinearOptions{false, 0.02}, topt));

  const double dt_bound = 1.0 / std::sqrt(double(R));
  Tensor dt_weight = uniform({Di, R}, -dt_bound, dt_bound, gen, topt);
  // dt ~ log-uniform in [0.001, 0.1]; the bias is its inverse softplus, so that
  // softplus(bias) = dt at initialisation: bias = dt + log(1 - exp(-dt)).
  std::vector<double> bias_values =
      uniform({Di}, std::log(1e-3), std::log(1e-1), gen, {DType::F64}).to_vector<double>();
  for (double& v : bias_values) {
    const double dt = std::exp(v);
    v = dt + std::log(-std::expm1(-dt));
  }
  dt_proj = register_module("dt_proj", std::make_shared<Linear>(dt_weight, from_vector(bias_values, {Di}, topt)));

  std::vector<double> a_log(size_t(Di * N));
  for (int64_t c = 0; c < Di; ++c)
    for (int64_t n = 0; n < N; ++n) a_log[size_t(c * N + n)] = std::log(double(n + 1));
  A_log = from_vector(a_log, {Di, N}, topt);
  register_parameter("A_log", A_log, false);

  D = ones({Di}, topt);
  register_parameter("D", D, false);

  const double out_std = 0.02 / std::sqrt(2.0 * double(o.n_layers));
  out_proj = register_module("out_proj", std::make_shared<Linear>(Di, Dm, gen, LinearOptions{false, out_std}, topt));
}

int64_t MambaMixer::count_parameters(const MambaOptions& o) {
  const int64_t Dm = o.d_model, Di = o.expand * o.d_model, N = o.d_state, K = o.d_conv, R = dt_rank_of(o);
  return Linear::count_parameters(Dm, 2 * Di, false) + Di * K + Di  // in_proj, conv1d weight and bias
         + Linear::count_parameters(Di, R + 2 * N, false) + Linear::count_parameters(R, Di, true)  // x_proj, dt_proj
         + Di * N + Di + Linear::count_parameters(Di, Dm, false);                                  // A_log, D, out_proj
}

Tensor MambaMixer::forward(const Tensor& x, const Tensor& residual) const {
  SESSA_CHECK(x.dim() == 3 && x.size(2) == d_model, "MambaBlock",
              "input " << x.shape() << " should be (B, T, " << d_model << ")");
  const int64_t Di = d_inner, N = d_state, R = dt_rank;
  auto xz = in_proj->forward_parts(x, {Di, Di});
  Tensor u = causal_conv1d(xz[0], compute(conv_weight), compute(conv_bias), /*silu=*/true);  // SiLU fused
  auto dbc = split(x_proj->forward(u), 2, {R, N, N});  // narrow (R + 2N wide): one GEMM beats three
  Tensor dt = dt_proj->forward(dbc[0]);                // the scan takes delta = softplus(dt) inside its node
  Tensor A = compute(-exp(A_log));
  Tensor y = selective_scan(u, dt, A, dbc[1], dbc[2], compute(D), /*z=*/xz[1], /*delta_softplus=*/true);  // gated
  return out_proj->forward(y, residual);
}

Tensor MambaMixer::step(const Tensor& x, MambaState& st, const Tensor& residual) const {
  using ops::Unary;
  const int64_t B = x.size(0), Di = d_inner, N = d_state, K = d_conv, R = dt_rank;
  Tensor xz = ops::linear(x, in_proj->weight, {});  // (B, 1, 2 Di)
  Tensor xs = ops::narrow(xz, 2, 0, Di), z = ops::narrow(xz, 2, Di, Di);
  // The conv over the window of the last K inputs; its last row is this position's output.
  Tensor window = K > 1 ? ops::cat({st.conv, xs}, 1) : ops::contiguous(xs);  // (B, K, Di)
  Tensor conv = ops::narrow(nn::causal_conv1d_forward(window, conv_weight, conv_bias), 1, K - 1, 1);
  if (K > 1) st.conv = ops::contiguous(ops::narrow(window, 1, 1, K - 1));
  Tensor u = ops::reshape(ops::unary(Unary::Silu, conv), {B, Di});
  Tensor dbc = ops::linear(u, x_proj->weight, {});  // (B, R + 2N)
  Tensor dt_low = ops::narrow(dbc, 1, 0, R);
  Tensor Bm = ops::unsqueeze(ops::narrow(dbc, 1, R, N), 1), Cm = ops::unsqueeze(ops::narrow(dbc, 1, R + N, N), 1);
  Tensor delta = ops::unary(Unary::Softplus, ops::linear(dt_low, dt_proj->weight, dt_proj->bias));
  Tensor A = ops::unary(Unary::Neg, ops::unary(Unary::Exp, A_log));                        // (Di, N)
  Tensor delta_c = ops::unsqueeze(delta, 2), dtu = ops::unsqueeze(ops::mul(delta, u), 2);  // (B, Di, 1)
  // h = exp(delta A) h + (delta u) B;  y = sum_n C h + D u.
  st.ssm = ops::add(ops::mul(ops::unary(Unary::Exp, ops::mul(delta_c, A)), st.ssm), ops::mul(dtu, Bm));
  Tensor y = ops::add(ops::sum(ops::mul(st.ssm, Cm), {2}), ops::mul(u, D));  // (B, Di)
  Tensor gated = ops::mul(ops::reshape(y, {B, 1, Di}), ops::unary(Unary::Silu, z));
  return ops::linear(gated, out_proj->weight, {}, residual);
}

MambaBlock::MambaBlock(const MambaOptions& opt, Generator& gen, TensorOptions topt) : options(opt) {
  norm = register_module("norm", std::make_shared<LayerNorm>(opt.d_model, 1e-5, topt));
  mixer = register_module("mixer", std::make_shared<MambaMixer>(opt, gen, topt));
}

int64_t MambaBlock::count_parameters(const MambaOptions& opt) {
  return LayerNorm::count_parameters(opt.d_model) + MambaMixer::count_parameters(opt);
}

Tensor MambaBlock::forward(const Tensor& x) { return mixer->forward(norm->forward(x), x); }  // x + mixer(norm(x))

// The state has a fixed size whatever the sequence length, so max_len is not needed.
std::unique_ptr<DecodeState> MambaBlock::new_state(int64_t batch, int64_t /*max_len*/) const {
  auto st = std::make_unique<MambaState>();
  const TensorOptions topt = mixer->A_log.options();
  st->conv = zeros({batch, mixer->d_conv - 1, mixer->d_inner}, topt);
  st->ssm = zeros({batch, mixer->d_inner, mixer->d_state}, topt);
  return st;
}

Tensor MambaBlock::step(const Tensor& x, DecodeState& state) {
  auto* st = dynamic_cast<MambaState*>(&state);
  SESSA_CHECK(st, "MambaBlock::step", "the decode state was not made by MambaBlock::new_state");
  SESSA_CHECK(x.dim() == 3 && x.size(1) == 1 && x.size(2) == options.d_model && x.size(0) == st->ssm.size(0),
              "MambaBlock::step",
              "input " << x.shape() << " should be (" << st->ssm.size(0) << ", 1, " << options.d_model << ")");
  autograd::NoGradGuard no_grad;
  Tensor h = ops::layer_norm(x, norm->weight, norm->bias, norm->eps).y;
  Tensor out = mixer->step(h, *st, x);
  state.position += 1;
  return out;
}

}  // namespace sessa::nn
