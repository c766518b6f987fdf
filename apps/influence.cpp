// apps/influence: memory tails measured (docs/memory.md). For each model, the
// influence of the input at a source position j on the output at j + l, for every
// lag l: ||d y_{j+l} / d x_j||_F / sqrt(D), through autograd (sessa/influence.h),
// averaged over random inputs (and over the first --sources positions).
//
//   influence --construction sessa-uniform --gamma 0.5 --seq-len 1024 --out runs/tail
//   influence --checkpoint runs/sessa --checkpoint runs/transformer --seq-len 512 --out runs/tails
//
// Models: --construction (explicit one-layer weights with a closed-form tail,
// sessa/memory.h) and --checkpoint (x = the token embeddings entering the layer
// stack, y = the last layer's output before the final norm and head; --layer K
// measures layer K alone, from its real input). Writes DIR/influence.csv
// (lag,mean,q10,q50,q90,closed_form,model) and DIR/influence.svg (log-log), prints
// the fitted log-log slope per model, and as its last line `slope S1 [S2 ...]`
// (one value per model, in the order given: constructions, then checkpoints).
//
// Before any measuring, each model's memory is estimated from the flags (the input,
// the per-lag results and the largest forward/backward pass; constants measured on
// the CPU, docs/memory.md "Limits") and a run that would not fit in this machine's
// memory is refused naming --seq-len (on the CPU; a GPU's allocator reports its own
// out-of-memory); a long run prints where it stands on stderr
// every --progress-every seconds.
#include "sessa/influence.h"

#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/memory_check.h"
#include "apps/common/svg_plot.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "data/file_util.h"
#include "data/loader.h"
#include "nn/checkpoint.h"
#include "sessa/memory.h"
#include "sessa/model.h"

namespace fs = std::filesystem;
using namespace sessa;
using namespace sessa::layer;  // sessa/: build_model, SessaLayer, the feedback solve, influence, memory

