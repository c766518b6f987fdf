// Mamba: the fused conv1d and the scan against their definitions (their gradchecks and
// layout checks are op-table entries, tests/op_table.cpp), the whole block (input and parameter gradients), decoding
// against the full forward, parameter names and initialisation.
#include <doctest/doctest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/mamba.h"
#include "nn/mamba_ops.h"
#include "tests/helpers.h"

using namespace sessa;
using autograd::gradcheck;
using sessa::test::expect_gradcheck;
using sessa::test::leaf;

namespace {

// A float64 leaf with uniform(lo, hi) entries (a positive step size, a negative decay).
Tensor uniform_leaf(const Shape& shape, double lo, double hi, Generator& g) {
  Tensor t = uniform(shape, lo, hi, g, {DType::F64});
  t.set_requires_grad();
  return t;
}
// The scan written out directly from its definition, in float64.
std::vector<double> naive_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                               const Tensor& Cm, const Tensor& Dk) {
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  auto vu = u.to_vector<double>(), vd = delta.to_vector<double>(), vA = A.to_vector<double>();
  auto vB = Bm.to_vector<double>(), vC = Cm.to_vector<double>(), vD = Dk.to_vector<double>();
  std::vector<double> y(size_t(B * T * Di));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < Di; ++c) {
      std::vector<double> h(size_t(N), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = size_t((b * T + t) * Di + c);
        double acc = vD[size_t(c)] * vu[i];
        for (int64_t n = 0; n < N; ++n) {
          const size_t bn = size_t((b * T + t) * N + n);
          h[size_t(n)] = std::exp(vd[i] * vA[size_t(c * N + n)]) * h[size_t(n)] + vd[i] * vB[bn] * vu[i];
          acc += vC[bn] * h[size_t(n)];
        }
        y[i] = acc;
      }
    }
  return y;
}

nn::MambaOptions tiny_options() { return {.d_model = 8, .expand = 2, .d_state = 4, .d_conv = 4, .n_layers = 2}; }

// Makes the tiny block's parameters less special than their initial values (D = 1,
// conv bias 0, tiny out_proj, delta ~ 0.01, small B and C) so that every gradient
// path, the scan's included, carries a signal well above finite-difference noise.
void perturb_parameters(nn::MambaBlock& block, Generator& g) {
  autograd::NoGradGuard no_grad;
  auto& m = *block.mixer;
  ops::fill_(m.dt_proj->bias, 0.0);  // delta ~ softplus(0) ~ 0.7
  for (const auto& p : block.named_parameters()) {
    Tensor noise = normal(p.tensor->shape(), 0.0, 0.1, g, {DType::F64});
    ops::add_(*p.tensor, noise);
  }
  ops::add_(m.x_proj->weight, normal(m.x_proj->weight.shape(), 0.0, 0.4, g, {DType::F64}));
  ops::add_(m.out_proj->weight, normal(m.out_proj->weight.shape(), 0.0, 0.3, g, {DType::F64}));
}
}  // namespace

TEST_CASE("gradcheck: causal_conv1d fused with SiLU; it equals SiLU of the conv") {
  Generator g(20);
  for (int64_t T : {1, 5}) {
    CAPTURE(T);
    Tensor x = leaf({2, T, 3}, g), w = leaf({3, 4}, g), b = leaf({3}, g);
    expect_gradcheck([](auto& in) { return nn::causal_conv1d(in[0], in[1], in[2], /*silu=*/true); }, {x, w, b});
    autograd::NoGradGuard no_grad;
    Tensor fused = nn::causal_conv1d_forward(x, w, b, true);
    Tensor apart = ops::unary(ops::Unary::Silu, nn::causal_conv1d_forward(x, w, b));
    CHECK(test::max_rel_diff(fused, apart) == 0.0);
  }
}

