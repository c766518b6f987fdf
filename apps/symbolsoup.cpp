// apps/symbolsoup: the SymbolSoup long-context benchmark (docs/symbolsoup.md) end to end.
//
//   symbolsoup generate --out-dir DIR --train 20000 --val 2000 --test 2000 --min-tokens 400 --max-tokens 600
//   symbolsoup train --data DIR --model sessa --d-model 128 --layers 4 --steps 600 --out RUN
//   symbolsoup eval --checkpoint RUN --test DIR/test.tsv        # last line: accuracy <fraction> on <n> examples
//
// train: a language model reads each example and predicts its class token at the
// <label> position (the loss there, through the cross-entropy ignore index; with
// --lm-weight W > 0 also W times the next-token loss over the example's tokens);
// the optimisation step is nn::Trainer's. It prints a progress line, validation
// accuracy every --eval-every steps, writes log.csv, accuracy.svg, loss.svg and
// latest.safetensors (a checkpoint apps/sample and eval read), and ends with the
// test accuracy (also in RUN/result.json).
#include "data/symbolsoup.h"

#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/label_classifier.h"
#include "apps/common/memory_check.h"
#include "apps/common/model_flags.h"
#include "apps/common/svg_plot.h"
#include "data/file_util.h"
#include "nn/checkpoint.h"
#include "nn/trainer.h"
#include "sessa/model.h"

namespace fs = std::filesystem;
using namespace sessa;
namespace soup = sessa::data::symbolsoup;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string human_duration(double seconds) {
  char buf[32];
  const long s = long(seconds);
  std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

// ---- generate ---------------------------------------------------------------------------

struct GenerateFlags {
  std::string out_dir;
  int64_t train = 20000, val = 2000, test = 2000, min_tokens = 400, max_tokens = 600;
  uint64_t seed = 1;
  std::vector<int> classes;  // empty: all 20
};

int generate(const GenerateFlags& f) {
  SESSA_CHECK(f.min_tokens <= f.max_tokens, "--min-tokens", f.min_tokens << " exceeds --max-tokens " << f.max_tokens);
  fs::create_directories(f.out_dir);
  const std::pair<const char*, int64_t> splits[] = {{"train", f.train}, {"val", f.val}, {"test", f.test}};
  for (int s = 0; s < 3; ++s) {
    const auto t0 = Clock::now();
    const auto examples =
        soup::generate_split(splits[s].second, f.min_tokens, f.max_tokens, soup::split_seed(f.seed, s), f.classes);
    const std::string path = (fs::path(f.out_dir) / (std::string(splits[s].first) + ".tsv")).string();
    soup::write_tsv(path, examples);
    int64_t tokens = 0;
    for (const auto& e : examples) tokens += 2 * e.layout.letters + 13;
    std::printf("%-5s %6ld examples, %ld tokens (mean %.0f), %.2fs -> %s\n", splits[s].first, long(examples.size()),
                long(tokens), examples.empty() ? 0.0 : double(tokens) / double(examples.size()), seconds_since(t0),
                path.c_str());
  }
  return 0;
}

// ---- train --------------------------------------------------------------------------------

struct TrainFlags {
  apps::ModelFlags model;
  std::string data, out, device = "auto", dtype = "fp32";
  int64_t batch = 16, steps = 1000, warmup = 50, eval_every = 100, val_examples = 500, eval_batch = 32, ckpt_every = 0,
          log_every = 10;
  double lr = 1e-3, weight_decay = 0.1, grad_clip = 1.0, lm_weight = 0;
  uint64_t seed = 1;
  int threads = 0;
};

std::vector<soup::TokenizedExample> load_split(const fs::path& path) {
  const auto t0 = Clock::now();
  auto examples = soup::tokenize_all(soup::read_tsv(path.string()));
  int64_t tokens = 0;
  for (const auto& e : examples) tokens += int64_t(e.ids.size());
  std::printf("data    %s: %ld examples, mean %.0f tokens (%.1fs)\n", path.c_str(), long(examples.size()),
              double(tokens) / double(examples.size()), seconds_since(t0));
  return examples;
}

// log.csv, loss.svg and accuracy.svg of a run; every write replaces the file atomically.
class RunLog {
 public:
  // with_lm: the run has a next-token term (--lm-weight > 0); its loss is a last column, lm_loss.
  RunLog(fs::path dir, bool with_lm) : dir_(std::move(dir)), with_lm_(with_lm) {
    csv_ = "step,loss,train_acc,lr,grad_norm,ms_per_step,tokens_per_s,val_loss,val_acc";
    csv_ += with_lm ? ",lm_loss\n" : "\n";
  }
  // loss: at the label positions; lm_loss: the next-token term (read only when with_lm).
  void step(int64_t step, double loss, double acc, double lr, double gnorm, double ms, double tps, double lm_loss) {
    char line[256];
    std::snprintf(line, sizeof line, "%ld,%.6g,%.4f,%.6g,%.6g,%.4g,%.6g,,", long(step), loss, acc, lr, gnorm, ms, tps);
    csv_ += line;
    if (with_lm_) {
      std::snprintf(line, sizeof line, ",%.6g", lm_loss);
      csv_ += line;
      train_lm_loss_.points.push_back({double(step), lm_loss});
    }
    csv_ += "\n";
    train_loss_.points.push_back({double(step), loss});
    train_acc_.points.push_back({double(step), acc});
  }
  void validation(int64_t step, const apps::LabelEval& v) {
    char line[128];
    std::snprintf(line, sizeof line, "%ld,,,,,,,%.6g,%.4f\n", long(step), v.loss, v.hits.accuracy());
    csv_ += line;
    val_loss_.points.push_back({double(step), v.loss});
    val_acc_.points.push_back({double(step), v.hits.accuracy()});
    write();
  }
  void write() const {
    data::write_text_file_atomic((dir_ / "log.csv").string(), csv_);
    std::vector<apps::Series> losses = {train_loss_, val_loss_};
    if (with_lm_) losses.push_back(train_lm_loss_);
    data::write_text_file_atomic(
        (dir_ / "loss.svg").string(),
        apps::svg_line_plot(losses, "SymbolSoup loss", "step",
                            with_lm_ ? "cross-entropy (nats)" : "cross-entropy at <label> (nats)", true));
    data::write_text_file_atomic(
        (dir_ / "accuracy.svg").string(),
        apps::svg_line_plot({train_acc_, val_acc_}, "SymbolSoup accuracy", "step", "class accuracy", false));
  }

