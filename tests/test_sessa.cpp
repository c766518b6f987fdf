// The Sessa layer: the feedback solve against a dense float64 solve, the gradcheck of
// the whole layer, and incremental decoding equal to the full forward. The solve's own
// gradchecks (gamma near 0.5 and near gamma_max, T across solve blocks) are op-table
// entries (tests/op_table.cpp).
#include <doctest/doctest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "sessa/feedback.h"
#include "sessa/layer.h"
#include "tests/helpers.h"

using namespace sessa;
using namespace sessa::layer;  // sessa/: build_model, SessaLayer, the feedback solve, influence, memory
using sessa::test::check_error;
using sessa::test::expect_gradcheck;
using sessa::test::leaf;
using sessa::test::max_rel_diff;

namespace {

// s from (S3)-(S5) by a direct dense computation, one row at a time.
Tensor dense_feedback(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f) {
  const int64_t B = q.size(0), T = q.size(1), D = q.size(2);
  auto vq = q.to_vector<double>(), vk = k.to_vector<double>(), vg = gamma.to_vector<double>(),
       vf = f.to_vector<double>();
  std::vector<double> s(vf.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> logit(static_cast<size_t>(t)), ctx(static_cast<size_t>(D), 0.0);
      double mx = -1e300, total = 0;
      for (int64_t j = 0; j < t; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += vq[size_t((b * T + t) * D + i)] * vk[size_t((b * T + j) * D + i)];
        logit[size_t(j)] = dot / std::sqrt(double(D));
        mx = std::max(mx, logit[size_t(j)]);
      }
      for (int64_t j = 0; j < t; ++j) total += std::exp(logit[size_t(j)] - mx);
      for (int64_t j = 0; j < t; ++j)
        for (int64_t i = 0; i < D; ++i)
          ctx[size_t(i)] += std::exp(logit[size_t(j)] - mx) / total * s[size_t((b * T + j) * D + i)];
      for (int64_t i = 0; i < D; ++i)
        s[size_t((b * T + t) * D + i)] = vf[size_t((b * T + t) * D + i)] + vg[size_t(b * T + t)] * ctx[size_t(i)];
    }
  return from_vector(s, q.shape(), {DType::F64});
}

Tensor gammas(const Shape& shape, double value, Generator& gen) {  // near `value`, as a leaf
  Tensor g = uniform(shape, value - 0.01, value, gen, {DType::F64});
  g.set_requires_grad();
  return g;
}

}  // namespace

TEST_CASE("feedback solve equals a dense solve, across block boundaries") {
  Generator gen(1);
  for (int64_t T : {1, 7, 64, 150, 330}) {
    CAPTURE(T);
    Tensor q = leaf({2, T, 5}, gen), k = leaf({2, T, 5}, gen), f = leaf({2, T, 5}, gen), g = gammas({2, T}, 0.99, gen);
    Tensor s = layer::feedback_solve_forward(q, k, g, f).s;
    CHECK(max_rel_diff(s, dense_feedback(q, k, g, f)) < 1e-12);
    // The same in float32 stays close to the float64 answer.
    auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
    CHECK(max_rel_diff(layer::feedback_solve_forward(f32(q), f32(k), f32(g), f32(f)).s.to(DType::F64), s) < 1e-4);
  }
}

TEST_CASE("feedback solve: row 0 is f, and gamma = 0 gives s = f") {
  Generator gen(2);
  Tensor q = leaf({1, 6, 3}, gen), k = leaf({1, 6, 3}, gen), f = leaf({1, 6, 3}, gen);
  Tensor s = layer::feedback_solve_forward(q, k, zeros({1, 6}, {DType::F64}), f).s;
  CHECK(s.to_vector<double>() == f.to_vector<double>());
  // The saved row statistic: lse[t] = log sum_{s<t} exp(q_t . k_s / sqrt(D)), 0 for row 0.
  auto lse = layer::feedback_solve_forward(q, k, ones({1, 6}, {DType::F64}), f).lse.to_vector<double>();
  auto vq = q.to_vector<double>(), vk = k.to_vector<double>();
  CHECK(lse[0] == 0);
  for (int64_t t = 1; t < 6; ++t) {
    double total = 0;
    for (int64_t j = 0; j < t; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < 3; ++i) dot += vq[size_t(t * 3 + i)] * vk[size_t(j * 3 + i)];
      total += std::exp(dot / std::sqrt(3.0));
    }
    CHECK(lse[size_t(t)] == doctest::Approx(std::log(total)).epsilon(1e-14));
  }
}

