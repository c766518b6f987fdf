// apps/train: trains a Sessa, Transformer or Mamba language model on token shards.
//
//   train --model sessa --preset tiny --data runs/data --steps 1000 --out runs/sessa
//
// Prints a progress line per step, evaluates periodically, writes log.csv and
// loss.svg, and checkpoints into --out. --resume DIR continues a run exactly where
// its latest checkpoint stopped. README.md "When things go wrong" covers the rest:
// one process per run directory (run.lock), SIGINT/SIGTERM/SIGHUP/SIGUSR1
// checkpoint before exiting, steps with a non-finite loss are skipped and too many
// in a row stop the run, and no file of the run is left half-written.
//
// Data parallel: `mpirun -np N train ...` runs N ranks, each on its own slice of
// the data (and its own GPU); --batch is per rank, gradients are averaged over the
// ranks, and only rank 0 prints and writes the run directory (README.md).
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/memory_check.h"
#include "apps/common/model_flags.h"
#include "apps/common/run_files.h"
#include "apps/common/run_lock.h"
#include "apps/common/signals.h"
#include "apps/common/svg_plot.h"
#include "apps/train_flags.h"
#include "data/file_util.h"
#include "dist/data_parallel.h"
#include "nn/checkpoint.h"
#include "nn/family.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tensor/cuda_hooks.h"

namespace fs = std::filesystem;
using namespace sessa;
using apps::train::add_flags;
using apps::train::Flags;

namespace {

std::string human_duration(double seconds) {
  char buf[32];
  int64_t s = int64_t(seconds);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", long(s / 3600), long(s % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", long(s / 60), long(s % 60));
  return buf;
}

// --data DIR means DIR/train.bin (and DIR/val.bin unless --val-data says otherwise).
void resolve_data(Flags& f) {
  if (!f.data.empty() && fs::is_directory(f.data)) {
    if (f.val_data.empty() && fs::exists(fs::path(f.data) / "val.bin"))
      f.val_data = (fs::path(f.data) / "val.bin").string();
    f.data = (fs::path(f.data) / "train.bin").string();
  }
}

// The run directory: run.lock, checkpoints, log.csv, loss.svg. Only rank 0 has one.
class RunDir {
 public:
  static constexpr const char* kLogHeader = "step,loss,lr,grad_norm,ms_per_step,tokens_per_s,val_loss";