TEST_CASE("causal_conv1d matches its definition") {
  Generator g(12);
  const int64_t B = 2, T = 6, C = 3, K = 4;
  Tensor x = normal({B, T, C}, 0, 1, g, {DType::F64}), w = normal({C, K}, 0, 1, g, {DType::F64});
  Tensor b = normal({C}, 0, 1, g, {DType::F64});
  auto y = nn::causal_conv1d_forward(x, w, b).to_vector<double>();
  auto vx = x.to_vector<double>(), vw = w.to_vector<double>(), vb = b.to_vector<double>();
  double worst = 0;
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double ref = vb[size_t(c)];
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = t - K + 1 + j;
          if (s >= 0) ref += vw[size_t(c * K + j)] * vx[size_t((bb * T + s) * C + c)];
        }
        worst = std::max(worst, std::abs(ref - y[size_t((bb * T + t) * C + c)]));
      }
  CHECK(worst < 1e-13);
}

TEST_CASE("gradcheck: selective_scan gated by SiLU(z); it equals the scan times SiLU(z)") {
  Generator g(21);
  const int64_t B = 2, T = 5, Di = 3, N = 4;
  Tensor u = leaf({B, T, Di}, g), delta = uniform_leaf({B, T, Di}, 0.05, 1.0, g);
  Tensor A = uniform_leaf({Di, N}, -2.0, -0.2, g), Bm = leaf({B, T, N}, g), Cm = leaf({B, T, N}, g);
  Tensor Dk = leaf({Di}, g), z = leaf({B, T, Di}, g);
  expect_gradcheck([](auto& in) { return nn::selective_scan(in[0], in[1], in[2], in[3], in[4], in[5], in[6]); },
                   {u, delta, A, Bm, Cm, Dk, z});
  autograd::NoGradGuard no_grad;
  Tensor fused = nn::selective_scan_forward(u, delta, A, Bm, Cm, Dk, z);
  Tensor apart = ops::mul(nn::selective_scan_forward(u, delta, A, Bm, Cm, Dk), ops::unary(ops::Unary::Silu, z));
  CHECK(test::max_rel_diff(fused, apart) == 0.0);
}

TEST_CASE("selective_scan with delta = softplus(dt) inside equals softplus then the scan, values and gradients") {
  Generator g(23);
  const int64_t B = 2, T = 9, Di = 3, N = 4;
  Tensor u = leaf({B, T, Di}, g), dt = leaf({B, T, Di}, g);
  Tensor A = uniform_leaf({Di, N}, -2.0, -0.2, g), Bm = leaf({B, T, N}, g), Cm = leaf({B, T, N}, g);
  Tensor Dk = leaf({Di}, g), z = leaf({B, T, Di}, g), w = leaf({B, T, Di}, g);
  for (bool gated : {false, true}) {
    CAPTURE(gated);
    const Tensor zz = gated ? z : Tensor();
    auto grads = [&](bool fused) {
      for (Tensor* x : {&u, &dt, &A, &Bm, &Cm, &Dk, &z}) x->set_grad(Tensor());
      Tensor y = fused ? nn::selective_scan(u, dt, A, Bm, Cm, Dk, zz, true)
                       : nn::selective_scan(u, softplus(dt), A, Bm, Cm, Dk, zz);
      autograd::backward(sum_all(mul(y, w)));
      std::vector<Tensor> out{y.detach()};
      for (Tensor* x : {&u, &dt, &A, &Bm, &Cm, &Dk, &z})
        if (x != &z || gated) out.push_back(x->grad());
      return out;
    };
    const std::vector<Tensor> fused = grads(true), apart = grads(false);
    CHECK(test::max_rel_diff(fused[0], apart[0]) == 0.0);  // the same delta, the same scan
    for (size_t i = 1; i < fused.size(); ++i) {
      CAPTURE(i);
      CHECK(test::max_rel_diff(fused[i], apart[i]) < 1e-13);  // sigmoid(dt) vs 1 - exp(-delta)
    }
  }
}

