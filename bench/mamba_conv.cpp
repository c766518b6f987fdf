// Benchmark of the CUDA causal conv1d fused with SiLU (nn/mamba_conv.cu), as the Mamba mixer
// runs it: C = E*D = 1536 channels, kernel K = 4, B x T = 16 x 1024 and 4 x 4096, bfloat16 and
// float32. Forward and backward times against the bytes each must move and the copy bandwidth
// of the same GPU (a device-to-device cudaMemcpy of as many bytes, timed in the same program).
// It first checks the kernels against the CPU reference on a small shape (several runs of
// rows per sequence, a sequence shorter than the kernel) and exits non-zero if they disagree.
//
// Bytes that must move (storage dtype s; the weight, bias and partial sums are small):
//   forward   read x, write y                     2 B T C s
//   backward  read dy, x, write dx                3 B T C s
// Usage: build/bench/bench_mamba_conv [--reps N]
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "nn/mamba_ops.h"
#include "tensor/random.h"

#if SESSA_HAS_CUDA
#include "bench/gpu_timing.h"
#endif

namespace {

using namespace sessa;

#if SESSA_HAS_CUDA

struct Inputs {
  Tensor x, w, bias, dy;
};

Inputs make_inputs(int64_t B, int64_t T, int64_t C, int64_t K, DType dtype, Device dev, uint64_t seed) {
  Generator gen(seed);
  const TensorOptions f32{DType::F32};
  auto put = [&](const Tensor& t) { return t.to(dtype).to(dev); };
  return {put(normal({B, T, C}, 0, 1, gen, f32)), put(normal({C, K}, 0, 0.5, gen, f32)),
          put(normal({C}, 0, 1, gen, f32)), put(normal({B, T, C}, 0, 1, gen, f32))};
}

std::vector<Tensor> fwd_bwd(const Inputs& in) {
  const Tensor y = nn::causal_conv1d_forward(in.x, in.w, in.bias, /*silu=*/true);
  const nn::Conv1dGrads g = nn::causal_conv1d_backward(in.dy, in.x, in.w, in.bias, /*silu=*/true);
  return {y, g.dx, g.dw, g.dbias};
}

// The GPU against the CPU (float32 reference from the same rounded values) on small shapes.
bool validate(DType dtype) {
  bool ok = true;
  for (auto [B, T, C] : std::vector<std::array<int64_t, 3>>{{3, 700, 96}, {5, 3, 40}}) {
    const int64_t K = 4;
    const std::vector<Tensor> out = fwd_bwd(make_inputs(B, T, C, K, dtype, Device::cuda(0), 7));
    Inputs ref_in = make_inputs(B, T, C, K, dtype, Device::cpu(), 7);
    for (Tensor* t : {&ref_in.x, &ref_in.w, &ref_in.bias, &ref_in.dy}) *t = t->to(DType::F32);
    const std::vector<Tensor> ref = fwd_bwd(ref_in);
    const char* names[] = {"y", "dx", "dw", "dbias"};
    const double tol = dtype == DType::BF16 ? 3e-2 : 2e-5;
    for (size_t i = 0; i < out.size(); ++i) {
      const double err = gpu_timing::max_rel(out[i], ref[i]);
      if (!(err <= tol)) {
        std::printf("  MISMATCH %s %s [B %lld, T %lld, C %lld]: relative error %.3g > %.3g\n", dtype_name(dtype),
                    names[i], (long long)B, (long long)T, (long long)C, err, tol);
        ok = false;
      }
    }
  }
  std::printf("validation %s against the CPU: %s\n", dtype_name(dtype), ok ? "ok" : "FAILED");
  return ok;
}

void bench(int64_t B, int64_t T, int64_t C, int64_t K, DType dtype, int reps) {
  const Inputs in = make_inputs(B, T, C, K, dtype, Device::cuda(0), 11);
  const double btc = double(B * T * C) * double(dtype_size(dtype));
  const double fwd_ms = gpu_timing::time_ms([&] { nn::causal_conv1d_forward(in.x, in.w, in.bias, true); }, reps);
  const double bwd_ms =
      gpu_timing::time_ms([&] { nn::causal_conv1d_backward(in.dy, in.x, in.w, in.bias, true); }, reps);
  auto rate = [](double bytes, double ms) { return bytes / (ms * 1e6); };
  const double fwd_copy = gpu_timing::copy_ms(2 * btc, reps), bwd_copy = gpu_timing::copy_ms(3 * btc, reps);
  std::printf(
      "%s B %lld T %lld C %lld K %lld: fwd %.3f ms, %.0f GB/s (%.0f%% of a copy); bwd %.3f ms, %.0f GB/s (%.0f%% of "
      "a copy)\n",
      dtype_name(dtype), (long long)B, (long long)T, (long long)C, (long long)K, fwd_ms, rate(2 * btc, fwd_ms),
      100.0 * fwd_copy / fwd_ms, bwd_ms, rate(3 * btc, bwd_ms), 100.0 * bwd_copy / bwd_ms);
}

#endif

}  // namespace

int main(int argc, char** argv) {
#if SESSA_HAS_CUDA
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--reps N]\n", argv[0]);
      return 2;
    }
  }
  try {
    bool ok = validate(DType::F32);
    ok = validate(DType::BF16) && ok;
    if (!ok) return 1;
    for (DType dtype : {DType::BF16, DType::F32}) {
      bench(16, 1024, 1536, 4, dtype, reps);
      bench(4, 4096, 1536, 4, dtype, reps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mamba_conv: %s\n", e.what());
    return 1;
  }
  return 0;
#else
  (void)argc, (void)argv;
  std::fprintf(stderr, "bench_mamba_conv: this binary was built without the CUDA backend\n");
  return 1;
#endif
}
