// Data parallelism on the CPU over MPI, end to end through apps/train: N ranks
// with batch B must end with the same parameters and optimizer state (to float
// tolerance) as one process with batch N x B, with and without ZeRO-1, with
// gradient accumulation, and across a resume that changes the number of ranks.
// A failing or killed rank must end the whole job within seconds.
// Finds the apps beside its own directory (BUILD/tests -> BUILD/apps); needs mpirun. On a machine
// with two GPUs, SESSA_DIST_TEST_DEVICE=cuda runs the same checks over NCCL.
#include <doctest/doctest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/safetensors.h"

namespace fs = std::filesystem;

namespace {

struct Outcome {
  int exit_code;
  std::string output;
  double seconds;
};

Outcome shell(const std::string& command) {
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  std::array<char, 4096> chunk;
  while (size_t n = fread(chunk.data(), 1, chunk.size(), pipe)) output.append(chunk.data(), n);
  const int status = pclose(pipe);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), output, seconds};
}

const std::string kMpirun = "mpirun --allow-run-as-root --oversubscribe ";

// BUILD/apps/<name>, from this executable's path BUILD/tests/test_dist.
std::string app(const std::string& name) {
  return (fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "apps" / name).string();
}

std::string test_device() {
  const char* d = std::getenv("SESSA_DIST_TEST_DEVICE");
  return d ? d : "cpu";
}
// CPU float32 sums in another order differ by rounding only; CUDA float32 matrix
// products use TF32, whose kernels (chosen by shape) differ between batch 4 and 8.
double tolerance() { return test_device() == "cpu" ? 2e-5 : 2e-3; }

// A tiny corpus and a training command line on it (fp32 on the CPU, one thread per rank).
struct Fixture {
  fs::path dir = fs::temp_directory_path() / ("sessa_dist_test_" + std::to_string(::getpid()));
  std::string train;
  Fixture() {
    fs::create_directories(dir);
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i)
      corpus << "the cat sat on the mat number " << i % 7 << " and the dog ran to the log\n%\n";
    corpus.close();
    const Outcome prep = shell(app("prepare") + " --input " + (dir / "corpus.txt").string() +
                               " --separator % --out-dir " + (dir / "data").string());
    REQUIRE_MESSAGE(prep.exit_code == 0, prep.output);
    train = app("train") +
            " --model sessa --preset tiny --d-model 32 --heads 2 --seq-len 32 --lr 5e-3 --warmup 2 "
            "--eval-every 0 --eval-batches 2 --threads 1 --log-every 1 --device " +
            test_device() + " --data " + (dir / "data").string();
  }
  ~Fixture() { fs::remove_all(dir); }
  std::string out(const std::string& name) const { return (dir / name).string(); }
  // Trains into run directory `name`; `ranks` 0 means without mpirun.
  void run(int ranks, const std::string& name, const std::string& flags) const {
    const std::string cmd =
        (ranks > 0 ? kMpirun + "-np " + std::to_string(ranks) + " " : "") + train + " " + flags + " --out " + out(name);
    const Outcome r = shell(cmd);
    INFO(cmd);
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }
};

std::vector<float> floats(const sessa::data::StEntry& e) {
  REQUIRE(e.dtype == "F32");
  std::vector<float> v(e.bytes.size() / 4);
  std::memcpy(v.data(), e.bytes.data(), e.bytes.size());
  return v;
}

