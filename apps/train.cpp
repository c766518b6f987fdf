// apps/train: trains a Sessa, Transformer or Mamba language model on token shards.
//
//   train --model sessa --preset tiny --data runs/data --steps 1000 --out runs/sessa
//
// Prints a progress line per step, evaluates periodically, writes log.csv and
// loss.svg, and checkpoints into --out (Ctrl-C checkpoints before exiting).
// --resume DIR continues a run exactly where its latest checkpoint stopped.
//
// Data parallel: `mpirun -np N train ...` runs N ranks, each on its own slice of
// the data (and its own GPU); --batch is per rank, gradients are averaged over the
// ranks, and only rank 0 prints and writes the run directory (README.md).
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include "apps/common/svg_plot.h"
#include "data/file_util.h"
#include "dist/data_parallel.h"
#include "nn/checkpoint.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tensor/cuda_hooks.h"

namespace fs = std::filesystem;
using namespace sessa;

namespace {

struct Flags {
  std::string model = "sessa", preset = "tiny", match_params;
  int64_t d_model = 0, layers = 0, heads = 0, kv_heads = -1, vocab = 257;
  std::string data, val_data, out, resume;
  int64_t batch = 16, seq_len = 128, steps = 1000, warmup = 50, accum = 1;
  double lr = 3e-3, weight_decay = 0.1, grad_clip = 1.0;
  std::string device = "auto", dtype = "fp32";
  uint64_t seed = 1337;
  int64_t ckpt_every = 500, eval_every = 100, eval_batches = 20, log_every = 10;
  int threads = 0;
  bool zero1 = false;
  double bucket_mb = 32;
};

volatile std::sig_atomic_t g_interrupted = 0;
void on_stop_signal(int) { g_interrupted = 1; }

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

nn::ModelConfig config_from_flags(const Flags& f) {
  nn::ModelConfig c = nn::preset(f.model, f.preset, f.vocab);
  if (f.d_model > 0) c.d_model = f.d_model;
  if (f.layers > 0) c.n_layers = f.layers;
  if (f.heads > 0) c.n_heads = f.heads;
  if (f.kv_heads >= 0) c.n_kv_heads = f.kv_heads;
  c.validate();
  if (!f.match_params.empty()) {
    nn::ModelConfig reference = c;
    reference.family = nn::family_from_name(f.match_params);
    const int64_t target = parameter_count(reference);
    c = match_parameters(c, target);
    std::printf("matched to %s (%.2fM parameters): %ld layers\n", f.match_params.c_str(), double(target) / 1e6,
                long(c.n_layers));
  }
  return c;
}

// The run directory: checkpoints, log.csv, loss.svg.
class RunDir {
 public:
  RunDir(const std::string& path, bool resuming) : path_(path) {
    fs::create_directories(path);
    const fs::path csv = fs::path(path) / "log.csv";
    const bool append = resuming && fs::exists(csv) && fs::file_size(csv) > 0;
    log_.open(csv, append ? std::ios::app : std::ios::trunc);
    if (!log_) throw Error("train: cannot write " + csv.string());
    if (!append) log_ << "step,loss,lr,grad_norm,ms_per_step,tokens_per_s,val_loss\n";
  }
  void log(int64_t step, const nn::StepResult& r, double lr, double ms, double tps) {
    log_ << step << ',' << r.loss << ',' << lr << ',' << r.grad_norm << ',' << ms << ',' << tps << ",\n";
    log_.flush();
    train_.points.push_back({double(step), r.loss});
  }
  void log_val(int64_t step, double val_loss) {
    log_ << step << ",,,,,," << val_loss << '\n';
    log_.flush();
    val_.points.push_back({double(step), val_loss});
    plot();
  }
  void plot() {
    data::write_text_file_atomic(
        (fs::path(path_) / "loss.svg").string(),
        apps::svg_line_plot({train_, val_}, "loss", "step", "cross-entropy (nats/token)", true));
  }
  // Writes ckpt_<step>.safetensors and points latest.safetensors at it.
  std::string checkpoint(const nn::LanguageModel& model, const nn::OptimizerState& opt, const data::Json& training,
                         int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "ckpt_%07ld.safetensors", long(step));
    fs::path file = fs::path(path_) / name, link = fs::path(path_) / "latest.safetensors",
             tmp_link = fs::path(path_) / ".latest.tmp";
    nn::save_checkpoint(file.string(), model, model.config(), &opt, training);
    fs::remove(tmp_link);
    fs::create_symlink(name, tmp_link);
    fs::rename(tmp_link, link);  // atomic switch of the pointer
    return file.string();
  }
  // On resume, the curves so far come back from log.csv.
  void reload_curves() {
    std::ifstream in(fs::path(path_) / "log.csv");
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<std::string> col;
      size_t at = 0;
      for (size_t next; (next = line.find(',', at)) != std::string::npos; at = next + 1)
        col.push_back(line.substr(at, next - at));
      col.push_back(line.substr(at));
      if (col.size() != 7) continue;
      if (!col[1].empty()) train_.points.push_back({std::stod(col[0]), std::stod(col[1])});
      if (!col[6].empty()) val_.points.push_back({std::stod(col[0]), std::stod(col[6])});
    }
  }

 private:
  std::string path_;
  std::ofstream log_;
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