  // Takes the directory's lock and clears temporaries left by a crashed process.
  RunDir(const std::string& path, const std::string& flag) : path_(path), lock_(path, flag, "train") {
    if (!lock_.reclaimed_from().empty())
      apps::note("%s was left by a process that no longer runs (%s): reclaimed", lock_.path().c_str(),
                 lock_.reclaimed_from().c_str());
    for (const std::string& name : apps::remove_stale_temporaries(path))
      apps::note("removed %s/%s, a temporary file left by a crashed run", path.c_str(), name.c_str());
  }
  // A fresh log.csv; when resuming, the rows up to the checkpoint's step are kept
  // (later ones belong to steps the run will redo) and the curves reloaded.
  void open_log(int64_t resumed_step) {
    log_.emplace((fs::path(path_) / "log.csv").string(), kLogHeader, resumed_step);
    for (const std::vector<std::string>& col : log_->kept_rows()) {
      if (col.size() != 7) continue;
      if (!col[1].empty()) train_.points.push_back({std::stod(col[0]), std::stod(col[1])});
      if (!col[6].empty()) val_.points.push_back({std::stod(col[0]), std::stod(col[6])});
    }
  }
  void log(int64_t step, const nn::StepResult& r, double lr, double ms, double tps) {
    char row[256];
    std::snprintf(row, sizeof row, "%ld,%.9g,%.9g,%.9g,%.6g,%.6g,", long(step), r.loss, lr, r.grad_norm, ms, tps);
    log_->append(row);
    train_.points.push_back({double(step), r.loss});
  }
  void log_val(int64_t step, double val_loss) {
    char row[64];
    std::snprintf(row, sizeof row, "%ld,,,,,,%.9g", long(step), val_loss);
    log_->append(row);
    val_.points.push_back({double(step), val_loss});
    plot();
  }
  void plot() {
    data::write_text_file_atomic(
        (fs::path(path_) / "loss.svg").string(),
        apps::svg_line_plot({train_, val_}, "loss", "step", "cross-entropy (nats/token)", true));
  }
  // Writes ckpt_<step>.safetensors and points latest.safetensors at it; refuses
  // (before writing anything) when a weight or a moment is not finite.
  std::string checkpoint(const nn::LanguageModel& model, const nn::ParameterBuffer& weights,
                         const nn::OptimizerState& opt, const data::Json& training, int64_t step) {
    SESSA_CHECK(nn::all_finite(weights.data()) && nn::all_finite(opt.m) && nn::all_finite(opt.v), "checkpoint",
                "step " << step << ": the weights or optimizer moments are not finite; no checkpoint written and "
                        << "latest.safetensors left at the last good one");
    char name[64];
    std::snprintf(name, sizeof name, "ckpt_%07ld.safetensors", long(step));
    const fs::path file = fs::path(path_) / name, link = fs::path(path_) / "latest.safetensors",
                   tmp_link = fs::path(path_) / ("latest.safetensors.tmp." + std::to_string(getpid()));
    nn::save_checkpoint(file.string(), model, model.config(), &opt, training);
    log_->sync();
    fs::remove(tmp_link);
    fs::create_symlink(name, tmp_link);
    fs::rename(tmp_link, link);  // atomic switch of the pointer
    return file.string();
  }

 private:
  std::string path_;
  apps::RunLock lock_;
  std::optional<apps::CsvLog> log_;
  apps::Series train_{"train", "#1f77b4", {}}, val_{"validation", "#d62728", {}};
};

// The flags that define a run, saved in every checkpoint so --resume continues
// with the same schedule, batch and data unless a flag is given again.
data::Json run_flags(const Flags& f) {
  data::Json j = data::Json::object();
  j["data"] = f.data, j["val_data"] = f.val_data, j["batch"] = f.batch, j["seq_len"] = f.seq_len;
  j["steps"] = f.steps, j["warmup"] = f.warmup, j["accum"] = f.accum, j["lr"] = f.lr;
  j["weight_decay"] = f.weight_decay, j["grad_clip"] = f.grad_clip, j["seed"] = int64_t(f.seed);
  return j;
}

void restore_flags(Flags& f, const data::JsonFields& saved, const CLI::App& app) {
  auto take = [&](const char* key, const char* flag, auto& field) {
    if (apps::given(app, flag) || !saved.has(key)) return;
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, std::string>)
      field = saved.string(key);
    else if constexpr (std::is_same_v<T, double>)
      field = saved.number(key);
    else
      field = T(saved.integer(key));
  };
  take("data", "--data", f.data), take("val_data", "--val-data", f.val_data), take("batch", "--batch", f.batch);
  take("seq_len", "--seq-len", f.seq_len), take("steps", "--steps", f.steps), take("warmup", "--warmup", f.warmup);
  take("accum", "--accum", f.accum), take("lr", "--lr", f.lr), take("weight_decay", "--weight-decay", f.weight_decay);
  take("grad_clip", "--grad-clip", f.grad_clip), take("seed", "--seed", f.seed);
}

// The number of ranks a checkpoint was written with (1 before data parallelism).
int64_t saved_world(const data::JsonFields& training) {
  return training.has("data_world") ? training.integer("data_world", 1) : 1;
}