// Largest difference over every tensor (parameters and AdamW moments), relative to max(1, |b|).
double max_difference(const std::string& a_path, const std::string& b_path) {
  const auto a = sessa::data::read_safetensors(a_path), b = sessa::data::read_safetensors(b_path);
  REQUIRE(a.entries.size() == b.entries.size());
  double worst = 0;
  for (const auto& ea : a.entries) {
    const auto* eb = b.find(ea.name);
    REQUIRE_MESSAGE(eb != nullptr, ea.name);
    const auto va = floats(ea), vb = floats(*eb);
    REQUIRE(va.size() == vb.size());
    double diff = 0, scale = 1;
    for (size_t i = 0; i < va.size(); ++i) {
      diff = std::max(diff, double(std::abs(va[i] - vb[i])));
      scale = std::max(scale, double(std::abs(vb[i])));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

bool have_mpi() {
#if SESSA_HAS_MPI
  return shell("mpirun --version").exit_code == 0;
#else
  return false;
#endif
}

}  // namespace

TEST_CASE("data parallel over MPI equals one process with the global batch") {
  if (!have_mpi()) {
    MESSAGE("skipped: this build has no MPI or mpirun is not on PATH");
    return;
  }
  Fixture fx;
  fx.run(0, "one", "--batch 8 --steps 6");
  const std::string reference = fx.out("one") + "/ckpt_0000006.safetensors";
  auto compare = [&](const std::string& name) {
    const double d = max_difference(fx.out(name) + "/ckpt_0000006.safetensors", reference);
    MESSAGE(name << ": largest relative difference from one process " << d);
    CHECK(d < tolerance());
  };
  SUBCASE("2 ranks x batch 4") {
    fx.run(2, "two", "--batch 4 --steps 6");
    compare("two");
  }
  SUBCASE("2 ranks x batch 4 with ZeRO-1 (sharded optimizer state, gathered into the checkpoint), 10 KiB buckets") {
    fx.run(2, "zero1", "--batch 4 --steps 6 --zero1 --bucket-mb 0.01");
    compare("zero1");
  }
  SUBCASE("2 ranks x batch 2 x accum 2, 10 KiB buckets") {
    fx.run(2, "accum", "--batch 2 --accum 2 --steps 6 --bucket-mb 0.01");
    compare("accum");
  }
  SUBCASE("resume with another number of ranks and the same global batch") {
    fx.run(2, "split", "--batch 4 --steps 6 --ckpt-every 3");
    fx.run(0, "joined", "--batch 8 --resume " + fx.out("split") + "/ckpt_0000003.safetensors");
    compare("joined");
    fx.run(0, "first", "--batch 8 --steps 6 --ckpt-every 3");
    fx.run(2, "widened", "--batch 4 --zero1 --resume " + fx.out("first") + "/ckpt_0000003.safetensors");
    compare("widened");
  }
  SUBCASE("the data-parallel run actually differs from a wrong reference") {
    fx.run(2, "other_seed", "--batch 4 --steps 6 --seed 7");  // guards against a comparison that cannot fail
    CHECK(max_difference(fx.out("other_seed") + "/ckpt_0000006.safetensors", reference) > 10 * tolerance());
  }
}

TEST_CASE("one failing rank ends every rank within seconds, naming the rank and the cause") {
  if (!have_mpi()) {
    MESSAGE("skipped: this build has no MPI or mpirun is not on PATH");
    return;
  }
  Fixture fx;
  SUBCASE("a bad data file on rank 1") {
    // MPMD launch: rank 0 gets good data and waits in the first collective; rank 1 fails.
    const std::string bad = fx.out("missing.bin");
    const Outcome r = shell(kMpirun + "-np 1 " + fx.train + " --batch 4 --steps 50 --out " + fx.out("a") + " : -np 1 " +
                            fx.train + " --batch 4 --steps 50 --out " + fx.out("a") + " --data " + bad);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.seconds < 30);
    CHECK(r.output.find("rank 1: train: error:") != std::string::npos);
    CHECK(r.output.find("missing.bin") != std::string::npos);
  }
  SUBCASE("rank 1 killed during training") {
    // `exec` keeps the shell's PID, so the background kill hits the trainer itself.
    const std::string script = "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 2; kill -9 $$) & fi; exec " +
                               fx.train + " --batch 4 --steps 100000 --out " + fx.out("b");
    const Outcome r = shell(kMpirun + "-np 2 bash -c '" + script + "'");
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.seconds < 30);
    CHECK(r.output.find("rank 1") != std::string::npos);
  }
}