TEST_CASE("selective_scan matches a naive loop; float32 agrees with float64") {
  Generator g(14);
  const int64_t B = 3, T = 9, Di = 5, N = 6;
  TensorOptions f64{DType::F64};
  Tensor u = normal({B, T, Di}, 0, 1, g, f64), delta = uniform({B, T, Di}, 0.01, 1.5, g, f64);
  Tensor A = uniform({Di, N}, -3.0, -0.1, g, f64), Bm = normal({B, T, N}, 0, 1, g, f64);
  Tensor Cm = normal({B, T, N}, 0, 1, g, f64), Dk = normal({Di}, 0, 1, g, f64);
  Tensor y = nn::selective_scan_forward(u, delta, A, Bm, Cm, Dk);
  Tensor ref = from_vector(naive_scan(u, delta, A, Bm, Cm, Dk), {B, T, Di}, f64);
  CHECK(test::max_rel_diff(y, ref) < 1e-13);
  auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
  Tensor y32 = nn::selective_scan_forward(f32(u), f32(delta), f32(A), f32(Bm), f32(Cm), f32(Dk));
  CHECK(y32.dtype() == DType::F32);
  CHECK(test::max_rel_diff(y32.to(DType::F64), ref) < 1e-5);
  // float32 backward against float64 backward.
  Tensor dy = normal({B, T, Di}, 0, 1, g, f64);
  auto g64 = nn::selective_scan_backward(dy, u, delta, A, Bm, Cm, Dk);
  auto g32 = nn::selective_scan_backward(f32(dy), f32(u), f32(delta), f32(A), f32(Bm), f32(Cm), f32(Dk));
  CHECK(test::max_rel_diff(g32.du.to(DType::F64), g64.du) < 1e-5);
  CHECK(test::max_rel_diff(g32.ddelta.to(DType::F64), g64.ddelta) < 1e-5);
  CHECK(test::max_rel_diff(g32.dA.to(DType::F64), g64.dA) < 1e-5);
  CHECK(test::max_rel_diff(g32.dB.to(DType::F64), g64.dB) < 1e-5);
  CHECK(test::max_rel_diff(g32.dC.to(DType::F64), g64.dC) < 1e-5);
  CHECK(test::max_rel_diff(g32.dD.to(DType::F64), g64.dD) < 1e-5);
}

TEST_CASE("selective_scan: large enough to run in parallel, gradients match a serial float64 reference") {
  // B*T*Di*N above the parallel grain: per-thread accumulators must sum to the same
  // result as the gradcheck-verified small path (checked here against finite differences
  // on a few elements of each reduced gradient).
  Generator g(15);
  const int64_t B = 2, T = 64, Di = 24, N = 16;
  TensorOptions f64{DType::F64};
  Tensor u = normal({B, T, Di}, 0, 1, g, f64), delta = uniform({B, T, Di}, 0.01, 0.5, g, f64);
  Tensor A = uniform({Di, N}, -3.0, -0.1, g, f64), Bm = normal({B, T, N}, 0, 1, g, f64);
  Tensor Cm = normal({B, T, N}, 0, 1, g, f64), Dk = normal({Di}, 0, 1, g, f64);
  Tensor dy = normal({B, T, Di}, 0, 1, g, f64);
  auto gr = nn::selective_scan_backward(dy, u, delta, A, Bm, Cm, Dk);
  auto loss = [&] { return ops::sum_all(ops::mul(nn::selective_scan_forward(u, delta, A, Bm, Cm, Dk), dy)).item(); };
  auto fd = [&](const Tensor& t, int64_t i) {
    double* p = t.data<double>();
    const double saved = p[i], h = 1e-6;
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    return (up - down) / (2 * h);
  };
  const std::vector<std::pair<Tensor, Tensor>> pairs{{A, gr.dA}, {Bm, gr.dB}, {Cm, gr.dC}, {Dk, gr.dD}};
  for (const auto& [x, dx] : pairs) {
    auto a = dx.to_vector<double>();
    for (int64_t i : {int64_t(0), x.numel() / 3, x.numel() - 1}) {
      const double num = fd(x, i);
      CHECK(std::abs(a[size_t(i)] - num) <= 1e-6 * (1 + std::abs(num)));
    }
  }
}