// Where the data loader stands, counted in windows of the whole job, so a run can
// resume with another number of ranks (or micro-batch) as long as it divides.
int64_t resume_position(const data::JsonFields& training, int64_t batch, int world) {
  const int64_t windows =
      training.integer("data_position", 0) * training.object("flags").integer("batch", 1) * saved_world(training);
  SESSA_CHECK(windows % (batch * world) == 0, "--resume",
              "the run consumed " << windows << " windows of its epoch, which do not split into batches of " << batch
                                  << " x " << world
                                  << " ranks; keep the global batch (batch x ranks x accum) of the saved run");
  return windows / (batch * world);
}

// A token loader whose errors name the flag and the files it read.
data::TokenLoader open_loader(const std::string& flag, const std::string& paths, const data::LoaderConfig& config,
                              const char* what) {
  try {
    return data::TokenLoader(data::expand_paths(paths), config);
  } catch (const std::exception& e) {
    SESSA_FAIL(flag, "the " << what << " set '" << paths << "': " << e.what());
  }
}

// One training run, in the order run() calls its steps.
class Training {
 public:
  Training(Flags f, const CLI::App& app, dist::World& world) : f_(std::move(f)), app_(app), world_(world) {}

  int run() {
    configure_device();
    open_run_directory();
    build_model();
    open_data();
    print_summary();
    const bool stopped = train_loop();
    return finish(stopped);
  }

 private:
  bool lead() const { return world_.rank() == 0; }  // rank 0 reports and owns the run directory

  void configure_device() {
    if (f_.threads > 0) omp_set_num_threads(f_.threads);
    device_ = dist::device_for_rank(world_, f_.device);
    dtype_ = dtype_from_name(f_.dtype);
    SESSA_CHECK(dtype_ == DType::F32 || device_.is_cuda(), "--dtype", "bf16 mixed precision needs --device cuda");
    SESSA_CHECK(!f_.zero1 || world_.distributed(), "--zero1",
                "shards the optimizer over ranks: launch with mpirun -np N (N > 1)");
  }

  // --out (or the --resume directory): locked, cleaned, and for --resume the
  // checkpoint read and the saved flags restored.
  void open_run_directory() {
    std::string ckpt_path;
    const bool resume_dir = !f_.resume.empty() && fs::is_directory(f_.resume);
    if (!f_.resume.empty() && !resume_dir) ckpt_path = apps::resolve_run_checkpoint(f_.resume, "--resume");
    if (f_.resume.empty()) {
      SESSA_CHECK(!f_.data.empty(), "--data", "no training data given");
      config_ = apps::model_config(f_.model, f_.vocab);
      apps::check_fits_in_memory(config_, f_.batch, f_.seq_len, device_);  // before anything is written
    } else if (!apps::given(app_, "--out")) {
      f_.out = resume_dir ? f_.resume : fs::path(ckpt_path).parent_path().string();
    }
    if (f_.out.empty()) f_.out = "runs/" + f_.model.model + "-" + f_.model.preset;
    // The lock comes before reading the run's checkpoint: a running run may not have written one yet.
    const char* out_flag = apps::given(app_, "--out") || f_.resume.empty() ? "--out" : "--resume";
    if (lead()) run_dir_.emplace(f_.out, out_flag);
    if (f_.resume.empty()) {
      SESSA_CHECK(!fs::exists(fs::path(f_.out) / "latest.safetensors") &&
                      !fs::is_symlink(fs::path(f_.out) / "latest.safetensors"),
                  "--out",
                  f_.out << " already holds a run (latest.safetensors); continue it with --resume " << f_.out
                         << " or choose another --out");
      return;
    }
    if (resume_dir) ckpt_path = apps::resolve_run_checkpoint(f_.resume, "--resume");
    ckpt_ = nn::read_checkpoint(ckpt_path);
    config_ = ckpt_->config;
    check_model_flags_agree();
    const data::JsonFields training = ckpt_->training_fields();
    if (training.has("flags")) restore_flags(f_, training.object("flags"), app_);
    start_step_ = training.integer("step", 0);
    SESSA_CHECK(f_.steps > start_step_, (apps::given(app_, "--steps") ? "--steps" : "--resume"),
                "the run is already at step " << start_step_ << " (" << ckpt_->path << "), "
                                              << (apps::given(app_, "--steps") ? "past --steps " : "the end of its ")
                                              << f_.steps << (apps::given(app_, "--steps") ? "" : " steps")
                                              << ": nothing to train; give --steps N with N > " << start_step_
                                              << " to train further");
    apps::check_fits_in_memory(config_, f_.batch, f_.seq_len, device_);
  }

