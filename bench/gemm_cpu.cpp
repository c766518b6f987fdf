// Standalone benchmark for sessa::cpu::gemm: median GFLOP/s over repeats vs. a peak estimate.
// Build: g++ -std=c++20 -O3 -march=native -fopenmp -I. bench/gemm_cpu.cpp tensor/cpu/gemm.cpp
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tensor/cpu/gemm.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// fp32 FLOPs per cycle per core from the ISA the binary was compiled for:
// FMA units (2) x lanes x 2 flops per FMA.
constexpr double kFp32FlopsPerCycle =
#if defined(__AVX512F__)
    64.0;
#elif defined(__AVX2__) || defined(__FMA__)
    32.0;
#else
    8.0;
#endif

// Core clock in GHz from a chain of dependent integer adds (one add per cycle).
double measure_clock_ghz() {
  constexpr int64_t kIters = 50'000'000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    uint64_t x = uint64_t(rep);
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < kIters; ++i) {
      // 8 adds per iteration; the empty asm keeps each add and the dependency chain.
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) {
        x += 1;
        asm volatile("" : "+r"(x));
      }
    }
    const double t = seconds_since(t0);
    if (x == 0) std::printf(" ");
    best = std::max(best, 8.0 * double(kIters) / t / 1e9);
  }
  return best;
}

// Cross-check: fp32 GFLOP/s of independent vector FMA chains on all threads. Some cores
// (e.g. AMD Zen 4) split 512-bit FMAs over two 256-bit units, giving half the formula.
double measure_fma_gflops() {
#if defined(__AVX512F__)
  typedef float Vec __attribute__((vector_size(64)));
#elif defined(__AVX__)
  typedef float Vec __attribute__((vector_size(32)));
#else
  typedef float Vec __attribute__((vector_size(16)));
#endif
  constexpr int kChains = 16;
  constexpr int64_t kIters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {  // best of 3: another process may steal a core
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
      Vec acc[kChains], a = Vec{} + 0.999f, b = Vec{} + 1e-4f;
      for (int c = 0; c < kChains; ++c) acc[c] = Vec{} + float(c);
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < kIters; ++i) {
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
        asm volatile("" : "+x"(a));  // keeps the loop from being folded
      }
      const double t = seconds_since(t0);
      float sink = 0;
      for (int c = 0; c < kChains; ++c) sink += acc[c][0];
      if (sink == 0) std::printf(" ");
      total = 2.0 * kChains * (sizeof(Vec) / sizeof(float)) * double(kIters) / t / 1e9;
    }
    best = std::max(best, total);
  }
  return best;
}

double cpuinfo_mhz() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("cpu MHz", 0) == 0) return std::stod(line.substr(line.find(':') + 1));
  return 0;
}

struct Lcg {
  uint64_t s = 12345;
  double next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(s >> 11) / 9007199254740992.0 - 0.5;
  }
};

template <class T>
struct Problem {
  int64_t n;
  bool ta, tb;
  std::vector<T> A, B, C;
  Problem(int64_t n_, bool ta_, bool tb_) : n(n_), ta(ta_), tb(tb_), A(n * n), B(n * n), C(n * n) {
    Lcg rng;
    for (auto& x : A) x = T(rng.next());
    for (auto& x : B) x = T(rng.next());
  }
  void run() { sessa::cpu::gemm<T>(ta, tb, n, n, n, T(1), A.data(), n, B.data(), n, T(0), C.data(), n); }
};

// Median wall time of one gemm call, repeating for ~0.5 s (at least 5 runs).
template <class T>
double median_seconds(Problem<T>& p) {
  p.run();  // warm-up: page in buffers, spin up the thread pool
  std::vector<double> times;
  const auto start = Clock::now();
  while (times.size() < 5 || (seconds_since(start) < 0.5 && times.size() < 200)) {
    const auto t0 = Clock::now();
    p.run();
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

template <class T>
void report(int64_t n, bool ta, bool tb, double peak_fp32, double fma_fp32) {
  Problem<T> p(n, ta, tb);
  const double t = median_seconds(p);
  const double gflops = 2.0 * double(n) * double(n) * double(n) / t / 1e9;
  const double scale = sizeof(T) == 4 ? 1.0 : 0.5;  // fp64: half the lanes
  std::printf("%6lld  %-7s %s%s  %9.3f  %9.1f  %6.1f%%  %6.1f%%\n", (long long)n,
              sizeof(T) == 4 ? "float32" : "float64", ta ? "T" : "N", tb ? "T" : "N", t * 1e3, gflops,
              100.0 * gflops / (scale * peak_fp32), 100.0 * gflops / (scale * fma_fp32));
}

// Max |gemm - naive| / max |naive| at n = 256, reference accumulated in double.
void sanity_check() {
  const int64_t n = 256;
  Problem<float> p(n, false, false);
  p.run();
  double max_err = 0, max_ref = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += double(p.A[i * n + k]) * double(p.B[k * n + j]);
      max_err = std::max(max_err, std::fabs(s - double(p.C[i * n + j])));
      max_ref = std::max(max_ref, std::fabs(s));
    }
  std::printf("sanity: 256^3 float32 vs naive double loop: max rel error %.2e\n", max_err / max_ref);
}

}  // namespace

int main() {
  const int threads = omp_get_max_threads();
  const double measured = measure_clock_ghz();
  const double nominal = cpuinfo_mhz() / 1000.0;
  const bool use_measured = measured > 0.5 && measured < 7.0;
  const double ghz = use_measured ? measured : nominal;
  const double peak = threads * ghz * kFp32FlopsPerCycle;
  std::printf("clock: %.2f GHz from %s (dependent-add loop %.2f GHz, /proc/cpuinfo %.2f GHz)\n", ghz,
              use_measured ? "dependent-add loop" : "/proc/cpuinfo", measured, nominal);
  std::printf("peak fp32: %d threads x %.2f GHz x %.0f FLOP/cycle = %.1f GFLOP/s (fp64: half)\n", threads, ghz,
              kFp32FlopsPerCycle, peak);
  const double fma = measure_fma_gflops();
  std::printf("measured fp32 FMA throughput (%d threads): %.1f GFLOP/s = %.1f FLOP/cycle/core\n", threads, fma,
              fma / threads / ghz);
  sanity_check();
  std::printf("\n  size  dtype   op        ms    GFLOP/s  %%peak  %%fma-peak\n");
  for (int64_t n : {256, 512, 1024, 2048}) report<float>(n, false, false, peak, fma);
  report<double>(1024, false, false, peak, fma);
  report<float>(1024, true, true, peak, fma);
  return 0;
}