 private:
  fs::path dir_;
  bool with_lm_ = false;
  std::string csv_;
  apps::Series train_loss_{"train (per logged window)", "#1f77b4", {}}, val_loss_{"validation", "#d62728", {}};
  apps::Series train_lm_loss_{"train next-token (per logged window)", "#2ca02c", {}};
  apps::Series train_acc_{"train (per logged window)", "#1f77b4", {}}, val_acc_{"validation", "#d62728", {}};
};

data::Json flags_json(const TrainFlags& f, const nn::ModelConfig& c) {
  data::Json j = data::Json::object();
  j["task"] = std::string("symbolsoup");
  j["data"] = f.data, j["model"] = std::string(nn::family_info(c.family).name), j["batch"] = f.batch,
  j["steps"] = f.steps, j["warmup"] = f.warmup;
  j["lr"] = f.lr, j["weight_decay"] = f.weight_decay, j["grad_clip"] = f.grad_clip, j["seed"] = int64_t(f.seed);
  j["dtype"] = f.dtype, j["lm_weight"] = f.lm_weight;
  return j;
}

int train(TrainFlags f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  const Device device = parse_device(f.device);
  const DType dtype = dtype_from_name(f.dtype);
  SESSA_CHECK(dtype == DType::F32 || dtype == DType::BF16, "--dtype", "expected fp32 or bf16, got " << f.dtype);
  SESSA_CHECK(dtype == DType::F32 || device.is_cuda(), "--dtype", "bf16 mixed precision needs --device cuda");
  SESSA_CHECK(fs::is_directory(f.data), "--data", "'" << f.data << "' is not a directory holding train/val/test.tsv");
  for (const char* split : {"train.tsv", "val.tsv", "test.tsv"})
    SESSA_CHECK(
        fs::exists(fs::path(f.data) / split), "--data",
        "'" << f.data << "' has no " << split << " (write one with: symbolsoup generate --out-dir " << f.data << ")");
  if (f.out.empty()) f.out = "runs/symbolsoup-" + f.model.model;
  SESSA_CHECK(!fs::exists(fs::path(f.out) / "latest.safetensors"), "--out",
              f.out << " already holds a run (latest.safetensors); choose another --out");

  const nn::ModelConfig config = apps::model_config(f.model, soup::kVocabSize);
  const auto train_set = load_split(fs::path(f.data) / "train.tsv");
  auto val_set = load_split(fs::path(f.data) / "val.tsv");
  if (f.val_examples > 0 && int64_t(val_set.size()) > f.val_examples) val_set.resize(size_t(f.val_examples));
  const auto test_set = load_split(fs::path(f.data) / "test.tsv");
  size_t longest = 1;
  for (const auto& e : train_set) longest = std::max(longest, e.ids.size());
  for (const auto& e : val_set) longest = std::max(longest, e.ids.size());
  for (const auto& e : test_set) longest = std::max(longest, e.ids.size());
  apps::check_fits_in_memory(config, f.batch, int64_t(longest), device);  // before anything is written
  fs::create_directories(f.out);

  auto model = layer::build_model(config, f.seed, {DType::F32, device});
  apps::LabelHits window_hits;   // training hits since the last progress line
  apps::LossTerms window_terms;  // the label and next-token terms since then (--lm-weight > 0 only)
  const bool with_lm = f.lm_weight > 0;
  nn::TrainerOptions topt{.adamw = {.lr = f.lr, .weight_decay = f.weight_decay},
                          .grad_clip = f.grad_clip,
                          .compute_dtype = dtype,
                          .loss = apps::label_loss(&window_hits, {}, f.lm_weight, with_lm ? &window_terms : nullptr)};
  nn::Trainer trainer(model, topt);
  std::printf("model   %s | %ld parameters | %s %s\n", config.summary().c_str(), long(model->parameter_count()),
              device.str().c_str(), dtype_name(dtype));
  std::printf("train   %ld steps x batch %ld, lr %.2e (warm-up %ld, cosine), seed %lu -> %s\n", long(f.steps),
              long(f.batch), f.lr, long(f.warmup), (unsigned long)f.seed, f.out.c_str());
  if (with_lm)
    std::printf("loss    cross-entropy at <label> + %g x next-token cross-entropy over the example\n", f.lm_weight);

  RunLog log(f.out, with_lm);
  auto evaluate = [&](int64_t step, const std::vector<soup::TokenizedExample>& set, const char* name) {
    const auto t0 = Clock::now();
    apps::LabelEval v = apps::evaluate_labels(*model, set, f.eval_batch, dtype);
    std::printf("step %ld | %s accuracy %.4f on %ld examples | loss %.4f | %.1fs\n", long(step), name,
                v.hits.accuracy(), long(v.hits.total), v.loss, seconds_since(t0));
    std::fflush(stdout);
    return v;
  };
  auto checkpoint = [&](int64_t step) {
    data::Json training = data::Json::object();
    training["step"] = step;
    training["flags"] = flags_json(f, config);
    nn::OptimizerState opt = trainer.optimizer_state();
    nn::save_checkpoint((fs::path(f.out) / "latest.safetensors").string(), *model, config, &opt, training);
  };

  // Epochs over a seeded permutation of the training set.
  soup::Rng order_rng(f.seed ^ 0x0bad5eedULL);
  std::vector<int64_t> order(train_set.size());
  size_t cursor = order.size();
  auto next_rows = [&] {
    std::vector<int64_t> rows;
    while (int64_t(rows.size()) < f.batch) {
      if (cursor == order.size()) {
        std::iota(order.begin(), order.end(), 0);
        for (size_t i = order.size(); i-- > 1;)
          std::swap(order[i], order[size_t(order_rng.uniform_int(0, int64_t(i)))]);
        cursor = 0;
      }
      rows.push_back(order[cursor++]);
    }
    return rows;
  };

  const bool tty = isatty(1);
  const auto t_start = Clock::now();
  double window_loss = 0, tokens_total = 0, last_label_loss = 0, last_lm_loss = 0;
  int64_t window_steps = 0;
  for (int64_t step = 0; step < f.steps;) {
    const auto t0 = Clock::now();
    const data::Batch host = soup::label_batch(train_set, next_rows());
    const double lr = nn::cosine_lr(step, f.warmup, f.steps, f.lr);
    const nn::StepResult r = trainer.step({nn::to_device(host, device)}, lr);
    ++step;
    const double ms = 1e3 * seconds_since(t0), tokens = double(host.B * host.T);
    tokens_total += tokens;
    window_loss += r.loss, ++window_steps;
    SESSA_CHECK(std::isfinite(r.loss), "train", "the loss is " << r.loss << " at step " << step << " (lower --lr)");
    if (step % f.log_every == 0 || step == f.steps) {
      const double elapsed = seconds_since(t_start);
      // Without the next-token term the step loss is the label loss; with it, its terms are apart.
      const double acc = window_hits.accuracy(), terms = double(std::max<int64_t>(1, window_terms.batches));
      last_label_loss = with_lm ? window_terms.label / terms : window_loss / double(window_steps);
      last_lm_loss = with_lm ? window_terms.lm / terms : 0.0;
      log.step(step, last_label_loss, acc, lr, r.grad_norm, ms, tokens / (ms / 1e3), last_lm_loss);
      char losses[96];
      if (with_lm)
        std::snprintf(losses, sizeof losses, "label loss %.4f | lm loss %.4f", last_label_loss, last_lm_loss);
      else
        std::snprintf(losses, sizeof losses, "loss %.4f", last_label_loss);
      std::printf("%sstep %ld/%ld | %s | acc %.3f | lr %.2e | gnorm %.3f | %.1f ms | %.0f tok/s | ETA %s%s",
                  tty ? "\r" : "", long(step), long(f.steps), losses, acc, lr, r.grad_norm, ms, tokens_total / elapsed,
                  human_duration(elapsed / double(step) * double(f.steps - step)).c_str(), tty ? "   " : "\n");
      std::fflush(stdout);
      window_hits = {}, window_terms = {}, window_loss = 0, window_steps = 0;
    }
    if (f.eval_every > 0 && step % f.eval_every == 0 && step < f.steps) {
      if (tty) std::printf("\n");
      log.validation(step, evaluate(step, val_set, "validation"));
    }
    if (f.ckpt_every > 0 && step % f.ckpt_every == 0 && step < f.steps) checkpoint(step);
  }
  if (tty) std::printf("\n");
  const double train_seconds = seconds_since(t_start);
  log.validation(f.steps, evaluate(f.steps, val_set, "validation"));
  checkpoint(f.steps);
  const apps::LabelEval test = evaluate(f.steps, test_set, "test");

  // The train losses are the last progress line's (its window of steps); train_lm_loss only with --lm-weight > 0.
  char lm_fields[96] = "";
  if (with_lm) std::snprintf(lm_fields, sizeof lm_fields, ", \"train_lm_loss\": %.6g", last_lm_loss);
  char result[768];
  std::snprintf(result, sizeof result,
                "{\"model\": \"%s\", \"parameters\": %ld, \"d_model\": %ld, \"layers\": %ld, \"lr\": %g, "
                "\"seed\": %lu, \"steps\": %ld, \"batch\": %ld, \"lm_weight\": %g, \"train_seconds\": %.2f, "
                "\"train_label_loss\": %.6g%s, \"test_accuracy\": %.6f, \"test_examples\": %ld}\n",
                nn::family_info(config.family).name, long(model->parameter_count()), long(config.d_model),
                long(config.n_layers), f.lr, (unsigned long)f.seed, long(f.steps), long(f.batch), f.lm_weight,
                train_seconds, last_label_loss, lm_fields, test.hits.accuracy(), long(test.hits.total));
  data::write_text_file_atomic((fs::path(f.out) / "result.json").string(), result);
  std::printf(
      "done: %ld steps in %s, %.0f tok/s | checkpoint %s/latest.safetensors | log %s/log.csv, plot %s/accuracy.svg\n",
      long(f.steps), human_duration(train_seconds).c_str(), tokens_total / train_seconds, f.out.c_str(), f.out.c_str(),
      f.out.c_str());
  std::printf("test accuracy %.4f on %ld examples\n", test.hits.accuracy(), long(test.hits.total));
  return 0;
}

// ---- eval --------------------------------------------------------------------------------------

struct EvalFlags {
  std::string checkpoint, test, device = "auto", dtype = "fp32";
  int64_t batch = 32;
  int threads = 0;
};

int eval(const EvalFlags& f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  const Device device = parse_device(f.device);
  const DType dtype = dtype_from_name(f.dtype);
  SESSA_CHECK(dtype == DType::F32 || (dtype == DType::BF16 && device.is_cuda()), "--dtype",
              "expected fp32, or bf16 with --device cuda; got " << f.dtype);
  const nn::Checkpoint ckpt = nn::read_checkpoint(nn::resolve_checkpoint(f.checkpoint));
  SESSA_CHECK(ckpt.config.vocab_size == soup::kVocabSize, "--checkpoint",
              ckpt.path << " is not a SymbolSoup model (vocabulary " << ckpt.config.vocab_size << ", expected "
                        << int(soup::kVocabSize) << "): train one with symbolsoup train");
  auto model = layer::build_model(ckpt.config, 0, {DType::F32, device});
  nn::load_parameters(ckpt, *model);
  const auto examples = load_split(f.test);
  const apps::LabelEval v = apps::evaluate_labels(*model, examples, f.batch, dtype);
  std::printf("model   %s from %s\n", ckpt.config.summary().c_str(), ckpt.path.c_str());
  std::printf("loss %.4f\n", v.loss);
  std::printf("accuracy %.4f on %ld examples\n", v.hits.accuracy(), long(v.hits.total));
  return 0;
}

// ---- plot ---------------------------------------------------------------------------------------

struct PlotFlags {
  std::string out, title = "SymbolSoup: validation accuracy";
  std::vector<std::string> runs;
};

// The validation accuracy curves of several runs (their log.csv) in one SVG, one line per run.
int plot(const PlotFlags& f) {
  std::vector<apps::Series> series;
  for (const std::string& run : f.runs) {
    const fs::path csv = fs::path(run) / "log.csv";
    std::ifstream in(csv);
    SESSA_CHECK(in, csv.string(), "cannot open (is '" << run << "' a symbolsoup train run directory?)");
    apps::Series s{fs::path(run).filename().string(), "", {}};
    std::string line;
    std::getline(in, line);
    SESSA_CHECK(line.find("val_acc") != std::string::npos, csv.string(), "not a symbolsoup log (no val_acc column)");
    while (std::getline(in, line)) {
      std::vector<std::string> col;
      std::stringstream ss(line);
      for (std::string c; std::getline(ss, c, ',');) col.push_back(c);
      if (col.size() >= 9 && !col[8].empty()) s.points.push_back({std::stod(col[0]), std::stod(col[8])});
    }
    series.push_back(std::move(s));
  }
  data::write_text_file_atomic(f.out, apps::svg_line_plot(series, f.title, "step", "validation accuracy", false));
  std::printf("wrote %s (%zu runs)\n", f.out.c_str(), series.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "SymbolSoup: generate the long-context classification benchmark, train and evaluate on it "
      "(docs/symbolsoup.md)."};
  constexpr int64_t kMaxSteps = 1'000'000'000'000, kMaxExamples = 100'000'000, kMaxTokens = 1 << 20;
  app.require_subcommand(1);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  GenerateFlags g;
  CLI::App* gen = app.add_subcommand("generate", "Write DIR/{train,val,test}.tsv");
  gen->add_option("--out-dir", g.out_dir, "Output directory")->required();
  gen->add_option("--train", g.train, "Training examples")
      ->check(apps::non_negative_int(kMaxExamples))
      ->capture_default_str();
  gen->add_option("--val", g.val, "Validation examples")
      ->check(apps::non_negative_int(kMaxExamples))
      ->capture_default_str();
  gen->add_option("--test", g.test, "Test examples")
      ->check(apps::non_negative_int(kMaxExamples))
      ->capture_default_str();
  gen->add_option("--min-tokens", g.min_tokens, "Shortest example (tokens)")
      ->check(apps::positive_int(kMaxTokens))
      ->capture_default_str();
  gen->add_option("--max-tokens", g.max_tokens, "Longest example (tokens)")
      ->check(apps::positive_int(kMaxTokens))
      ->capture_default_str();
  gen->add_option("--seed", g.seed, "Seed of the examples (the styles are fixed)")
      ->check(apps::seed_number())
      ->capture_default_str();
  gen->add_option("--classes", g.classes, "Only these classes, e.g. 0,18 (an easier variant; default all 20)")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->check(apps::whole_number(0, soup::kClasses - 1));

  TrainFlags t;
  CLI::App* tr = app.add_subcommand("train", "Train a classifier on DIR/train.tsv; validate; report test accuracy");
  apps::add_model_flags(*tr, t.model);
  tr->add_option("--data", t.data, "Directory with train.tsv, val.tsv, test.tsv")->required();
  tr->add_option("--out", t.out, "Run directory (default runs/symbolsoup-<model>)");
  tr->add_option("--batch", t.batch, "Examples per step")->check(apps::positive_int(1 << 20))->capture_default_str();
  tr->add_option("--steps", t.steps, "Optimizer steps")->check(apps::positive_int(kMaxSteps))->capture_default_str();
  tr->add_option("--lr", t.lr, "Peak learning rate")->check(apps::finite_positive(10))->capture_default_str();
  tr->add_option("--warmup", t.warmup, "Warm-up steps before the cosine decay")
      ->check(apps::non_negative_int(kMaxSteps))
      ->capture_default_str();
  tr->add_option("--weight-decay", t.weight_decay, "AdamW weight decay")
      ->check(apps::finite_non_negative(100))
      ->capture_default_str();
  tr->add_option("--grad-clip", t.grad_clip, "Global gradient-norm clip (0: off)")
      ->check(apps::finite_non_negative(1e6))
      ->capture_default_str();
  tr->add_option("--lm-weight", t.lm_weight,
                 "Weight of the next-token loss over each example's tokens beside the <label> loss (0: label only)")
      ->check(apps::finite_non_negative(1e6))
      ->capture_default_str();
  tr->add_option("--eval-every", t.eval_every, "Validation every N steps (0: only at the end)")
      ->check(apps::non_negative_int(kMaxSteps))
      ->capture_default_str();
  tr->add_option("--val-examples", t.val_examples, "Validation examples used (0: all)")
      ->check(apps::non_negative_int(kMaxExamples))
      ->capture_default_str();
  tr->add_option("--eval-batch", t.eval_batch, "Examples per evaluation batch")
      ->check(apps::positive_int(1 << 20))
      ->capture_default_str();
  tr->add_option("--ckpt-every", t.ckpt_every, "Checkpoint every N steps (always at the end)")
      ->check(apps::non_negative_int(kMaxSteps))
      ->capture_default_str();
  tr->add_option("--log-every", t.log_every, "Progress line every N steps")
      ->check(apps::positive_int(kMaxSteps))
      ->capture_default_str();
  tr->add_option("--device", t.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  tr->add_option("--dtype", t.dtype, "fp32, or bf16 mixed precision (CUDA)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  tr->add_option("--seed", t.seed, "Seed of the initialisation and the data order")
      ->check(apps::seed_number())
      ->capture_default_str();
  tr->add_option("--threads", t.threads, "CPU threads (default: all cores)")->check(apps::thread_count());

  EvalFlags e;
  CLI::App* ev = app.add_subcommand("eval", "Accuracy of a trained run on a TSV file (last line: accuracy ...)");
  ev->add_option("--checkpoint", e.checkpoint, "Run directory or checkpoint file")->required();
  ev->add_option("--test", e.test, "TSV file (Text<TAB>Answer)")->required();
  ev->add_option("--batch", e.batch, "Examples per batch")->check(apps::positive_int(1 << 20))->capture_default_str();
  ev->add_option("--device", e.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  ev->add_option("--dtype", e.dtype, "fp32, or bf16 (CUDA)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  ev->add_option("--threads", e.threads, "CPU threads (default: all cores)")->check(apps::thread_count());

  PlotFlags p;
  CLI::App* pl = app.add_subcommand("plot", "Validation-accuracy curves of several train runs in one SVG");
  pl->add_option("--out", p.out, "SVG file to write")->required();
  pl->add_option("--title", p.title, "Plot title")->capture_default_str();
  pl->add_option("runs", p.runs, "Run directories (written by symbolsoup train)")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

  return apps::run_app("symbolsoup", app, argc, argv, [&](dist::World&) {
    if (gen->parsed()) return generate(g);
    if (tr->parsed()) return train(t);
    if (pl->parsed()) return plot(p);
    return eval(e);
  });
}
