// Benchmark of the LM head's cross-entropy pass on CUDA (ops::cross_entropy_and_grad_,
// tensor/cuda/cross_entropy.cu): the loss and the gradient of one (rows, V) chunk of bf16
// logits in one pass, against the two kernels it replaces (cross_entropy, then
// cross_entropy_backward) and a device-to-device copy of the bytes the pass must move. It
// first checks the pass against the CPU (float64) on a small chunk and exits non-zero if
// they disagree.
//
// Bytes that must move (storage dtype s, N rows, V columns): read the logits, write the
// gradient over them: 2 s N V (the two kernels: 3 s N V).
// Usage: build/bench/bench_cross_entropy [--reps N] [--rows N] [--vocab V]   (defaults: the
// head's chunk of 4096 rows, GPT-2's 50304)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "tensor/ops.h"
#include "tensor/random.h"

#if SESSA_HAS_CUDA
#include "bench/gpu_timing.h"
#endif

namespace {

using namespace sessa;

#if SESSA_HAS_CUDA

// Logits ~ N(0, 3), a tenth of the targets ignored (-100), like the op table's cases.
struct Chunk {
  Tensor logits, targets;
};
Chunk make_chunk(int64_t N, int64_t V, DType dtype, Device dev, uint64_t seed) {
  Generator gen(seed);
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (int64_t r = 0; r < N; ++r) ids[size_t(r)] = r % 10 == 3 ? -100 : int32_t((r * 7919 + 13) % V);
  return {normal({N, V}, 0, 3, gen, {DType::F32}).to(dtype).to(dev),
          from_vector<int32_t>(ids, {N}, {DType::I32}).to(dev)};
}

bool validate(DType dtype) {
  const int64_t N = 37, V = 50304;
  const Chunk c = make_chunk(N, V, dtype, Device::cuda(0), 5);
  const DType stat = dtype == DType::BF16 ? DType::F32 : dtype;
  Tensor logits = ops::clone(c.logits), loss = zeros({}, {stat, Device::cuda(0)});
  ops::cross_entropy_and_grad_(logits, c.targets, -100, scalar(0.5, {stat, Device::cuda(0)}), loss);
  const Tensor x64 = c.logits.to(Device::cpu()).to(DType::F64), t = c.targets.to(Device::cpu());
  const auto ref = ops::cross_entropy(x64, t, -100, ops::LossReduction::Sum);
  const Tensor dref = ops::cross_entropy_backward(scalar(0.5, {DType::F64}), x64, t, ref.lse, -100, 1);
  const double tol = dtype == DType::BF16 ? 2e-2 : 2e-5;
  const double loss_err = gpu_timing::max_rel(loss, ref.loss), grad_err = gpu_timing::max_rel(logits, dref);
  const bool ok = loss_err <= tol && grad_err <= tol;
  std::printf("validation %s [N %lld, V %lld] against the CPU: loss error %.2g, gradient error %.2g: %s\n",
              dtype_name(dtype), (long long)N, (long long)V, loss_err, grad_err, ok ? "ok" : "FAILED");
  return ok;
}

void bench(int64_t N, int64_t V, DType dtype, int reps) {
  const Chunk c = make_chunk(N, V, dtype, Device::cuda(0), 9);
  const DType stat = dtype == DType::BF16 ? DType::F32 : dtype;
  const Tensor scale = scalar(1.0 / double(N), {stat, Device::cuda(0)}), loss = zeros({}, {stat, Device::cuda(0)});
  Tensor logits = ops::clone(c.logits);  // overwritten by every run: the logits of a gradient, still finite
  const double fused_ms =
      gpu_timing::time_ms([&] { ops::cross_entropy_and_grad_(logits, c.targets, -100, scale, loss); }, reps);
  const double two_ms = gpu_timing::time_ms(
      [&] {
        const auto ce = ops::cross_entropy(c.logits, c.targets, -100, ops::LossReduction::Sum);
        ops::cross_entropy_backward(scale, c.logits, c.targets, ce.lse, -100, 1);
      },
      reps);
  const double bytes = 2.0 * double(dtype_size(dtype)) * double(N) * double(V);
  const double copy_ms = gpu_timing::copy_ms(bytes, reps);
  std::printf(
      "%s N %lld V %lld: one pass %.3f ms, %.0f GB/s (%.0f%% of a copy of the same %.0f MB: %.3f ms); "
      "cross_entropy + cross_entropy_backward %.3f ms\n",
      dtype_name(dtype), (long long)N, (long long)V, fused_ms, bytes / (fused_ms * 1e6), 100.0 * copy_ms / fused_ms,
      bytes / 1e6, copy_ms, two_ms);
}

#endif

}  // namespace

int main(int argc, char** argv) {
#if SESSA_HAS_CUDA
  int reps = 20;
  int64_t rows = 4096, vocab = 50304;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      rows = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else if (std::strcmp(argv[i], "--vocab") == 0 && i + 1 < argc) {
      vocab = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--rows N] [--vocab V]\n", argv[0]);
      return 2;
    }
  }
  try {
    bool ok = validate(DType::F32);
    ok = validate(DType::BF16) && ok;
    if (!ok) return 1;
    bench(rows, vocab, DType::BF16, reps);
    bench(rows, vocab, DType::F32, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cross_entropy: %s\n", e.what());
    return 1;
  }
  return 0;
#else
  (void)argc, (void)argv;
  std::fprintf(stderr, "bench_cross_entropy: this binary was built without the CUDA backend\n");
  return 1;
#endif
}