  // The architecture of a resumed run is the checkpoint's: a model flag given again
  // must describe it (repeating the original command line is fine), else refused.
  void check_model_flags_agree() const {
    const nn::ModelConfig& c = config_;
    const apps::ModelFlags& m = f_.model;
    const int64_t kv = c.n_kv_heads > 0 ? c.n_kv_heads : c.n_heads;
    const nn::ModelConfig p = nn::preset(nn::family_info(c.family).name, m.preset, c.vocab_size);
    const bool same[] = {nn::family_from_name(m.model) == c.family,
                         (apps::given(app_, "--d-model") || p.d_model == c.d_model) &&
                             (apps::given(app_, "--layers") || p.n_layers == c.n_layers) &&
                             (apps::given(app_, "--heads") || p.n_heads == c.n_heads),
                         m.d_model == c.d_model,
                         m.layers == c.n_layers,
                         m.heads == c.n_heads,
                         (m.kv_heads > 0 ? m.kv_heads
                          : m.heads > 0  ? m.heads
                                         : c.n_heads) == kv,
                         f_.vocab == c.vocab_size};
    const char* flags[] = {"--model", "--preset", "--d-model", "--layers", "--heads", "--kv-heads", "--vocab"};
    for (size_t i = 0; i < std::size(flags); ++i)
      SESSA_CHECK(!apps::given(app_, flags[i]) || same[i], flags[i],
                  "differs from the checkpoint being resumed (" << ckpt_->path << ": " << c.summary()
                                                                << "); a resumed run keeps its architecture: drop "
                                                                << flags[i] << ", or start a new run in another --out");
  }

  void build_model() {
    model_ = build_model_for(config_);
    nn::TrainerOptions topt{.adamw = {.lr = f_.lr, .weight_decay = f_.weight_decay},
                            .grad_clip = f_.grad_clip,
                            .compute_dtype = dtype_,
                            .layout = {.bucket_bytes = std::max<int64_t>(1, int64_t(f_.bucket_mb * (1 << 20)))},
                            .max_bad_steps = f_.max_bad_steps};
    dist::enable_data_parallel(topt, world_, device_, f_.zero1);
    trainer_.emplace(model_, topt);
    if (!ckpt_) return;
    nn::load_parameters(*ckpt_, *model_);
    trainer_->load_optimizer_state(*ckpt_);
  }
  std::shared_ptr<nn::LanguageModel> build_model_for(const nn::ModelConfig& c) {
    return layer::build_model(c, f_.seed, {DType::F32, device_});
  }