TEST_CASE("gradcheck: MambaBlock with respect to its input") {
  Generator g(16);
  nn::MambaBlock block(tiny_options(), g, {DType::F64});
  perturb_parameters(block, g);
  Tensor x = leaf({2, 5, 8}, g);
  autograd::GradcheckOptions opt;
  opt.max_checks_per_input = 30;
  expect_gradcheck([&](auto& in) { return block.forward(in[0]); }, {x}, opt);
}

TEST_CASE("MambaBlock parameter gradients match finite differences") {
  Generator g(17);
  nn::MambaBlock block(tiny_options(), g, {DType::F64});
  perturb_parameters(block, g);
  Tensor x = normal({2, 5, 8}, 0, 1, g, {DType::F64});
  Tensor w = uniform({2, 5, 8}, 0.5, 1.5, g, {DType::F64});
  auto loss = [&] { return sum_all(mul(block.forward(x), w)); };
  autograd::backward(loss());
  autograd::NoGradGuard no_grad;
  for (const auto& p : block.named_parameters()) {
    CAPTURE(p.name);
    REQUIRE(p.tensor->grad().defined());
    auto analytic = p.tensor->grad().to_vector<double>();
    double* v = p.tensor->data<double>();
    const int64_t n = p.tensor->numel();
    for (int64_t i : {int64_t(0), n / 2, n - 1}) {
      CAPTURE(i);
      const double saved = v[i], h = 1e-6;
      v[i] = saved + h;
      const double up = loss().item();
      v[i] = saved - h;
      const double down = loss().item();
      v[i] = saved;
      const double numeric = (up - down) / (2 * h);
      CHECK(std::abs(analytic[size_t(i)] - numeric) <= 2e-8 + 1e-5 * std::abs(numeric));
    }
  }
}

TEST_CASE("MambaBlock decoding step by step equals the full forward") {
  Generator g(18);
  nn::MambaBlock block(tiny_options(), g, {DType::F64});
  perturb_parameters(block, g);
  const int64_t B = 2, T = 7, D = 8;
  Tensor x = normal({B, T, D}, 0, 1, g, {DType::F64});
  Tensor full;
  {
    autograd::NoGradGuard no_grad;
    full = block.forward(x);
  }
  auto state = block.new_state(B, T);
  double worst = 0;
  for (int64_t t = 0; t < T; ++t) {
    CHECK(state->position == t);
    Tensor y = block.step(ops::contiguous(ops::narrow(x, 1, t, 1)), *state);
    CHECK_FALSE(y.requires_grad());
    REQUIRE(y.shape() == Shape{B, 1, D});
    auto a = y.to_vector<double>(), b = ops::contiguous(ops::narrow(full, 1, t, 1)).to_vector<double>();
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  }
  CHECK(worst < 1e-10);
  // d_conv = 1 (no conv state) decodes too.
  auto o1 = tiny_options();
  o1.d_conv = 1;
  nn::MambaBlock b1(o1, g, {DType::F64});
  perturb_parameters(b1, g);
  Tensor full1;
  {
    autograd::NoGradGuard no_grad;
    full1 = b1.forward(x);
  }
  auto s1 = b1.new_state(B, T);
  worst = 0;
  for (int64_t t = 0; t < T; ++t) {
    auto a = b1.step(ops::contiguous(ops::narrow(x, 1, t, 1)), *s1).to_vector<double>();
    auto b = ops::contiguous(ops::narrow(full1, 1, t, 1)).to_vector<double>();
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  }
  CHECK(worst < 1e-10);
}

