#include "nn/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "tensor/error.h"

namespace sessa::nn {

void validate(const SamplingOptions& opt) {
  SESSA_CHECK(std::isfinite(opt.temperature) && opt.temperature >= 0, "sampling",
              "temperature must be a finite number >= 0, got " << opt.temperature);
  SESSA_CHECK(opt.top_k >= 0, "sampling", "top_k must be >= 0 (0 = off), got " << opt.top_k);
  SESSA_CHECK(opt.top_p > 0 && opt.top_p <= 1, "sampling", "top_p must be in (0, 1] (1 = off), got " << opt.top_p);
}

int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opt, double uniform01) {
  validate(opt);
  SESSA_CHECK(!logits.empty(), "sampling", "no logits");
  SESSA_CHECK(logits.size() <= size_t(std::numeric_limits<int32_t>::max()), "sampling",
              "too many logits: " << logits.size());
  SESSA_CHECK(uniform01 >= 0 && uniform01 < 1, "sampling", "uniform draw must be in [0, 1), got " << uniform01);
  const size_t V = logits.size();

  // Greedy: first maximum (lowest id among ties).
  size_t best = V;
  for (size_t i = 0; i < V; ++i) {
    SESSA_CHECK(!std::isnan(logits[i]), "sampling", "logit " << i << " is NaN");
    if (logits[i] == -std::numeric_limits<float>::infinity()) continue;
    if (best == V || logits[i] > logits[best]) best = i;
  }
  SESSA_CHECK(best != V, "sampling", "every logit is -inf: nothing to sample");
  if (opt.temperature == 0) return int32_t(best);

  // Candidates with their unnormalised probabilities exp((l - max) / T), in double.
  const double max_logit = logits[best];
  const double inv_t = 1.0 / opt.temperature;
  std::vector<int32_t> ids;
  ids.reserve(V);
  for (size_t i = 0; i < V; ++i)
    if (logits[i] != -std::numeric_limits<float>::infinity()) ids.push_back(int32_t(i));

  const bool use_k = opt.top_k > 0 && size_t(opt.top_k) < ids.size();
  const bool use_p = opt.top_p < 1;
  if (use_k || use_p) {
    // Order by decreasing logit, ties by increasing id (a total order: deterministic).
    auto before = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
    if (use_k && !use_p) {
      std::partial_sort(ids.begin(), ids.begin() + opt.top_k, ids.end(), before);
    } else {
      std::sort(ids.begin(), ids.end(), before);
    }
    if (use_k) ids.resize(size_t(opt.top_k));
  }

  std::vector<double> w(ids.size());
  double total = 0;
  for (size_t j = 0; j < ids.size(); ++j) {
    w[j] = std::exp((double(logits[ids[j]]) - max_logit) * inv_t);
    total += w[j];
  }
  if (use_p) {
    // Smallest prefix (ids are sorted by decreasing probability) with mass >= top_p; at least one.
    double mass = 0;
    size_t keep = 0;
    while (keep < w.size()) {
      mass += w[keep++];
      if (mass >= opt.top_p * total) break;
    }
    ids.resize(keep);
    w.resize(keep);
    total = mass;
  }

  // Inverse CDF; rounding at the top end falls back to the last candidate with weight.
  const double target = uniform01 * total;
  double cum = 0;
  for (size_t j = 0; j < w.size(); ++j) {
    cum += w[j];
    if (target < cum) return ids[j];
  }
  for (size_t j = w.size(); j-- > 0;)
    if (w[j] > 0) return ids[j];
  return int32_t(best);
}

}  // namespace sessa::nn