namespace {
SessaOptions tiny_options(int64_t heads, int64_t kv_heads) {
  return {.d_model = 8, .n_heads = heads, .n_kv_heads = kv_heads, .rope = true, .gamma_max = 0.999, .n_layers = 2};
}
}  // namespace

TEST_CASE("gradcheck: the whole Sessa layer (input and every parameter)") {
  for (const auto& shape : {std::pair<int64_t, int64_t>{1, 1}, {2, 1}}) {
    const int64_t heads = shape.first, kv = shape.second;  // not a structured binding: CAPTURE under clang 14
    CAPTURE(heads);
    Generator gen(4);
    SessaLayer layer(tiny_options(heads, kv), gen, {DType::F64});
    // Larger weights than the 0.02 init, so every path carries a visible gradient.
    for (auto& p : layer.named_parameters()) *p.tensor = leaf(p.tensor->shape(), gen, 0.3);
    layer.gamma_bias = full({}, 2.0, {DType::F64}).set_requires_grad();  // gamma near gamma_max
    std::vector<Tensor> inputs{leaf({2, 5, 8}, gen)};
    for (auto& p : layer.named_parameters()) inputs.push_back(*p.tensor);
    autograd::GradcheckOptions opt;
    opt.max_checks_per_input = 12;
    expect_gradcheck(
        [&](const std::vector<Tensor>& in) {
          size_t i = 1;
          for (auto& p : layer.named_parameters()) *p.tensor = in[i++];
          return layer.forward(in[0]);
        },
        inputs, opt);
  }
}

TEST_CASE("incremental decoding equals the full forward (float64, 1e-10)") {
  for (const auto& shape : {std::tuple<int64_t, int64_t, bool>{1, 1, true}, {4, 2, true}, {2, 2, false}}) {
    const auto [heads_value, kv_value, rope] = shape;
    const int64_t heads = heads_value, kv = kv_value;  // CAPTURE cannot take bindings under clang 14
    CAPTURE(heads);
    CAPTURE(kv);
    Generator gen(5);
    SessaOptions opt = tiny_options(heads, kv);
    opt.rope = rope;
    SessaLayer layer(opt, gen, {DType::F64});
    for (auto& p : layer.named_parameters()) *p.tensor = normal(p.tensor->shape(), 0, 0.3, gen, {DType::F64});
    const int64_t B = 2, T = 9;
    Tensor x = normal({B, T, 8}, 0, 1, gen, {DType::F64});
    autograd::NoGradGuard no_grad;
    Tensor full_out = layer.forward(x);
    auto state = layer.new_state(B, T);
    for (int64_t t = 0; t < T; ++t) {
      Tensor y = layer.step(ops::narrow(x, 1, t, 1), *state);
      CHECK(max_rel_diff(y, ops::narrow(full_out, 1, t, 1)) < 1e-10);
    }
  }
}

TEST_CASE("bad configurations are rejected with clear errors") {
  Generator gen(6);
  check_error([&] { SessaLayer({.d_model = 8, .n_heads = 2, .gamma_max = 1.0}, gen); }, {"gamma_max", "(0, 1)"});
  check_error([&] { SessaLayer({.d_model = 8, .n_heads = 3}, gen); }, {"d_model 8", "head count 3"});
  check_error([&] { SessaLayer({.d_model = 8, .n_heads = 4, .n_kv_heads = 3}, gen); }, {"kv heads 3"});
  SessaLayer layer({.d_model = 8, .n_heads = 2}, gen);
  check_error([&] { layer.forward(zeros({2, 3, 6})); }, {"SessaLayer", "[2, 3, 6]"});
}
