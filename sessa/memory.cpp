// The memory-tail constructions of sessa/memory.h; derivations in docs/memory.md.
// Weights are written in place into the real blocks' parameters, so the
// measurement runs the same layer code (and autograd) as training does.
#include "sessa/memory.h"

#include <cmath>
#include <sstream>

#include "nn/mamba.h"
#include "nn/transformer.h"
#include "sessa/layer.h"
#include "tensor/ops.h"

namespace sessa::layer {

namespace {

constexpr double kGammaMax = 0.999;

// param = values (row-major, param's shape), converted to its dtype and device.
void assign(const Tensor& param, const std::vector<double>& values) {
  ops::copy_(param, from_vector(values, param.shape(), {DType::F64}));
}

// A (rows, cols) matrix with entry (r, c) = entry(r, c).
std::vector<double> matrix(int64_t rows, int64_t cols, const std::function<double(int64_t, int64_t)>& entry) {
  std::vector<double> m(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) m[size_t(r * cols + c)] = entry(r, c);
  return m;
}

double delta(int64_t r, int64_t c) { return r == c ? 1.0 : 0.0; }

void zero(const nn::Linear& layer) {
  ops::fill_(layer.weight, 0.0);
  if (layer.bias.defined()) ops::fill_(layer.bias, 0.0);
}

void identity(const nn::Linear& layer) {
  assign(layer.weight, matrix(layer.out_features, layer.in_features, delta));
  if (layer.bias.defined()) ops::fill_(layer.bias, 0.0);
}

// Uniform causal attention with identity values: zero queries and keys make every
// score 0 (RoPE rotates zero to zero), so position t averages v_s over s <= t.
void uniform_attention(const nn::Attention& attn) {
  zero(*attn.q_proj);
  zero(*attn.k_proj);
  identity(*attn.v_proj);
  if (attn.out_proj) identity(*attn.out_proj);
}

std::string number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// sessa-uniform (docs/memory.md "Sessa"): a = LayerNorm(x), g = 1, f = uniform causal
// attention of GELU(a), q_b = k_b = 0 so alpha[t, s] = 1/t over s < t, gamma_t = gamma,
// y = x + s.
MemoryConstruction sessa_uniform(const MemoryConstructionOptions& o, TensorOptions topt) {
  SESSA_CHECK(o.gamma > 0 && o.gamma < kGammaMax, "sessa-uniform",
              "--gamma must lie in (0, " << kGammaMax << "), got " << o.gamma);
  Generator gen(0);
  const int64_t D = o.d_model;
  auto layer =
      std::make_shared<SessaLayer>(SessaOptions{.d_model = D, .n_heads = 1, .gamma_max = kGammaMax}, gen, topt);
  assign(layer->proj_in->weight, matrix(2 * D, D, delta));  // a = LN(x), g-part 0
  assign(layer->proj_in->bias, matrix(1, 2 * D, [D](int64_t, int64_t c) { return c < D ? 0.0 : 1.0; }));  // g = 1
  uniform_attention(*layer->attn);
  zero(*layer->proj_fb);
  zero(*layer->gamma_proj);
  ops::fill_(layer->gamma_bias, std::atanh(o.gamma / kGammaMax));
  identity(*layer->proj_out);
  const double gamma = o.gamma;
  return {"sessa-uniform gamma=" + number(gamma), layer,
          [gamma](int64_t i, int64_t j) { return sessa_uniform_profile(gamma, i, j); },
          "l^-(1 - gamma) = l^" + number(-(1 - gamma))};
}

// transformer-uniform: h = x + uniform causal attention of LayerNorm(x); MLP output 0.
MemoryConstruction transformer_uniform(const MemoryConstructionOptions& o, TensorOptions topt) {
  Generator gen(0);
  auto block =
      std::make_shared<nn::TransformerBlock>(nn::TransformerOptions{.d_model = o.d_model, .n_heads = 1}, gen, topt);
  uniform_attention(*block->mixer);
  zero(*block->fc_out);
  return {"transformer-uniform", block, [](int64_t i, int64_t) { return 1.0 / double(i + 1); },
          "1/(j + l + 1), i.e. l^-1"};
}

// mamba-decay: LayerNorm channel 0 is the constant 1 (weight 0, bias 1); inner channel
// 0 carries it, so B = C = 1 and the gate SiLU(z) are constants; delta = 1 and
// A = log(a) give the per-step factor exp(delta A) = a; the conv passes the current tap.
MemoryConstruction mamba_decay(const MemoryConstructionOptions& o, TensorOptions topt) {
  SESSA_CHECK(o.decay > 0 && o.decay < 1, "mamba-decay", "--decay must lie in (0, 1), got " << o.decay);
  Generator gen(0);
  const int64_t D = o.d_model;
  auto block = std::make_shared<nn::MambaBlock>(nn::MambaOptions{.d_model = D, .expand = 2, .d_state = 1, .d_conv = 4},
                                                gen, topt);
  nn::MambaMixer& m = *block->mixer;
  const int64_t Di = m.d_inner, K = m.d_conv, R = m.dt_rank;
  assign(block->norm->weight, matrix(1, D, [](int64_t, int64_t c) { return c == 0 ? 0.0 : 1.0; }));
  assign(block->norm->bias, matrix(1, D, [](int64_t, int64_t c) { return c == 0 ? 1.0 : 0.0; }));
  // xs channel c < D reads LayerNorm channel c (channel 0: the constant 1); z = 1 everywhere.
  assign(m.in_proj->weight,
         matrix(2 * Di, D, [Di](int64_t r, int64_t c) { return r < Di ? delta(r, c) : delta(c, 0); }));
  assign(m.conv_weight, matrix(Di, K, [K](int64_t, int64_t k) { return k == K - 1 ? 1.0 : 0.0; }));
  ops::fill_(m.conv_bias, 0.0);
  // u channel 0 = SiLU(1); B and C read it scaled to 1; dt reads nothing.
  const double u0 = 1.0 / (1.0 + std::exp(-1.0));
  assign(m.x_proj->weight,
         matrix(R + 2, Di, [R, u0](int64_t r, int64_t c) { return r >= R && c == 0 ? 1.0 / u0 : 0.0; }));
  ops::fill_(m.dt_proj->bias, std::log(std::expm1(1.0)));  // softplus(bias) = 1
  ops::fill_(m.A_log, std::log(-std::log(o.decay)));       // A = -exp(A_log) = log(a)
  assign(m.out_proj->weight, matrix(D, Di, delta));
  const double a = o.decay;
  return {"mamba-decay a=" + number(a), block, [a](int64_t i, int64_t j) { return std::pow(a, double(i - j)); },
          "a^l, a per-step factor of " + number(a)};
}

}  // namespace

const std::vector<std::string>& construction_names() {
  static const std::vector<std::string> names{"sessa-uniform", "transformer-uniform", "mamba-decay"};
  return names;
}

MemoryConstruction build_construction(const std::string& name, const MemoryConstructionOptions& opt,
                                      TensorOptions topt) {
  SESSA_CHECK(opt.d_model >= 2, "build_construction", "the width must be >= 2, got " << opt.d_model);
  MemoryConstruction c;
  if (name == "sessa-uniform")
    c = sessa_uniform(opt, topt);
  else if (name == "transformer-uniform")
    c = transformer_uniform(opt, topt);
  else if (name == "mamba-decay")
    c = mamba_decay(opt, topt);
  else
    SESSA_FAIL("--construction", "unknown construction '" << name
                                                          << "': expected sessa-uniform, transformer-uniform or "
                                                             "mamba-decay");
  freeze_parameters(*c.block);
  return c;
}

// G(i, j) = (gamma / i) Gamma(i + gamma) Gamma(j + 1) / (Gamma(i) Gamma(j + 1 + gamma)) for i > j; 1 at i = j.
double sessa_feedback_profile(double gamma, int64_t i, int64_t j) {
  SESSA_CHECK(i >= j && j >= 0, "sessa_feedback_profile", "need target >= source >= 0, got " << i << ", " << j);
  if (i == j) return 1.0;
  const double di = double(i), dj = double(j);
  return gamma / di *
         std::exp(std::lgamma(di + gamma) - std::lgamma(di) + std::lgamma(dj + 1) - std::lgamma(dj + 1 + gamma));
}

// c(i, j) = sum_{k=j}^{i} G(i, k) / (k + 1): f_k averages v_0..v_k uniformly.
double sessa_uniform_profile(double gamma, int64_t i, int64_t j) {
  SESSA_CHECK(i > j && j >= 0, "sessa_uniform_profile", "need target > source >= 0, got " << i << ", " << j);
  const double di = double(i);
  const double lead = gamma / di * std::exp(std::lgamma(di + gamma) - std::lgamma(di));
  double sum = 0;
  for (int64_t k = j; k < i; ++k) {
    const double dk = double(k);
    sum += std::exp(std::lgamma(dk + 1) - std::lgamma(dk + 1 + gamma)) / (dk + 1);
  }
  return 1.0 / (di + 1) + lead * sum;
}

void freeze_parameters(nn::Module& m) {
  for (const nn::NamedParameter& p : m.named_parameters()) p.tensor->set_requires_grad(false);
}

}  // namespace sessa::layer