namespace {

struct Flags {
  std::vector<std::string> checkpoints, constructions;
  double gamma = 0.5, decay = 0.9;
  int64_t width = 4, seq_len = 0, samples = 4, sources = 1, probes = -1, batch = 0, lags_per_decade = 0;
  int64_t fit_from = 0, fit_to = 0, layer = -1;
  std::string out, data, device = "auto", dtype = "auto";
  uint64_t seed = 1234;
  int threads = 0;
  double progress_every = 5;
};

// One curve: a map, where its inputs come from, and (constructions) the closed form.
struct Model {
  std::string name;
  int64_t width = 0;
  SequenceMap map;
  std::function<Tensor(int64_t sample)> input;                    // (1, T, width)
  std::function<double(int64_t target, int64_t source)> profile;  // empty for checkpoints
  std::string expected;
  std::shared_ptr<nn::Module> owner;  // keeps the parameters alive
  // For the memory estimate: layers the map runs through and the (L, L) matrices
  // per layer and batch element (the heads of a Sessa layer; attention runs in tiles).
  int64_t layers = 1, square_matrices = 0;
};

// Prints `text` (where the measurement stands) and the seconds since it was set, on
// stderr, every `seconds` while the text stays the same: a long pass is never silent.
class Heartbeat {
 public:
  explicit Heartbeat(double seconds) : seconds_(seconds), thread_([this] { loop(); }) {}
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  // A new phase: its start time is now.
  void phase(std::string text) {
    std::lock_guard<std::mutex> lock(mutex_);
    text_ = std::move(text);
    start_ = std::chrono::steady_clock::now();
  }
  // The same phase, further on.
  void update(std::string text) {
    std::lock_guard<std::mutex> lock(mutex_);
    text_ = std::move(text);
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, std::chrono::duration<double>(seconds_), [this] { return stop_; }))
      if (!text_.empty())
        std::fprintf(stderr, "  %s (%.1f s)\n", text_.c_str(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  double seconds_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::string text_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::thread thread_;  // last: starts once the rest is set up
};

std::string num(double v, int precision = 6) {
  std::ostringstream os;
  os.precision(precision);
  os << v;
  return os.str();
}

DType parse_dtype(const std::string& name, Device device) {
  if (name == "auto") return device.is_cuda() ? DType::F32 : DType::F64;
  if (name == "f64" || name == "fp64" || name == "float64") return DType::F64;
  if (name == "f32" || name == "fp32" || name == "float32") return DType::F32;
  SESSA_FAIL("--dtype", "expected f64, f32 or auto, got '" << name << "'");
}

Model construction_model(const std::string& name, const Flags& f, TensorOptions topt, int64_t T) {
  MemoryConstruction c =
      build_construction(name, MemoryConstructionOptions{.d_model = f.width, .gamma = f.gamma, .decay = f.decay}, topt);
  auto gen = std::make_shared<Generator>(f.seed);
  const int64_t D = f.width;
  std::shared_ptr<nn::Block> block = c.block;
  return {c.name,
          D,
          [block](const Tensor& x) { return block->forward(x); },
          [gen, T, D, topt](int64_t) {
            return normal({1, T, D}, 0.0, 1.0, *gen, topt);
          },
          c.profile,
          c.expected,
          block,
          1,
          name == "sessa-uniform" ? 1 : 0};
}

// Token windows for a checkpoint: uniform random ids, or windows of --data.
std::function<std::vector<int32_t>(int64_t)> token_source(const Flags& f, int64_t T, int64_t vocab) {
  if (f.data.empty()) {
    auto gen = std::make_shared<Generator>(f.seed);
    return [gen, T, vocab](int64_t) {
      std::vector<int32_t> ids;
      for (double u : uniform({T}, 0.0, double(vocab), *gen, {DType::F64}).to_vector<double>())
        ids.push_back(int32_t(std::min<double>(std::floor(u), double(vocab - 1))));
      return ids;
    };
  }
  std::string spec = f.data;
  if (fs::is_directory(spec))
    spec = (fs::path(spec) / (fs::exists(fs::path(spec) / "val.bin") ? "val.bin" : "train.bin")).string();
  std::shared_ptr<data::TokenLoader> loader;
  try {
    loader = std::make_shared<data::TokenLoader>(
        data::expand_paths(spec),
        data::LoaderConfig{.batch = 1, .seq_len = T, .seed = f.seed, .vocab = uint32_t(vocab)});
  } catch (const std::exception& e) {
    SESSA_FAIL("--data", e.what());
  }
  return [loader](int64_t) {
    data::Batch b;
    loader->next(b);
    return b.inputs;
  };
}

Model checkpoint_model(const std::string& path, const Flags& f, TensorOptions topt, int64_t T) {
  nn::Checkpoint ckpt;
  try {
    ckpt = nn::read_checkpoint(nn::resolve_checkpoint(path));
  } catch (const std::exception& e) {
    SESSA_FAIL("--checkpoint", e.what());
  }
  const nn::ModelConfig& config = ckpt.config;
  std::shared_ptr<nn::LanguageModel> model = build_model(config, 0, topt);
  nn::load_parameters(ckpt, *model);
  freeze_parameters(*model);
  const int64_t L = config.n_layers;
  SESSA_CHECK(
      f.layer >= -1 && f.layer < L, "--layer",
      "expected -1 (the whole stack) or a layer index in [0, " << L << "), got " << f.layer << " for " << ckpt.path);
  const int64_t first = f.layer < 0 ? 0 : f.layer, last = f.layer < 0 ? L : f.layer + 1;
  auto tokens = token_source(f, T, config.vocab_size);
  // x: the embeddings, run (without gradients) through the layers before `first`.
  auto input = [model, tokens, T, first, topt](int64_t sample) {
    autograd::NoGradGuard no_grad;
    Tensor ids = from_vector(tokens(sample), {1, T}, {DType::I32, topt.device});
    Tensor h = index_select(model->embedding, 0, ids);  // (1, T, D)
    for (int64_t k = 0; k < first; ++k) h = model->layers[size_t(k)]->forward(h);
    return h.detach();
  };
  auto map = [model, first, last](const Tensor& x) {
    Tensor h = x;
    for (int64_t k = first; k < last; ++k) h = model->layers[size_t(k)]->forward(h);
    return h;
  };
  fs::path run_path(path);
  if (run_path.filename().empty()) run_path = run_path.parent_path();  // "runs/x/"
  std::string name = std::string(nn::family_info(config.family).name) + ":" + run_path.filename().string();
  if (f.layer >= 0) name += ":layer" + std::to_string(f.layer);
  const int64_t heads = config.family == nn::Family::sessa ? config.n_heads : 0;
  return {name, config.d_model, map, input, {}, "", model, last - first, heads};
}

// Lags lag_grid(max_lag, per_decade) returns, counted without making them.
int64_t lag_count(int64_t max_lag, int64_t per_decade) {
  if (per_decade == 0) return max_lag;
  return std::min<int64_t>(max_lag, int64_t(std::ceil(std::log10(double(max_lag)) * double(per_decade))) + 2);
}

// Bytes one model's measurement needs at most, from the peak memory measured on the
// CPU (docs/memory.md "Limits"; f64 numbers, scaled by the element size):
//   the input and its seeds              (1 + n) T D elements
//   the results                          ~300 bytes per lag, plus 8 per lag, sample and source
//   the largest pass (n probes, L = T)   64 n L D elements per layer (activations; measured
//                                        <= 45 for mamba-decay), plus (2 + n) L^2 per layer and
//                                        Sessa head (the feedback matrices; measured 15 + 4.5 n
//                                        bytes in f64)
double estimate_bytes(const Model& m, const Flags& f, int64_t seq_len, int64_t probes, DType dtype) {
  const int64_t n_lags = lag_count(seq_len - f.sources, f.lags_per_decade);
  const double T = double(seq_len), D = double(m.width), e = double(dtype_size(dtype));
  const int64_t per_position = probes == 0 ? m.width : probes;
  const double n = double(std::min<int64_t>(influence_batch(seq_len, m.width, f.batch), per_position * n_lags));
  const double input = (1 + n) * T * D * e + 8 * T;
  const double results = double(n_lags) * (300 + 8.0 * double(f.samples + f.sources));
  const double pass = double(m.layers) * (64 * n * T * D + double(m.square_matrices) * (2 + n) * T * T) * e;
  return input + results + pass;
}

std::string gb(double bytes) { return num(bytes / 1e9, 3) + " GB"; }

// The largest --seq-len whose estimate stays under `budget` bytes (the other flags as
// given), or 0 when none does.
int64_t largest_seq_len(const Model& m, const Flags& f, int64_t probes, DType dtype, double budget) {
  int64_t lo = f.sources, hi = f.seq_len;  // estimate(lo) is not known to fit; estimate(hi) does not
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (estimate_bytes(m, f, mid, probes, dtype) < budget ? lo : hi) = mid;
  }
  return lo > f.sources ? lo : 0;
}

int run(const Flags& f) {
  // ---- flags ----
  SESSA_CHECK(!f.checkpoints.empty() || !f.constructions.empty(), "influence",
              "give at least one model: --checkpoint RUN or --construction "
              "sessa-uniform|transformer-uniform|mamba-decay");
  SESSA_CHECK(f.seq_len >= 2, "--seq-len", "must be >= 2, got " << f.seq_len);
  SESSA_CHECK(f.samples >= 1, "--samples", "must be >= 1, got " << f.samples);
  SESSA_CHECK(f.sources >= 1 && f.sources < f.seq_len, "--sources",
              "must lie in [1, --seq-len), got " << f.sources << " with --seq-len " << f.seq_len);
  SESSA_CHECK(f.probes >= -1, "--probes", "must be >= 0 (0: exact), or -1 (auto), got " << f.probes);
  SESSA_CHECK(f.batch >= 0, "--batch", "must be >= 0 (0: automatic), got " << f.batch);
  SESSA_CHECK(f.lags_per_decade >= 0, "--lags-per-decade", "must be >= 0 (0: every lag), got " << f.lags_per_decade);
  SESSA_CHECK(f.width >= 2, "--width", "must be >= 2, got " << f.width);
  SESSA_CHECK(!f.out.empty(), "--out", "an output directory is required");
  if (f.threads > 0) omp_set_num_threads(f.threads);
  Device device;
  try {
    device = parse_device(f.device);
  } catch (const std::exception& e) {
    SESSA_FAIL("--device", "'" << f.device << "': " << e.what());
  }
  const TensorOptions topt{parse_dtype(f.dtype, device), device};
  const int64_t T = f.seq_len, max_lag = T - f.sources;
  const int64_t fit_to = f.fit_to > 0 ? f.fit_to : max_lag;
  const int64_t fit_from = f.fit_from > 0 ? f.fit_from : std::max<int64_t>(1, fit_to / 10);
  SESSA_CHECK(fit_to <= max_lag, "--fit-to", "must be <= the largest lag " << max_lag << " (--seq-len - --sources)");
  SESSA_CHECK(fit_from >= 1 && fit_from < fit_to, "--fit-from",
              "must satisfy 1 <= --fit-from < --fit-to, got " << fit_from << " and " << fit_to);

  SESSA_CHECK(std::isfinite(f.progress_every) && f.progress_every >= 0.01, "--progress-every",
              "expected a finite number of seconds, at least 0.01, got " << f.progress_every);

  // ---- models, and whether their measurement fits in memory ----
  std::vector<Model> models;
  for (const std::string& c : f.constructions) models.push_back(construction_model(c, f, topt, T));
  for (const std::string& c : f.checkpoints) models.push_back(checkpoint_model(c, f, topt, T));
  const int64_t n_lags = lag_count(max_lag, f.lags_per_decade);
  const double memory = apps::host_memory_bytes(), budget = 0.8 * memory;
  std::vector<double> needs;
  for (const Model& m : models) {
    const int64_t probes = f.probes >= 0 ? f.probes : (m.width <= 16 ? 0 : 8);
    needs.push_back(estimate_bytes(m, f, T, probes, topt.dtype));
    // On a GPU the passes live in device memory, whose allocator reports its own out-of-memory.
    if (device.is_cuda() || memory <= 0 || needs.back() < budget) continue;
    const int64_t largest = largest_seq_len(m, f, probes, topt.dtype, budget);
    SESSA_FAIL("--seq-len", m.name << " at --seq-len " << T << " needs about " << gb(needs.back()) << " (" << n_lags
                                   << " lags, the largest pass over all " << T << " positions"
                                   << (f.batch > 0 ? " at --batch " + std::to_string(f.batch) : "") << ", "
                                   << dtype_name(topt.dtype) << "), more than 80% of this machine's " << gb(memory)
                                   << (m.square_matrices > 0 ? " (Sessa's feedback matrices grow as T^2)" : "")
                                   << "; with these flags --seq-len " << largest << " at most fits"
                                   << (largest == 0 ? " (lower --batch or --samples)" : ""));
  }
  // Fail before measuring anything when the output directory cannot be made.
  std::error_code ec;
  fs::create_directories(f.out, ec);
  SESSA_CHECK(!ec && fs::is_directory(f.out), "--out", "cannot create directory " << f.out << ": " << ec.message());

  InfluenceOptions iopt;
  iopt.sources.clear();
  for (int64_t j = 0; j < f.sources; ++j) iopt.sources.push_back(j);
  iopt.lags = lag_grid(max_lag, f.lags_per_decade);
  iopt.batch = f.batch;

  Heartbeat heartbeat(f.progress_every);
  std::string csv = "lag,mean,q10,q50,q90,closed_form,model\n";
  std::vector<apps::Series> series;
  std::vector<double> slopes;
  Generator probe_gen(f.seed ^ 0x9e3779b97f4a7c15ULL);
  for (size_t mi = 0; mi < models.size(); ++mi) {
    const Model& m = models[mi];
    iopt.probes = f.probes >= 0 ? f.probes : (m.width <= 16 ? 0 : 8);
    std::cout << "model " << m.name << ": width " << m.width << ", T " << T << ", " << f.samples
              << " samples, sources 0.." << f.sources - 1 << ", " << iopt.lags.size() << " lags, "
              << (iopt.probes == 0 ? "exact Jacobian blocks" : std::to_string(iopt.probes) + " random probes") << ", "
              << dtype_name(topt.dtype) << " on " << device.str() << ", about " << gb(needs[mi])
              << " of memory (estimate)" << std::endl;
    std::vector<std::vector<double>> per_sample;      // [sample][lag], averaged over sources
    std::vector<double> closed(iopt.lags.size(), 0);  // the closed form scaled per (sample, source)
    for (int64_t s = 0; s < f.samples; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::string sample = "sample " + std::to_string(s + 1) + "/" + std::to_string(f.samples);
      apps::set_activity("measuring " + m.name + " at --seq-len " + std::to_string(T) + ", " + sample);
      heartbeat.phase(sample + ": making the input");
      const Tensor x = m.input(s);
      heartbeat.phase(sample + ": measuring");
      iopt.progress = [&](const InfluenceProgress& p) {
        heartbeat.update(sample + ": " + std::to_string(p.outputs_done) + " of " + std::to_string(p.outputs_total) +
                         " output positions measured (the last pass over " + std::to_string(p.length) + " positions)");
      };
      auto by_source = measure_influence(m.map, x, iopt, probe_gen);
      heartbeat.phase("");
      std::vector<double> curve(iopt.lags.size(), 0);
      for (size_t j = 0; j < by_source.size(); ++j) {
        const int64_t src = iopt.sources[j];
        const double scale = m.profile ? by_source[j][0] / m.profile(src + iopt.lags[0], src) : 0;
        for (size_t k = 0; k < curve.size(); ++k) {
          curve[k] += by_source[j][k] / double(f.sources);
          if (m.profile) closed[k] += scale * m.profile(src + iopt.lags[k], src) / double(f.sources * f.samples);
        }
      }
      per_sample.push_back(curve);
      std::cerr << "  sample " << s + 1 << "/" << f.samples << " ("
                << num(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3) << " s)\n";
    }
    CurveSummary sum = summarize(per_sample);
    for (size_t k = 0; k < iopt.lags.size(); ++k)
      csv += std::to_string(iopt.lags[k]) + "," + num(sum.mean[k], 10) + "," + num(sum.q10[k], 10) + "," +
             num(sum.q50[k], 10) + "," + num(sum.q90[k], 10) + "," + (m.profile ? num(closed[k], 10) : "") + "," +
             m.name + "\n";

    const double slope = loglog_slope(iopt.lags, sum.mean, fit_from, fit_to);
    const double rate = loglinear_slope(iopt.lags, sum.mean, fit_from, fit_to);
    std::cout << "  fitted slope over lags [" << fit_from << ", " << fit_to << "]: " << num(slope, 5);
    if (m.profile)
      std::cout << " (closed form " << num(loglog_slope(iopt.lags, closed, fit_from, fit_to), 5) << "; derived tail "
                << m.expected << ")";
    std::cout << "\n  per-step factor exp(d log influence / d l) over the same lags: " << num(std::exp(rate), 6)
              << "\n";
    slopes.push_back(slope);

    // The closed form first, in gray, so that the measured curve is drawn over it.
    if (m.profile) {
      apps::Series cf{"closed form", "#999999", {}};
      for (size_t k = 0; k < iopt.lags.size(); ++k) cf.points.emplace_back(double(iopt.lags[k]), closed[k]);
      series.push_back(cf);
    }
    apps::Series measured{m.name, "", {}};
    for (size_t k = 0; k < iopt.lags.size(); ++k) measured.points.emplace_back(double(iopt.lags[k]), sum.mean[k]);
    series.push_back(measured);
  }

  data::write_text_file_atomic((fs::path(f.out) / "influence.csv").string(), csv);
  data::write_text_file_atomic((fs::path(f.out) / "influence.svg").string(),
                               apps::svg_line_plot(series, "memory tail: influence of x_j on y_(j+l)", "lag l",
                                                   "||dy_(j+l)/dx_j||_F / sqrt(D)", /*log_y=*/true, /*log_x=*/true));
  std::cout << "wrote " << (fs::path(f.out) / "influence.csv").string() << " and "
            << (fs::path(f.out) / "influence.svg").string() << "\n";
  std::cout << "slope";
  for (double s : slopes) std::cout << " " << num(s, 5);
  std::cout << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "influence: memory tails measured. For each model, the influence ||dy_(j+l)/dx_j||_F / sqrt(D) of the input\n"
      "at source j on the output at j + l, for every lag l, through autograd, averaged over random inputs.\n"
      "Writes DIR/influence.csv and DIR/influence.svg; the last line printed is `slope S1 [S2 ...]`, the fitted\n"
      "log-log slope of each model's mean curve (docs/memory.md)."};
  Flags f;
  app.add_option("--checkpoint", f.checkpoints,
                 "Checkpoint file or run directory (repeatable): x = token embeddings entering the layer stack, "
                 "y = the last layer's output before the final norm and head");
  app.add_option("--construction", f.constructions,
                 "Explicit one-layer construction with a closed-form tail (repeatable): sessa-uniform, "
                 "transformer-uniform, mamba-decay")
      ->check(CLI::IsMember(construction_names()));
  app.add_option("--gamma", f.gamma, "sessa-uniform: the constant feedback gain, in (0, 0.999)")->capture_default_str();
  app.add_option("--decay", f.decay, "mamba-decay: the per-step decay a, in (0, 1)")->capture_default_str();
  app.add_option("--width", f.width, "Constructions: model width D (>= 2)")->capture_default_str();
  app.add_option("--seq-len", f.seq_len,
                 "Sequence length T (>= 2); lags 1 .. T - --sources. Refused when the measurement's memory estimate "
                 "exceeds 80% of this machine's (docs/memory.md \"Limits\")")
      ->required();
  app.add_option("--out", f.out, "Output directory for influence.csv and influence.svg (created if missing)")
      ->required();
  app.add_option("--fit-from", f.fit_from, "First lag of the slope fit (default: --fit-to / 10, the last decade)");
  app.add_option("--fit-to", f.fit_to, "Last lag of the slope fit (default: the largest lag)");
  app.add_option("--samples", f.samples, "Random inputs averaged over (>= 1)")->capture_default_str();
  app.add_option("--sources", f.sources, "Average over source positions 0 .. N-1 (>= 1)")->capture_default_str();
  app.add_option("--probes", f.probes,
                 "Probes per output position: 0 = exact (D basis vectors), N = N Gaussian probes (unbiased for "
                 "the squared norm), -1 = exact when D <= 16, else 8")
      ->capture_default_str();
  app.add_option("--lags-per-decade", f.lags_per_decade,
                 "0 = measure every lag; N = about N geometrically spaced lags per decade (much cheaper at large T)")
      ->capture_default_str();
  app.add_option("--batch", f.batch, "Probes per forward/backward pass (0 = chosen from T and D)")
      ->capture_default_str();
  app.add_option("--layer", f.layer, "Checkpoints: measure layer K alone (from its real input); -1 = the whole stack")
      ->capture_default_str();
  app.add_option("--data", f.data,
                 "Checkpoints: token shards (file, glob or prepared directory, val.bin preferred) to draw input "
                 "windows from; default: uniform random tokens");
  app.add_option("--seed", f.seed, "Seed of the inputs and probes")->capture_default_str();
  app.add_option("--device", f.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", f.dtype, "f64, f32, or auto (f64 on the CPU, f32 on a GPU)")->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads (default: all cores)")->check(apps::thread_count());
  app.add_option("--progress-every", f.progress_every,
                 "Print where a long measurement stands on stderr every this many seconds")
      ->capture_default_str();
  return apps::run_app("influence", app, argc, argv, [&](dist::World&) { return run(f); });
}