TEST_CASE("MambaBlock parameter names, count, weight decay and initialisation") {
  Generator g(19);
  nn::MambaBlock block({.d_model = 8}, g);  // expand 2, d_state 16, d_conv 4
  const std::vector<std::pair<std::string, bool>> expected{
      // A module's own tensors come before its sub-modules' (the Linear projections).
      {"norm.weight", false},         {"norm.bias", false},           {"mixer.conv1d.weight", true},
      {"mixer.conv1d.bias", false},   {"mixer.A_log", false},         {"mixer.D", false},
      {"mixer.in_proj.weight", true}, {"mixer.x_proj.weight", true},  {"mixer.dt_proj.weight", true},
      {"mixer.dt_proj.bias", false},  {"mixer.out_proj.weight", true}};
  auto params = block.named_parameters();
  REQUIRE(params.size() == expected.size());
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].name == expected[i].first);
    CHECK(params[i].weight_decay == expected[i].second);
  }
  // D = 8, Di = 16, N = 16, K = 4, R = ceil(8/16) = 1:
  // norm 8 + 8, in_proj 32*8, conv 16*4 + 16, x_proj (1 + 32)*16, dt_proj 16*1 + 16,
  // A_log 16*16, D 16, out_proj 8*16.
  const int64_t count = 8 + 8 + 32 * 8 + 16 * 4 + 16 + 33 * 16 + 16 + 16 + 16 * 16 + 16 + 8 * 16;
  CHECK(count == 1312);
  CHECK(block.parameter_count() == count);
  CHECK(block.mixer->conv_weight.shape() == Shape{16, 4});
  CHECK(block.mixer->dt_proj->weight.shape() == Shape{16, 1});

  // softplus(dt bias) lies in [0.001, 0.1].
  for (double b : block.mixer->dt_proj->bias.to_vector<double>()) {
    const double dt = std::log1p(std::exp(b));
    CHECK(dt >= 0.001 * (1 - 1e-6));
    CHECK(dt <= 0.1 * (1 + 1e-6));
  }
  auto alog = block.mixer->A_log.to_vector<double>();
  for (int64_t c = 0; c < 16; ++c)
    for (int64_t n = 0; n < 16; ++n) CHECK(alog[size_t(c * 16 + n)] == doctest::Approx(std::log(double(n + 1))));
  for (double d : block.mixer->D.to_vector<double>()) CHECK(d == 1.0);
  for (double b : block.mixer->conv_bias.to_vector<double>()) CHECK(b == 0.0);
  for (double w : block.mixer->conv_weight.to_vector<double>()) CHECK(std::abs(w) <= 0.5);
  for (double w : block.mixer->dt_proj->weight.to_vector<double>()) CHECK(std::abs(w) <= 1.0);
}

TEST_CASE("Mamba ops report bad shapes") {
  Tensor x = zeros({2, 5, 3}, {DType::F64}), w = zeros({4, 4}, {DType::F64}), b = zeros({3}, {DType::F64});
  test::check_error([&] { nn::causal_conv1d_forward(x, w, b); }, {"causal_conv1d", "[4, 4]"});
  Tensor A = zeros({3, 4}, {DType::F64}), Bm = zeros({2, 5, 5}, {DType::F64}), D = ones({3}, {DType::F64});
  test::check_error([&] { nn::selective_scan_forward(x, x, A, Bm, Bm, D); }, {"selective_scan", "[2, 5, 5]"});
}

TEST_CASE("MambaBlock rejects a conv kernel wider than the CUDA backward holds") {
  Generator gen(1);
  nn::MambaOptions o = tiny_options();
  o.d_conv = nn::kMaxConvTaps;
  CHECK_NOTHROW(nn::MambaBlock(o, gen, {DType::F64}));
  o.d_conv = nn::kMaxConvTaps + 1;
  test::check_error([&] { nn::MambaBlock(o, gen, {DType::F64}); }, {"MambaBlock", "d_conv 17", "16"});
}
