// Memory-tail measurement (sessa/influence.h) and the closed-form constructions
// (sessa/memory.h, docs/memory.md): the measured Jacobian blocks equal finite
// differences, each construction's curve equals its closed form, and the Sessa
// construction's fitted exponent is -(1 - gamma).
#include <doctest/doctest.h>

#include <cmath>

#include "autograd/node.h"
#include "sessa/influence.h"
#include "sessa/layer.h"
#include "sessa/memory.h"
#include "tensor/ops.h"

using namespace sessa;
using namespace sessa::layer;  // sessa/: build_model, SessaLayer, the feedback solve, influence, memory

namespace {

const TensorOptions kF64{DType::F64};

std::vector<int64_t> range(int64_t from, int64_t to) {  // [from, to]
  std::vector<int64_t> v;
  for (int64_t k = from; k <= to; ++k) v.push_back(k);
  return v;
}

}  // namespace

TEST_CASE("influence: Jacobian block norms equal central differences on a random Sessa layer") {
  Generator gen(7);
  SessaLayer layer(SessaOptions{.d_model = 4, .n_heads = 2}, gen, kF64);
  // Matrices of std 0.5 instead of the init's 0.02, so that every path carries weight.
  for (const auto& p : layer.named_parameters())
    if (p.tensor->dim() == 2) ops::copy_(*p.tensor, normal(p.tensor->shape(), 0.0, 0.5, gen, kF64));
  freeze_parameters(layer);
  const int64_t T = 9, D = 4;
  Tensor x = normal({1, T, D}, 0.0, 1.0, gen, kF64);
  InfluenceOptions opt{.sources = {0, 2}, .lags = {1, 3, 6}, .probes = 0, .batch = 5};
  Generator probes(1);
  auto measured = measure_influence([&](const Tensor& v) { return layer.forward(v); }, x, opt, probes);

  autograd::NoGradGuard no_grad;
  const std::vector<double> base = x.to_vector<double>();
  auto output = [&](const std::vector<double>& v) {
    return layer.forward(from_vector(v, {1, T, D}, kF64)).to_vector<double>();
  };
  const double h = 1e-5;
  for (size_t s = 0; s < opt.sources.size(); ++s) {
    for (size_t k = 0; k < opt.lags.size(); ++k) {
      const int64_t j = opt.sources[s], i = j + opt.lags[k];
      double sq = 0;
      for (int64_t d = 0; d < D; ++d) {
        std::vector<double> plus = base, minus = base;
        plus[size_t(j * D + d)] += h;
        minus[size_t(j * D + d)] -= h;
        const auto yp = output(plus), ym = output(minus);
        for (int64_t e = 0; e < D; ++e) {
          const double g = (yp[size_t(i * D + e)] - ym[size_t(i * D + e)]) / (2 * h);
          sq += g * g;
        }
      }
      CHECK(measured[s][k] == doctest::Approx(std::sqrt(sq / double(D))).epsilon(1e-6));
      CHECK(measured[s][k] > 1e-3);  // the blocks are not trivially zero
    }
  }
}

TEST_CASE("influence: random probes estimate the exact norms") {
  MemoryConstruction c = build_construction("transformer-uniform", {}, kF64);
  Generator gen(3);
  Tensor x = normal({1, 12, 4}, 0.0, 1.0, gen, kF64);
  auto map = [&](const Tensor& v) { return c.block->forward(v); };
  InfluenceOptions opt{.sources = {0}, .lags = {1, 5, 11}};
  Generator probes(11);
  auto exact = measure_influence(map, x, opt, probes);
  opt.probes = 400;
  auto estimate = measure_influence(map, x, opt, probes);
  for (size_t k = 0; k < opt.lags.size(); ++k) CHECK(estimate[0][k] == doctest::Approx(exact[0][k]).epsilon(0.1));
}

