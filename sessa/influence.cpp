// Influence measurement through batched vector-Jacobian products (sessa/influence.h,
// docs/memory.md). One task = (output position i, probe p); tasks run in order of
// increasing i, a batch of them per forward/backward over the prefix x[0 : i_last + 1].
#include "sessa/influence.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sessa::layer {

namespace {

void check_options(const Tensor& x, const InfluenceOptions& opt) {
  SESSA_CHECK(x.dim() == 3 && x.size(0) == 1 && x.size(1) >= 2 && x.size(2) >= 1, "measure_influence",
              "expected one input sequence (1, T, D) with T >= 2, got " << x.shape());
  const int64_t T = x.size(1);
  SESSA_CHECK(!opt.sources.empty() && std::is_sorted(opt.sources.begin(), opt.sources.end()) &&
                  std::adjacent_find(opt.sources.begin(), opt.sources.end()) == opt.sources.end() &&
                  opt.sources.front() >= 0,
              "measure_influence", "sources must be distinct non-negative positions in ascending order");
  SESSA_CHECK(!opt.lags.empty() && std::is_sorted(opt.lags.begin(), opt.lags.end()) &&
                  std::adjacent_find(opt.lags.begin(), opt.lags.end()) == opt.lags.end() && opt.lags.front() >= 1,
              "measure_influence", "lags must be distinct positive integers in ascending order");
  SESSA_CHECK(opt.sources.back() + opt.lags.back() < T, "measure_influence",
              "the last source (" << opt.sources.back() << ") plus the largest lag (" << opt.lags.back()
                                  << ") must lie inside the sequence of length " << T);
  SESSA_CHECK(opt.probes >= 0 && opt.batch >= 0, "measure_influence",
              "probes and batch must be >= 0, got " << opt.probes << " and " << opt.batch);
}

}  // namespace

int64_t influence_batch(int64_t length, int64_t width, int64_t batch) {
  if (batch > 0) return batch;
  const double L = double(std::max<int64_t>(1, length)), D = double(std::max<int64_t>(1, width));
  const double by_scores = std::floor(double(int64_t(1) << 26) / (L * L));
  const double by_activations = std::floor(double(int64_t(1) << 21) / (L * D));
  return int64_t(std::clamp(std::min(by_scores, by_activations), 1.0, 512.0));
}

std::vector<std::vector<double>> measure_influence(const SequenceMap& map, const Tensor& x, const InfluenceOptions& opt,
                                                   Generator& gen) {
  check_options(x, opt);
  SESSA_CHECK(autograd::grad_enabled(), "measure_influence", "needs gradient recording (called under NoGradGuard)");
  const int64_t D = x.size(2), n_sources = int64_t(opt.sources.size()), n_lags = int64_t(opt.lags.size());
  const int64_t first_source = opt.sources.front(), last_source = opt.sources.back();
  const bool exact = opt.probes == 0;
  const int64_t per_position = exact ? D : opt.probes;

  // lag_index[l] = k with lags[k] == l, or -1.
  std::vector<int64_t> lag_index(size_t(opt.lags.back() + 1), -1);
  for (int64_t k = 0; k < n_lags; ++k) lag_index[size_t(opt.lags[size_t(k)])] = k;
  // The output positions that some (source, lag) pair needs, ascending.
  std::vector<int64_t> outputs;
  for (int64_t j : opt.sources)
    for (int64_t l : opt.lags) outputs.push_back(j + l);
  std::sort(outputs.begin(), outputs.end());
  outputs.erase(std::unique(outputs.begin(), outputs.end()), outputs.end());

  std::vector<std::vector<double>> squares(size_t(n_sources), std::vector<double>(size_t(n_lags), 0.0));
  const int64_t n_tasks = int64_t(outputs.size()) * per_position;
  for (int64_t t0 = 0; t0 < n_tasks;) {
    // Grow the pass while the batch the longest prefix in it allows is not reached.
    int64_t t1 = t0 + 1;
    while (t1 < n_tasks) {
      const int64_t length = outputs[size_t(t1 / per_position)] + 1;
      const int64_t cap = influence_batch(length, D, opt.batch);
      if (t1 - t0 >= cap) break;
      ++t1;
    }
    const int64_t n = t1 - t0, length = outputs[size_t((t1 - 1) / per_position)] + 1;

    Tensor xb = Tensor::empty({n, length, D}, x.options());  // (n, L, D): the prefix, once per probe
    ops::copy_(xb, ops::narrow(x, 1, 0, length));
    xb.set_requires_grad(true);
    Tensor y = map(xb);
    SESSA_CHECK(y.shape() == xb.shape(), "measure_influence",
                "the map must return its input's shape " << xb.shape() << ", got " << y.shape());

    std::vector<double> seed(size_t(n * length * D), 0.0);
    std::vector<double> gaussian;
    if (!exact) gaussian = normal({n, D}, 0.0, 1.0, gen, {DType::F64}).to_vector<double>();
    for (int64_t b = 0; b < n; ++b) {
      const int64_t task = t0 + b, i = outputs[size_t(task / per_position)];
      double* row = seed.data() + (b * length + i) * D;
      if (exact)
        row[task % per_position] = 1.0;
      else
        std::copy_n(gaussian.data() + b * D, D, row);
    }
    autograd::backward(y, from_vector(seed, {n, length, D}, y.options()));

    // Only the rows at the sources are needed: (n, last_source + 1 - first_source, D).
    const int64_t span = last_source + 1 - first_source;
    std::vector<double> grad = ops::narrow(xb.grad(), 1, first_source, span).to_vector<double>();
    const double weight = exact ? 1.0 : 1.0 / double(opt.probes);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t i = outputs[size_t((t0 + b) / per_position)];
      for (int64_t s = 0; s < n_sources; ++s) {
        const int64_t j = opt.sources[size_t(s)], l = i - j;
        if (l < 1 || l > opt.lags.back() || lag_index[size_t(l)] < 0) continue;
        const double* g = grad.data() + (b * span + (j - first_source)) * D;
        double sq = 0;
        for (int64_t d = 0; d < D; ++d) sq += g[d] * g[d];
        squares[size_t(s)][size_t(lag_index[size_t(l)])] += weight * sq;
      }
    }
    t0 = t1;
    if (opt.progress) opt.progress({t1 / per_position, int64_t(outputs.size()), length});
  }
  for (auto& row : squares)
    for (double& v : row) v = std::sqrt(v / double(D));
  return squares;
}

