// attention.cpp - Kernel benchmark of causal attention (ops::attention and
// ops::attention_backward) on CUDA, the numbers issue #12 asks for.
//
// Shapes follow the FlashAttention papers' benchmark: 16k tokens per call
// (B = 16384 / T), model width 2048 (H = 2048 / dh heads), causal. FLOPs use the
// standard count: forward 4 B T^2 H dh / 2 (two matmuls, half of them masked),
// backward 2.5x forward. Before timing, each shape is checked against the float32
// CPU op on its first batch and head slice. Each time is the median of 10 runs timed
// with CUDA events on the main stream (bench/gpu_timing.h), as bench/attention_torch.py
// times SDPA.
//
//   build/bench/bench_attention [--dtype bf16|fp32] [--seq-len T] [--head-dim dh]
// prints one line per (T, dh): ms and TFLOP/s for forward and backward. --seq-len and
// --head-dim keep one of the shapes (e.g. for a profiler: fewer launches to skip).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/cuda_hooks.h"
#include "tensor/error.h"
#include "tensor/ops.h"
#include "tensor/random.h"

#if SESSA_HAS_CUDA
#include "bench/gpu_timing.h"

namespace {

using namespace sessa;

// max |gpu - cpu| / max(1, max |cpu|) over batch 0, all heads, of forward outputs.
double check_against_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, double scale) {
  auto first = [](const Tensor& t) { return ops::narrow(t, 0, 0, 1).to(Device::cpu()).to(DType::F32); };
  const Tensor ref = ops::attention(first(q), first(k), first(v), 0, scale).out;
  const auto a = first(out).to_vector<double>(), b = ref.to_vector<double>();
  double diff = 0, big = 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff = std::max(diff, std::abs(a[i] - b[i])), big = std::max(big, std::abs(b[i]));
  return diff / big;
}

}  // namespace
#endif

int main(int argc, char** argv) {
  using namespace sessa;
  try {
    DType dtype = DType::BF16;
    int64_t only_T = 0, only_dh = 0;  // 0: every shape
    const std::string usage = " (usage: --dtype bf16|fp32 --seq-len 512|1024|2048|4096|8192 --head-dim 64|128)";
    auto shape_flag = [&](int& i, const std::vector<int64_t>& valid) {
      const std::string flag = argv[i];
      SESSA_CHECK(i + 1 < argc, "flags", flag << " needs a value" << usage);
      const std::string v = argv[++i];
      for (int64_t x : valid)
        if (v == std::to_string(x)) return x;
      SESSA_FAIL("flags", flag + " " + v + " is not one of the benchmarked values" + usage);
    };
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--dtype") && i + 1 < argc && !std::strcmp(argv[i + 1], "fp32"))
        dtype = DType::F32, ++i;
      else if (!std::strcmp(argv[i], "--dtype") && i + 1 < argc && !std::strcmp(argv[i + 1], "bf16"))
        ++i;
      else if (!std::strcmp(argv[i], "--seq-len"))
        only_T = shape_flag(i, {512, 1024, 2048, 4096, 8192});
      else if (!std::strcmp(argv[i], "--head-dim"))
        only_dh = shape_flag(i, {64, 128});
      else
        SESSA_FAIL("flags", "unknown argument '" + std::string(argv[i]) + "'" + usage);
    }
#if !SESSA_HAS_CUDA
    (void)only_T, (void)only_dh;
    std::printf("bench_attention: built without the CUDA backend (%s not timed)\n", dtype_name(dtype));
    return 0;
#else
    if (cuda::device_count() == 0) {
      std::printf("bench_attention: no CUDA device visible\n");
      return 0;
    }
    const Device gpu = Device::cuda(0);
    std::printf("ours  causal attention, %s, %s, 16k tokens per call, width 2048\n", dtype_name(dtype),
                cuda::device_name(0).c_str());
    for (int64_t dh : {64, 128}) {
      for (int64_t T : {512, 1024, 2048, 4096, 8192}) {
        if ((only_dh && dh != only_dh) || (only_T && T != only_T)) continue;
        const int64_t B = 16384 / T, H = 2048 / dh;
        Generator gen(1);
        const TensorOptions opt{dtype, gpu};
        const Tensor q = normal({B, H, T, dh}, 0, 1, gen, opt), k = normal({B, H, T, dh}, 0, 1, gen, opt),
                     v = normal({B, H, T, dh}, 0, 1, gen, opt), dout = normal({B, H, T, dh}, 0, 1, gen, opt);
        const double scale = 1.0 / std::sqrt(double(dh));
        ops::AttentionOut fwd = ops::attention(q, k, v, 0, scale);
        const double err = check_against_cpu(q, k, v, fwd.out, scale);
        const double f_ms = gpu_timing::time_ms([&] { fwd = ops::attention(q, k, v, 0, scale); }, 10);
        const double b_ms =
            gpu_timing::time_ms([&] { ops::attention_backward(dout, q, k, v, fwd.out, fwd.lse, 0, scale); }, 10);
        const double flops = 4.0 * double(B) * double(T) * double(T) * double(H) * double(dh) / 2;
        std::printf(
            "ours  dh=%-4ld T=%-5ld B=%-3ld H=%-3ld | fwd %8.3f ms %6.1f TFLOP/s | bwd %8.3f ms %6.1f TFLOP/s | err "
            "%.1e\n",
            long(dh), long(T), long(B), long(H), f_ms, flops / f_ms / 1e9, b_ms, 2.5 * flops / b_ms / 1e9, err);
      }
    }
    return 0;
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