  void open_data() {
    SESSA_CHECK(!f_.data.empty(), "--data", "no training data given");
    data::LoaderConfig lc{.batch = f_.batch,
                          .seq_len = f_.seq_len,
                          .seed = f_.seed,
                          .rank = world_.rank(),
                          .world = world_.size(),
                          .vocab = uint32_t(config_.vocab_size)};
    train_loader_.emplace(open_loader("--data", f_.data, lc, "training"));
    if (ckpt_) {
      const data::JsonFields training = ckpt_->training_fields();
      train_loader_->seek(uint64_t(training.integer("data_epoch", 0)),
                          uint64_t(resume_position(training, f_.batch, world_.size())));
      std::printf("resumed from %s at step %ld\n", ckpt_->path.c_str(), long(start_step_));
      const data::JsonFields saved = training.object("flags");
      const int64_t saved_global = saved.integer("batch", 1) * saved.integer("accum", 1) * saved_world(training);
      if (saved_global != f_.batch * f_.accum * world_.size())
        apps::note("the global batch changes from %ld to %ld sequences per step", long(saved_global),
                   long(f_.batch * f_.accum * world_.size()));
    }
    if (!f_.val_data.empty() && lead()) {
      data::LoaderConfig vc = lc;
      vc.shuffle = false, vc.rank = 0, vc.world = 1;  // the same validation batches whatever the world size
      val_loader_.emplace(open_loader("--val-data", f_.val_data, vc, "validation"));
    }
    // Last: the run directory's log is only rewritten once everything above was accepted.
    if (lead()) run_dir_->open_log(ckpt_ ? start_step_ : -1);
  }

  void print_summary() {
    tokens_per_step_ = f_.batch * f_.seq_len * f_.accum * world_.size();
    std::printf("model   %s | %.2fM parameters | %s %s\n", config_.summary().c_str(),
                double(model_->parameter_count()) / 1e6, device_.str().c_str(), dtype_name(dtype_));
    std::printf("data    %s: %lu windows of %ld tokens\n", f_.data.c_str(),
                (unsigned long)train_loader_->total_windows(), long(f_.seq_len));
    std::printf("batch   %ld per rank x %d rank(s) x accum %ld = global batch %ld sequences = %ld tokens/step%s\n",
                long(f_.batch), world_.size(), long(f_.accum), long(f_.batch * world_.size() * f_.accum),
                long(tokens_per_step_), f_.zero1 ? " | ZeRO-1 optimizer sharding" : "");
    std::printf("output  %s\n", f_.out.c_str());
    std::fflush(stdout);
  }

