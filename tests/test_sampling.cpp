// tests/test_sampling.cpp - next-token sampling (nn/sampling.h): greedy,
// top-k, top-p, temperature, agreement with the softmax, and option checks.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "nn/sampling.h"
#include "tensor/error.h"
#include "tensor/philox.h"

using sessa::nn::sample_token;
using sessa::nn::SamplingOptions;

namespace {

// Counts of `n` draws with Philox uniforms from `seed`.
std::vector<int> histogram(const std::vector<float>& logits, const SamplingOptions& opt, int n, uint64_t seed = 7) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++counts[size_t(sample_token(logits, opt, sessa::philox::uniform(seed, uint64_t(i))))];
  return counts;
}

const std::vector<float> kLogits = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f};  // argmax 1

}  // namespace

TEST_CASE("sampling: temperature 0 is greedy (argmax, ties to the lowest id)") {
  SamplingOptions opt{.temperature = 0};
  for (double u : {0.0, 0.3, 0.999}) CHECK(sample_token(kLogits, opt, u) == 1);
  CHECK(sample_token({1.0f, 3.0f, 3.0f}, opt, 0.9) == 1);
  const float ninf = -std::numeric_limits<float>::infinity();
  CHECK(sample_token({ninf, ninf, -50.0f}, opt, 0.5) == 2);
}

TEST_CASE("sampling: top-k 1 and a tiny top-p are greedy") {
  for (double t : {0.5, 1.0, 5.0}) {
    for (int i = 0; i < 200; ++i) {
      double u = sessa::philox::uniform(3, uint64_t(i));
      CHECK(sample_token(kLogits, SamplingOptions{.temperature = t, .top_k = 1}, u) == 1);
      CHECK(sample_token(kLogits, SamplingOptions{.temperature = t, .top_p = 1e-6}, u) == 1);
    }
  }
}

TEST_CASE("sampling: top-k keeps only the k most likely tokens") {
  auto counts = histogram(kLogits, SamplingOptions{.temperature = 1.0, .top_k = 2}, 4000);
  CHECK(counts[0] == 0);
  CHECK(counts[2] == 0);
  CHECK(counts[4] == 0);
  CHECK(counts[1] > counts[3]);
  CHECK(counts[3] > 0);
}

TEST_CASE("sampling: top-p keeps the smallest set reaching the mass") {
  // Probabilities 0.5, 0.3, 0.2 (as logits); p = 0.7 keeps {0, 1}, p = 0.45 keeps {0}.
  std::vector<float> logits = {float(std::log(0.5)), float(std::log(0.3)), float(std::log(0.2))};
  auto counts = histogram(logits, SamplingOptions{.temperature = 1.0, .top_p = 0.7}, 4000);
  CHECK(counts[2] == 0);
  CHECK(counts[0] > 0);
  CHECK(counts[1] > 0);
  CHECK(double(counts[0]) / 4000 == doctest::Approx(0.5 / 0.8).epsilon(0.05));
  counts = histogram(logits, SamplingOptions{.temperature = 1.0, .top_p = 0.45}, 1000);
  CHECK(counts[0] == 1000);
}

TEST_CASE("sampling: a high temperature spreads the draws, a low one concentrates them") {
  const int n = 6000;
  auto hot = histogram(kLogits, SamplingOptions{.temperature = 100.0}, n);
  for (int c : hot) CHECK(double(c) / n == doctest::Approx(0.2).epsilon(0.15));
  auto cold = histogram(kLogits, SamplingOptions{.temperature = 0.05}, n);
  CHECK(cold[1] > n * 0.99);
}

TEST_CASE("sampling: draws follow the softmax (3 tokens)") {
  std::vector<float> logits = {1.0f, 0.0f, -0.5f};
  for (double t : {1.0, 0.7}) {
    double z = 0;
    std::vector<double> p(3);
    for (size_t i = 0; i < 3; ++i) z += p[i] = std::exp(logits[i] / t);
    const int n = 20000;
    auto counts = histogram(logits, SamplingOptions{.temperature = t}, n, 11);
    for (size_t i = 0; i < 3; ++i) {
      double expected = p[i] / z;
      double sd = std::sqrt(expected * (1 - expected) / n);
      CHECK(std::abs(double(counts[i]) / n - expected) < 5 * sd);
    }
  }
}

TEST_CASE("sampling: the draw is a deterministic inverse CDF of the uniform") {
  std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f};  // uniform: quarters
  SamplingOptions opt{.temperature = 1.0};
  CHECK(sample_token(logits, opt, 0.0) == 0);
  CHECK(sample_token(logits, opt, 0.26) == 1);
  CHECK(sample_token(logits, opt, 0.74) == 2);
  CHECK(sample_token(logits, opt, 0.9999999) == 3);
  const float ninf = -std::numeric_limits<float>::infinity();
  CHECK(sample_token({ninf, 0.0f, ninf}, opt, 0.99) == 1);  // masked tokens are never drawn
}

TEST_CASE("sampling: invalid options and inputs throw") {
  CHECK_THROWS_WITH_AS(sample_token(kLogits, SamplingOptions{.temperature = -1}, 0.5), doctest::Contains("temperature"),
                       sessa::Error);
  CHECK_THROWS_WITH_AS(sample_token(kLogits, SamplingOptions{.top_k = -1}, 0.5), doctest::Contains("top_k"),
                       sessa::Error);
  CHECK_THROWS_WITH_AS(sample_token(kLogits, SamplingOptions{.top_p = 0}, 0.5), doctest::Contains("top_p"),
                       sessa::Error);
  CHECK_THROWS_WITH_AS(sample_token(kLogits, SamplingOptions{.top_p = 1.5}, 0.5), doctest::Contains("top_p"),
                       sessa::Error);
  CHECK_THROWS_WITH_AS(sample_token(kLogits, SamplingOptions{.temperature = NAN}, 0.5),
                       doctest::Contains("temperature"), sessa::Error);
  CHECK_THROWS_AS(sample_token({}, SamplingOptions{}, 0.5), sessa::Error);
  CHECK_THROWS_AS(sample_token(kLogits, SamplingOptions{}, 1.0), sessa::Error);
  CHECK_THROWS_AS(sample_token({1.0f, NAN}, SamplingOptions{}, 0.5), sessa::Error);
  const float ninf = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(sample_token({ninf, ninf}, SamplingOptions{}, 0.5), sessa::Error);
}