void restore_flags(Flags& f, const data::JsonFields& saved, const std::function<bool(const char*)>& given) {
  auto take = [&](const char* key, const char* flag, auto& field) {
    if (given(flag) || !saved.has(key)) return;
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

int run(Flags f, const std::function<bool(const char*)>& given, dist::World& world) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  const Device device = dist::device_for_rank(world, f.device);
  const DType dtype = dtype_from_name(f.dtype);
  SESSA_CHECK(dtype == DType::F32 || dtype == DType::BF16, "--dtype", "expected fp32 or bf16, got " << f.dtype);
  SESSA_CHECK(dtype == DType::F32 || device.is_cuda(), "--dtype", "bf16 mixed precision needs --device cuda");
  SESSA_CHECK(!f.zero1 || world.distributed(), "--zero1",
              "shards the optimizer over ranks: launch with mpirun -np N (N > 1)");
  const bool lead = world.rank() == 0;  // rank 0 reports and owns the run directory
  // One progress line rewritten in place on a terminal; under mpirun (whose output
  // may look like a terminal but is forwarded) a line per --log-every steps.
  const bool tty = isatty(1) && !world.distributed();

  // The model: from the checkpoint when resuming, else from the flags.
  std::optional<nn::Checkpoint> ckpt;
  if (!f.resume.empty()) {
    ckpt = nn::read_checkpoint(nn::resolve_checkpoint(f.resume));
    if (!given("--out")) f.out = fs::is_directory(f.resume) ? f.resume : fs::path(f.resume).parent_path().string();
    if (ckpt->training_fields().has("flags")) restore_flags(f, ckpt->training_fields().object("flags"), given);
  }
  SESSA_CHECK(!f.data.empty(), "--data", "no training data given");
  if (f.out.empty()) f.out = "runs/" + f.model + "-" + f.preset;
  SESSA_CHECK(ckpt || !fs::exists(fs::path(f.out) / "latest.safetensors"), "--out",
              f.out << " already holds a run (latest.safetensors); continue it with --resume " << f.out
                    << " or choose another --out");
  nn::ModelConfig config = ckpt ? ckpt->config : config_from_flags(f);
  auto model = build_model(config, f.seed, {DType::F32, device});
  nn::TrainerOptions topt{.adamw = {.lr = f.lr, .weight_decay = f.weight_decay},
                          .grad_clip = f.grad_clip,
                          .compute_dtype = dtype,
                          .layout = {.bucket_bytes = std::max<int64_t>(1, int64_t(f.bucket_mb * (1 << 20)))}};
  dist::enable_data_parallel(topt, world, device, f.zero1);
  nn::Trainer trainer(model, topt);
  int64_t start_step = 0;
  data::LoaderConfig lc{.batch = f.batch,
                        .seq_len = f.seq_len,
                        .seed = f.seed,
                        .rank = world.rank(),
                        .world = world.size(),
                        .vocab = uint32_t(config.vocab_size)};
  data::TokenLoader train_loader(data::expand_paths(f.data), lc);
  if (ckpt) {
    nn::load_parameters(*ckpt, *model);
    trainer.load_optimizer_state(*ckpt);
    const data::JsonFields training = ckpt->training_fields();
    start_step = training.integer("step", 0);
    train_loader.seek(uint64_t(training.integer("data_epoch", 0)),
                      uint64_t(resume_position(training, f.batch, world.size())));
    std::printf("resumed from %s at step %ld\n", ckpt->path.c_str(), long(start_step));
    const data::JsonFields saved = training.object("flags");
    const int64_t saved_global = saved.integer("batch", 1) * saved.integer("accum", 1) * saved_world(training);
    if (saved_global != f.batch * f.accum * world.size())
      std::printf("note: the global batch changes from %ld to %ld sequences per step\n", long(saved_global),
                  long(f.batch * f.accum * world.size()));
  }
  std::optional<data::TokenLoader> val_loader;
  if (!f.val_data.empty() && lead) {
    data::LoaderConfig vc = lc;
    vc.shuffle = false, vc.rank = 0, vc.world = 1;  // the same validation batches whatever the world size
    val_loader.emplace(data::expand_paths(f.val_data), vc);
  }
  std::optional<RunDir> run_dir;
  if (lead) {
    run_dir.emplace(f.out, ckpt.has_value());
    if (ckpt) run_dir->reload_curves();
  }

  const int64_t tokens_per_step = f.batch * f.seq_len * f.accum * world.size();
  const double flops_per_step = train_flops_per_token(config, f.seq_len) * double(tokens_per_step);
  const double peak = nn::device_peak_flops(device, dtype) * world.size();
  std::printf("model   %s | %.2fM parameters | %s %s\n", config.summary().c_str(),
              double(model->parameter_count()) / 1e6, device.str().c_str(), dtype_name(dtype));
  std::printf("data    %s: %lu windows of %ld tokens\n", f.data.c_str(), (unsigned long)train_loader.total_windows(),
              long(f.seq_len));
  std::printf("batch   %ld per rank x %d rank(s) x accum %ld = global batch %ld sequences = %ld tokens/step%s\n",
              long(f.batch), world.size(), long(f.accum), long(f.batch * world.size() * f.accum), long(tokens_per_step),
              f.zero1 ? " | ZeRO-1 optimizer sharding" : "");
  std::printf("output  %s\n", f.out.c_str());

  auto training_state = [&](int64_t step) {
    data::Json t = data::Json::object();
    t["step"] = step;
    t["data_epoch"] = int64_t(train_loader.epoch());
    t["data_position"] = int64_t(train_loader.position());
    t["data_world"] = int64_t(world.size());
    t["flags"] = run_flags(f);
    return t;
  };
  auto checkpoint = [&](int64_t step) {
    nn::OptimizerState state = trainer.optimizer_state();  // every rank: a collective under ZeRO-1
    return lead ? run_dir->checkpoint(*model, state, training_state(step), step) : std::string();
  };
  auto evaluate = [&](int64_t step) {
    if (!val_loader) return;
    val_loader->seek(0, 0);
    double v = trainer.evaluate(*val_loader, f.eval_batches);
    run_dir->log_val(step, v);
    std::printf("%sstep %ld | validation loss %.4f\n", tty ? "\n" : "", long(step), v);
  };

  // Ctrl-C (SIGINT), SIGTERM or SIGUSR1 stop the run with a checkpoint; all ranks agree at each step.
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) std::signal(sig, on_stop_signal);
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  std::vector<nn::TokenBatch> micro(size_t(f.accum));
  data::Batch batch;
  nn::StepResult last;
  int64_t step = start_step;
  bool interrupted = false;
  while (step < f.steps && !(interrupted = world.any(g_interrupted != 0))) {
    const auto t0 = clock::now();
    for (auto& m : micro) {
      train_loader.next(batch);
      m = nn::to_device(batch, device);
    }
    const double lr = nn::cosine_lr(step, f.warmup, f.steps, f.lr);
    last = trainer.step(micro, lr);  // reads the loss: the step has finished on the device
    ++step;
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    const double tps = double(tokens_per_step) / (ms / 1e3);
    if (lead) run_dir->log(step, last, lr, ms, tps);
    if (step % f.log_every == 0 || step == f.steps || tty) {
      const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();
      const double eta = elapsed / double(step - start_step) * double(f.steps - step);
      char mfu[32] = "";
      if (peak > 0) std::snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * flops_per_step / (ms / 1e3) / peak);
      std::printf("%sstep %ld/%ld | loss %.4f | lr %.2e | gnorm %.3f | %.1f ms | %.0f tok/s%s | ETA %s%s",
                  tty ? "\r" : "", long(step), long(f.steps), last.loss, lr, last.grad_norm, ms, tps, mfu,
                  human_duration(eta).c_str(), tty ? "   " : "\n");
      std::fflush(stdout);
    }
    if (f.eval_every > 0 && step % f.eval_every == 0) evaluate(step);
    if (f.ckpt_every > 0 && step % f.ckpt_every == 0 && step < f.steps) checkpoint(step);
  }
  if (tty) std::printf("\n");
  if (f.eval_every <= 0 || step % f.eval_every != 0) evaluate(step);
  std::string saved = checkpoint(step);
  if (lead) run_dir->plot();
  const double total = std::chrono::duration<double>(clock::now() - t_start).count();
  if (interrupted) {
    std::printf("interrupted at step %ld: checkpoint %s (resume with --resume %s)\n", long(step), saved.c_str(),
                f.out.c_str());
    return 130;
  }
  std::printf(
      "done: %ld steps in %s, %.0f tokens/s, final loss %.4f | checkpoint %s | log %s/log.csv, plot %s/loss.svg\n",
      long(step - start_step), human_duration(total).c_str(),
      double(tokens_per_step) * double(step - start_step) / std::max(total, 1e-9), last.loss, saved.c_str(),
      f.out.c_str(), f.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<dist::World> world;
  try {
    world.emplace(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: error: %s\n", e.what());
    return 1;
  }
  // Only rank 0 reports: the other ranks' standard output is discarded (their
  // errors still reach stderr, naming the rank).
  if (world->rank() != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;
  Flags f;
  CLI::App app{"Train a language model (" + nn::family_list() + ") on token shards (see README.md)."};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a repeated flag: the last wins
  app.add_option("--model", f.model, "Model family, one of\n" + nn::family_help())
      ->check(CLI::IsMember(nn::family_names()))
      ->capture_default_str();
  app.add_option("--preset", f.preset, "Size preset: tiny, small (GPT-2 small scale), medium (~350M)")
      ->check(CLI::IsMember(nn::preset_names()))
      ->capture_default_str();
  app.add_option("--d-model", f.d_model, "Override the model width");
  app.add_option("--layers", f.layers, "Override the number of layers");
  app.add_option("--heads", f.heads, "Override the number of attention heads");
  app.add_option("--kv-heads", f.kv_heads, "Key/value heads for grouped-query attention (0: same as --heads)");
  app.add_option("--vocab", f.vocab, "Vocabulary size (257 for byte-level data, 50304 for GPT-2 shards)")
      ->capture_default_str();
  app.add_option(
         "--match-params", f.match_params,
         "Pick the layer count to match this family's parameter count at the same preset (" + nn::family_list() + ")")
      ->check(CLI::IsMember(nn::family_names()));
  app.add_option("--data", f.data,
                 "Training shards: files, globs (comma-separated), or a directory holding train.bin/val.bin (required "
                 "unless --resume)");
  app.add_option("--val-data", f.val_data, "Validation shards (default: val.bin beside --data when it is a directory)");
  app.add_option("--batch", f.batch, "Sequences per micro-batch")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq-len", f.seq_len, "Tokens per sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--steps", f.steps, "Optimizer steps in total")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", f.lr, "Peak learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", f.warmup, "Linear warm-up steps before the cosine decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--weight-decay", f.weight_decay, "AdamW decoupled weight decay (matrices only)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--grad-clip", f.grad_clip, "Clip the global gradient norm to this (0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--accum", f.accum, "Gradient accumulation: micro-batches per optimizer step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--device", f.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", f.dtype, "fp32, or bf16 mixed precision (CUDA)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the initialisation and of the data order")->capture_default_str();
  app.add_option("--out", f.out, "Run directory for checkpoints, log.csv and loss.svg (default runs/<model>-<preset>)");
  app.add_option("--ckpt-every", f.ckpt_every, "Checkpoint every N steps (and always at the end; 0: only at the end)")
      ->capture_default_str();
  app.add_option("--resume", f.resume, "Continue the run in this directory (or from this checkpoint file)");
  app.add_option("--eval-every", f.eval_every, "Validation every N steps (0: only at the end)")->capture_default_str();
  app.add_option("--eval-batches", f.eval_batches, "Batches per validation")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--log-every", f.log_every, "Print a progress line every N steps (every step on a terminal)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("--zero1", f.zero1, "Under mpirun: shard the optimizer state over the ranks (ZeRO stage 1)");
  app.add_option("--bucket-mb", f.bucket_mb,
                 "Under mpirun: gradients are reduced in buckets of about this many MiB, overlapping backward")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return world->rank() == 0 ? app.exit(e) : e.get_exit_code();
  }
  return dist::run_reporting_errors(*world, "train", [&] {
    resolve_data(f);
    return run(
        f, [&](const char* flag) { return app.count(flag) > 0; }, *world);
  });
}