  // Returns true when a stop signal ended the loop early.
  bool train_loop() {
    // One progress line rewritten in place on a terminal; under mpirun (whose output
    // may look like a terminal but is forwarded) a line per --log-every steps.
    const bool tty = isatty(1) && !world_.distributed();
    const double flops_per_step = layer::train_flops_per_token(config_, f_.seq_len) * double(tokens_per_step_);
    const double peak = nn::device_peak_flops(device_, dtype_) * world_.size();
    apps::install_stop_signals();  // all ranks agree on stopping at each step
    const auto t_start = clock::now();
    std::vector<nn::TokenBatch> micro(size_t(f_.accum));
    data::Batch batch;
    step_ = start_step_;
    bool stopped = false;
    while (step_ < f_.steps && !(stopped = world_.any(apps::stop_requested()))) {
      const auto t0 = clock::now();
      for (auto& m : micro) {
        train_loader_->next(batch);
        m = nn::to_device(batch, device_);
      }
      const double lr = nn::cosine_lr(step_, f_.warmup, f_.steps, f_.lr);
      try {
        last_ = trainer_->step(micro, lr);  // reads the loss: the step has finished on the device
      } catch (const Error& e) {
        SESSA_FAIL("step " << step_ + 1, e.what());
      }
      ++step_;
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      const double tps = double(tokens_per_step_) / (ms / 1e3);
      if (lead()) run_dir_->log(step_, last_, lr, ms, tps);
      if (last_.skipped)
        apps::note(
            "step %ld: loss %g, gradient norm %g: not finite, update skipped (the run stops after %ld such "
            "steps in a row)",
            long(step_), last_.loss, last_.grad_norm, long(f_.max_bad_steps));
      if (step_ % f_.log_every == 0 || step_ == f_.steps || tty) {
        const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();
        const double eta = elapsed / double(step_ - start_step_) * double(f_.steps - step_);
        char mfu[32] = "";
        if (peak > 0) std::snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * flops_per_step / (ms / 1e3) / peak);
        std::printf("%sstep %ld/%ld | loss %.4f | lr %.2e | gnorm %.3f | %.1f ms | %.0f tok/s%s | ETA %s%s",
                    tty ? "\r" : "", long(step_), long(f_.steps), last_.loss, lr, last_.grad_norm, ms, tps, mfu,
                    human_duration(eta).c_str(), tty ? "   " : "\n");
        std::fflush(stdout);  // fails quietly when the reader went away (SIGPIPE is ignored)
      }
      if (f_.eval_every > 0 && step_ % f_.eval_every == 0) evaluate(tty);
      if (f_.ckpt_every > 0 && step_ % f_.ckpt_every == 0 && step_ < f_.steps) checkpoint();
    }
    if (tty) std::printf("\n");
    train_seconds_ = std::chrono::duration<double>(clock::now() - t_start).count();
    return stopped;
  }

  void evaluate(bool tty) {
    if (!val_loader_) return;
    val_loader_->seek(0, 0);
    const double v = trainer_->evaluate(*val_loader_, f_.eval_batches);
    run_dir_->log_val(step_, v);
    std::printf("%sstep %ld | validation loss %.4f\n", tty ? "\n" : "", long(step_), v);
  }

  data::Json training_state() const {
    data::Json t = data::Json::object();
    t["step"] = step_;
    t["data_epoch"] = int64_t(train_loader_->epoch());
    t["data_position"] = int64_t(train_loader_->position());
    t["data_world"] = int64_t(world_.size());
    t["flags"] = run_flags(f_);
    return t;
  }

  // No checkpoint right after a skipped step: `latest` stays at a state that trained.
  std::string checkpoint() {
    if (last_.skipped) {
      apps::note("step %ld: no checkpoint after a skipped step (latest.safetensors stays where it was)", long(step_));
      return "(none: the last step was skipped)";
    }
    nn::OptimizerState state = trainer_->optimizer_state();  // every rank: a collective under ZeRO-1
    return lead() ? run_dir_->checkpoint(*model_, trainer_->parameters(), state, training_state(), step_)
                  : std::string();
  }

  int finish(bool stopped) {
    if (f_.eval_every <= 0 || step_ % f_.eval_every != 0) evaluate(false);
    const std::string saved = checkpoint();
    if (lead()) run_dir_->plot();
    if (stopped) {
      std::printf("stopped by %s at step %ld: checkpoint %s (resume with --resume %s)\n",
                  apps::signal_name(apps::stop_signal()), long(step_), saved.c_str(), f_.out.c_str());
      return 130;
    }
    std::printf(
        "done: %ld steps in %s, %.0f tokens/s, final loss %.4f | checkpoint %s | log %s/log.csv, plot %s/loss.svg\n",
        long(step_ - start_step_), human_duration(train_seconds_).c_str(),
        double(tokens_per_step_) * double(step_ - start_step_) / std::max(train_seconds_, 1e-9), last_.loss,
        saved.c_str(), f_.out.c_str(), f_.out.c_str());
    return 0;
  }

  using clock = std::chrono::steady_clock;
  Flags f_;
  const CLI::App& app_;
  dist::World& world_;
  Device device_;
  DType dtype_ = DType::F32;
  nn::ModelConfig config_;
  std::optional<nn::Checkpoint> ckpt_;
  std::optional<RunDir> run_dir_;
  std::shared_ptr<nn::LanguageModel> model_;
  std::optional<nn::Trainer> trainer_;
  std::optional<data::TokenLoader> train_loader_, val_loader_;
  int64_t start_step_ = 0, step_ = 0, tokens_per_step_ = 0;
  nn::StepResult last_;
  double train_seconds_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"Train a language model (" + nn::family_list() + ") on token shards (see README.md)."};
  add_flags(app, f);
  return apps::run_app("train", app, argc, argv, [&](dist::World& world) {
    resolve_data(f);
    return Training(f, app, world).run();
  });
}
