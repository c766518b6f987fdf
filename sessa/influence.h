// Memory tails (docs/memory.md): how strongly the input at a source position j
// reaches the output at position j + l, for every lag l, measured through autodiff.
//
// Influence at lag l = ||d y_{j+l} / d x_j||_F / sqrt(D): the Frobenius norm of the
// (D, D) Jacobian block, divided by sqrt(D) so that a block c * I reads c.
// Each block row comes from one vector-Jacobian product: seeding the backward with a
// probe u at output position i gives u^T d y_i / d x_k for every source k at once.
// Exact mode uses the D basis vectors as probes (sum of squares = ||J||_F^2);
// probe mode uses P Gaussian probes (E ||u^T J||^2 = ||J||_F^2, averaged).
// Probes run as batch elements of one forward/backward: the input is replicated
// over the batch, so batch element b carries its own gradient. The map must be
// causal and act on each batch element independently, which all our blocks do;
// output position i is then measured on the prefix x[0 : i + 1] only.
#pragma once
#include <functional>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sessa::layer {

// A causal sequence map (B, T, D) -> (B, T, D), differentiable through autograd.
using SequenceMap = std::function<Tensor(const Tensor&)>;

// Where a measurement stands, after each forward/backward pass: the output positions
// finished (of those the lags need) and the prefix length of the pass just done.
struct InfluenceProgress {
  int64_t outputs_done = 0, outputs_total = 0, length = 0;
};

struct InfluenceOptions {
  std::vector<int64_t> sources{0};  // source positions j, ascending
  std::vector<int64_t> lags;        // lags l >= 1 to measure, ascending; need max(sources) + max(lags) < T
  int64_t probes = 0;               // 0: exact (D basis probes); > 0: that many Gaussian probes
  int64_t batch = 0;                // probes per forward/backward pass; 0: influence_batch's choice
  std::function<void(const InfluenceProgress&)> progress = {};  // called after each pass, when set
};

// Probes per forward/backward pass over a prefix of `length` positions of width
// `width`: `batch` when > 0, else chosen so that the (n, L, L) attention/feedback
// matrices stay under ~2^26 elements and each (n, L, D) activation under ~2^21
// (1 at least, 512 at most).
int64_t influence_batch(int64_t length, int64_t width, int64_t batch);

// For one input x (1, T, D): result[s][k] = influence of x at sources[s] on the
// output at sources[s] + lags[k]. Parameters of `map` should not require grad
// (their gradients would be computed for nothing). `gen` draws the probes.
std::vector<std::vector<double>> measure_influence(const SequenceMap& map, const Tensor& x, const InfluenceOptions& opt,
                                                   Generator& gen);

// Lags 1..max_lag: all of them (per_decade 0), or about per_decade per decade,
// geometrically spaced and rounded to distinct integers (always including 1 and max_lag).
std::vector<int64_t> lag_grid(int64_t max_lag, int64_t per_decade);

// Summary of a curve over samples: per lag the mean and the 10/50/90% quantiles
// (linear interpolation between order statistics).
struct CurveSummary {
  std::vector<double> mean, q10, q50, q90;
};
CurveSummary summarize(const std::vector<std::vector<double>>& samples_by_lag);  // [sample][lag]

// Least-squares slope of log(value) against log(lag) (power-law exponent) or against
// lag (log of the per-step factor), over lags in [from, to] with value > 0. NaN
// when fewer than two points qualify.
double loglog_slope(const std::vector<int64_t>& lags, const std::vector<double>& values, int64_t from, int64_t to);
double loglinear_slope(const std::vector<int64_t>& lags, const std::vector<double>& values, int64_t from, int64_t to);

}  // namespace sessa::layer