std::vector<int64_t> lag_grid(int64_t max_lag, int64_t per_decade) {
  SESSA_CHECK(max_lag >= 1 && per_decade >= 0, "lag_grid",
              "need max_lag >= 1 and per_decade >= 0, got " << max_lag << " and " << per_decade);
  std::vector<int64_t> lags;
  if (per_decade == 0) {
    for (int64_t l = 1; l <= max_lag; ++l) lags.push_back(l);
    return lags;
  }
  const double steps = std::ceil(std::log10(double(max_lag)) * double(per_decade));
  for (int64_t k = 0; k <= int64_t(steps); ++k) {
    const double value = steps > 0 ? std::pow(double(max_lag), double(k) / steps) : 1.0;
    const int64_t l = std::clamp<int64_t>(int64_t(std::llround(value)), 1, max_lag);
    if (lags.empty() || l > lags.back()) lags.push_back(l);
  }
  if (lags.back() != max_lag) lags.push_back(max_lag);
  return lags;
}

CurveSummary summarize(const std::vector<std::vector<double>>& samples) {
  SESSA_CHECK(!samples.empty(), "summarize", "no samples");
  const size_t n_lags = samples.front().size();
  CurveSummary out;
  std::vector<double> column(samples.size());
  auto quantile = [&](double q) {
    const double pos = q * double(column.size() - 1);
    const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, column.size() - 1);
    return column[lo] + (pos - double(lo)) * (column[hi] - column[lo]);
  };
  for (size_t k = 0; k < n_lags; ++k) {
    double total = 0;
    for (size_t s = 0; s < samples.size(); ++s) {
      SESSA_CHECK(samples[s].size() == n_lags, "summarize", "samples have different numbers of lags");
      total += column[s] = samples[s][k];
    }
    std::sort(column.begin(), column.end());
    out.mean.push_back(total / double(column.size()));
    out.q10.push_back(quantile(0.1));
    out.q50.push_back(quantile(0.5));
    out.q90.push_back(quantile(0.9));
  }
  return out;
}

namespace {
// Least-squares slope of ys on xs.
double slope(const std::vector<double>& xs, const std::vector<double>& ys) {
  if (xs.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  double mx = 0, my = 0;
  for (size_t k = 0; k < xs.size(); ++k) mx += xs[k], my += ys[k];
  mx /= double(xs.size());
  my /= double(xs.size());
  double sxy = 0, sxx = 0;
  for (size_t k = 0; k < xs.size(); ++k) sxy += (xs[k] - mx) * (ys[k] - my), sxx += (xs[k] - mx) * (xs[k] - mx);
  return sxx > 0 ? sxy / sxx : std::numeric_limits<double>::quiet_NaN();
}

double fit(const std::vector<int64_t>& lags, const std::vector<double>& values, int64_t from, int64_t to, bool log_x) {
  SESSA_CHECK(lags.size() == values.size(), "fit", "lags and values differ in length");
  std::vector<double> xs, ys;
  for (size_t k = 0; k < lags.size(); ++k) {
    if (lags[k] < from || lags[k] > to || !(values[k] > 0) || !std::isfinite(values[k])) continue;
    xs.push_back(log_x ? std::log(double(lags[k])) : double(lags[k]));
    ys.push_back(std::log(values[k]));
  }
  return slope(xs, ys);
}
}  // namespace

double loglog_slope(const std::vector<int64_t>& lags, const std::vector<double>& values, int64_t from, int64_t to) {
  return fit(lags, values, from, to, true);
}

double loglinear_slope(const std::vector<int64_t>& lags, const std::vector<double>& values, int64_t from, int64_t to) {
  return fit(lags, values, from, to, false);
}

}  // namespace sessa::layer