TEST_CASE("influence: the Sessa closed forms equal the recursion they solve") {
  // s_t = f_t + (gamma / t) sum_{s<t} s_s; f_t = (1 / (t + 1)) sum_{s<=t} v_s. Column j of
  // ds/df and ds/dv by direct substitution, against the Gamma-function forms.
  const int64_t T = 40;
  for (double gamma : {0.25, 0.5, 0.9}) {
    for (int64_t j : {0, 3}) {
      std::vector<double> G(T, 0.0), C(T, 0.0);  // ds_t/df_j and ds_t/dv_j
      double sum_g = 0, sum_c = 0;
      for (int64_t t = 0; t < T; ++t) {
        const double f_g = t == j ? 1.0 : 0.0, f_c = t >= j ? 1.0 / double(t + 1) : 0.0;
        G[t] = f_g + (t > 0 ? gamma / double(t) * sum_g : 0.0);
        C[t] = f_c + (t > 0 ? gamma / double(t) * sum_c : 0.0);
        sum_g += G[t];
        sum_c += C[t];
      }
      for (int64_t t = j + 1; t < T; ++t) {
        CHECK(sessa_feedback_profile(gamma, t, j) == doctest::Approx(G[t]).epsilon(1e-12));
        CHECK(sessa_uniform_profile(gamma, t, j) == doctest::Approx(C[t]).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("influence: each construction's measured curve equals its closed form") {
  const int64_t T = 20;
  InfluenceOptions opt{.sources = {0, 1, 2}, .lags = range(1, T - 3)};
  for (const std::string& name : construction_names()) {
    CAPTURE(name);
    MemoryConstruction c = build_construction(name, {.d_model = 4, .gamma = 0.6, .decay = 0.8}, kF64);
    Generator gen(5), probes(6);
    for (int sample = 0; sample < 2; ++sample) {
      auto measured = measure_influence([&](const Tensor& v) { return c.block->forward(v); },
                                        normal({1, T, 4}, 0.0, 1.0, gen, kF64), opt, probes);
      // d y_{j+l} / d x_j = c(j + l, j) P_j: the curve over l, divided by its value at
      // l = 1, is the closed form's.
      for (size_t s = 0; s < opt.sources.size(); ++s) {
        const int64_t j = opt.sources[s];
        REQUIRE(measured[s][0] > 1e-3);
        for (size_t k = 0; k < opt.lags.size(); ++k) {
          const int64_t l = opt.lags[k];
          const double expected = c.profile(j + l, j) / c.profile(j + 1, j);
          CHECK(measured[s][k] / measured[s][0] == doctest::Approx(expected).epsilon(1e-6));
        }
      }
    }
  }
}

TEST_CASE("influence: the Sessa construction's tail exponent is -(1 - gamma)") {
  // Only the lags of the fit, the last decade: about 10 of them.
  const int64_t T = 512;
  InfluenceOptions opt{.sources = {0}, .lags = {}};
  for (int64_t l : lag_grid(T - 1, 10))
    if (l >= (T - 1) / 10) opt.lags.push_back(l);
  for (double gamma : {0.25, 0.5, 0.9}) {
    CAPTURE(gamma);
    MemoryConstruction c = build_construction("sessa-uniform", {.gamma = gamma}, kF64);
    Generator gen(9), probes(10);
    auto measured = measure_influence([&](const Tensor& v) { return c.block->forward(v); },
                                      normal({1, T, 4}, 0.0, 1.0, gen, kF64), opt, probes);
    const double slope = loglog_slope(opt.lags, measured[0], (T - 1) / 10, T - 1);
    CHECK(std::abs(slope + (1 - gamma)) < 0.005);
  }
  // The baselines: 1/l for uniform attention, a^l for the decaying state.
  MemoryConstruction t = build_construction("transformer-uniform", {}, kF64);
  MemoryConstruction m = build_construction("mamba-decay", {.decay = 0.9}, kF64);
  InfluenceOptions small{.sources = {0}, .lags = range(1, 60)};
  Generator gen(2), probes(3);
  Tensor x = normal({1, 64, 4}, 0.0, 1.0, gen, kF64);
  auto tr = measure_influence([&](const Tensor& v) { return t.block->forward(v); }, x, small, probes);
  auto ma = measure_influence([&](const Tensor& v) { return m.block->forward(v); }, x, small, probes);
  const double transformer_slope = loglog_slope(small.lags, tr[0], 6, 60);  // of 1/(l + 1): between -1 and -0.9
  CHECK(transformer_slope < -0.9);
  CHECK(transformer_slope > -1.0);
  CHECK(std::exp(loglinear_slope(small.lags, ma[0], 1, 60)) == doctest::Approx(0.9).epsilon(1e-9));
}

TEST_CASE("influence: lag grids, summaries and bad options") {
  CHECK(lag_grid(5, 0) == std::vector<int64_t>{1, 2, 3, 4, 5});
  const auto grid = lag_grid(1000, 10);
  CHECK(grid.front() == 1);
  CHECK(grid.back() == 1000);
  CHECK(std::is_sorted(grid.begin(), grid.end()));
  CHECK(std::adjacent_find(grid.begin(), grid.end()) == grid.end());
  CHECK(grid.size() > 20);
  CHECK(grid.size() < 32);

  CurveSummary s = summarize({{1.0, 10.0}, {3.0, 30.0}, {2.0, 20.0}});
  CHECK(s.mean[0] == doctest::Approx(2.0));
  CHECK(s.q50[1] == doctest::Approx(20.0));
  CHECK(s.q10[0] == doctest::Approx(1.2));
  CHECK(s.q90[1] == doctest::Approx(28.0));

  MemoryConstruction c = build_construction("transformer-uniform", {}, kF64);
  auto map = [&](const Tensor& v) { return c.block->forward(v); };
  Generator gen(1);
  Tensor x = zeros({1, 8, 4}, kF64);
  CHECK_THROWS_WITH_AS(measure_influence(map, x, {.sources = {0}, .lags = {1, 8}}, gen),
                       doctest::Contains("must lie inside the sequence"), Error);
  CHECK_THROWS_WITH_AS(measure_influence(map, x, {.sources = {2, 1}, .lags = {1}}, gen), doctest::Contains("ascending"),
                       Error);
  CHECK_THROWS_WITH_AS(build_construction("sessa-uniform", {.gamma = 1.0}), doctest::Contains("--gamma"), Error);
  CHECK_THROWS_WITH_AS(build_construction("mamba-decay", {.decay = 0.0}), doctest::Contains("--decay"), Error);
  CHECK_THROWS_WITH_AS(build_construction("rnn", {}), doctest::Contains("--construction"), Error);
}

TEST_CASE("influence: the batch per pass and the progress reports") {
  CHECK(influence_batch(100, 4, 7) == 7);                     // given
  CHECK(influence_batch(100, 4, 0) == 512);                   // small passes: the cap
  CHECK(influence_batch(1000, 4, 0) == 67);                   // 2^26 / 1000^2 score elements
  CHECK(influence_batch(100000, 4, 0) == 1);                  // at least one probe
  CHECK(influence_batch(int64_t(1) << 40, 1 << 20, 0) == 1);  // no overflow at absurd sizes

  MemoryConstruction c = build_construction("mamba-decay", {}, kF64);
  Generator gen(3);
  const Tensor x = normal({1, 40, 4}, 0.0, 1.0, gen, kF64);
  std::vector<InfluenceProgress> reports;
  InfluenceOptions opt{.sources = {0, 1}, .lags = {1, 5, 30}, .probes = 0, .batch = 3};
  opt.progress = [&](const InfluenceProgress& p) { reports.push_back(p); };
  measure_influence([&](const Tensor& v) { return c.block->forward(v); }, x, opt, gen);
  // Outputs 1, 2, 5, 6, 30, 31 with 4 basis probes each: 24 tasks, 8 passes of 3.
  REQUIRE(reports.size() == 8);
  for (size_t k = 1; k < reports.size(); ++k) CHECK(reports[k].outputs_done >= reports[k - 1].outputs_done);
  CHECK(reports.back().outputs_done == 6);
  CHECK(reports.back().outputs_total == 6);
  CHECK(reports.back().length == 32);
}
