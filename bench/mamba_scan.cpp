// Benchmark of the CUDA selective scan (nn/mamba_scan.cu): forward + backward time at the
// Mamba preset's shape (E*D = 1536 channels, d_state N = 16) for B x T = 16 x 1024 and
// 4 x 4096, in bfloat16 and float32, against the bytes the scan must move and the copy
// bandwidth of the same GPU (a device-to-device cudaMemcpy moving as many bytes, timed in
// the same program). It first checks the kernels against the CPU reference on a small
// shape and exits non-zero if they disagree.
//
// Bytes that must move (storage dtype s, float32 checkpoints not counted):
//   forward  read u, delta (B T Di), Bm, Cm (B T N); write y              3 BTDi + 2 BTN
//   backward read dy, u, delta, Bm, Cm; write du, ddelta, dBm, dCm        5 BTDi + 4 BTN
//   gated by SiLU(z) (as the mixer runs it): + read z (forward, backward), write dz.
// Usage: build/bench/bench_mamba_scan [--reps N] [--gated]   (--gated: only the gated cases, as the
// mixer runs the scan; bf16 16 x 1024 first, the case to profile)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "nn/mamba_ops.h"
#include "tensor/ops.h"
#include "tensor/random.h"

#if SESSA_HAS_CUDA
#include "bench/gpu_timing.h"
#endif

namespace {

using namespace sessa;

#if SESSA_HAS_CUDA

using gpu_timing::max_rel;
using gpu_timing::time_ms;

struct Inputs {
  Tensor u, delta, A, Bm, Cm, D, dy, z;
};

// Like the mixer's: delta a softplus output, A = -exp(A_log), Bm and Cm slices of one
// (B, T, R + 2N) projection.
Inputs make_inputs(int64_t B, int64_t T, int64_t Di, int64_t N, DType dtype, Device dev, uint64_t seed) {
  Generator gen(seed);
  const TensorOptions f32{DType::F32};
  auto put = [&](const Tensor& t) { return t.to(dtype).to(dev); };
  Inputs in;
  in.u = put(normal({B, T, Di}, 0, 1, gen, f32));
  in.delta = put(uniform({B, T, Di}, 0.001, 0.5, gen, f32));
  in.A = put(uniform({Di, N}, -8.0, -0.5, gen, f32));
  Tensor dbc = put(normal({B, T, 48 + 2 * N}, 0, 1, gen, f32));
  in.Bm = ops::narrow(dbc, 2, 48, N), in.Cm = ops::narrow(dbc, 2, 48 + N, N);
  in.D = put(normal({Di}, 0, 1, gen, f32));
  in.dy = put(normal({B, T, Di}, 0, 1, gen, f32));
  in.z = put(normal({B, T, Di}, 0, 1, gen, f32));
  return in;
}

// Gated by SiLU(z), as the mixer calls it.
std::vector<Tensor> fwd_bwd(const Inputs& in) {
  Tensor ckpt;
  Tensor y = nn::selective_scan_forward(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, &ckpt);
  auto g = nn::selective_scan_backward(in.dy, in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, ckpt);
  return {y, g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz};
}

// The GPU against the CPU (float32 reference from the same rounded values) on a small shape.
bool validate(DType dtype) {
  const int64_t B = 2, T = 333, Di = 70, N = 16;
  const std::vector<Tensor> out = fwd_bwd(make_inputs(B, T, Di, N, dtype, Device::cuda(0), 7));
  Inputs ref_in = make_inputs(B, T, Di, N, dtype, Device::cpu(), 7);
  for (Tensor* t : {&ref_in.u, &ref_in.delta, &ref_in.A, &ref_in.Bm, &ref_in.Cm, &ref_in.D, &ref_in.dy, &ref_in.z})
    *t = t->to(DType::F32);
  const std::vector<Tensor> ref = fwd_bwd(ref_in);
  const char* names[] = {"y", "du", "ddelta", "dA", "dBm", "dCm", "dD", "dz"};
  const double tol = dtype == DType::BF16 ? 3e-2 : 2e-5;
  bool ok = true;
  for (size_t i = 0; i < out.size(); ++i) {
    const double err = max_rel(out[i], ref[i]);
    if (!(err <= tol)) {
      std::printf("  MISMATCH %s %s: relative error %.3g > %.3g\n", dtype_name(dtype), names[i], err, tol);
      ok = false;
    }
  }
  std::printf("validation %s [B %lld, T %lld, Di %lld, N %lld] against the CPU: %s\n", dtype_name(dtype), (long long)B,
              (long long)T, (long long)Di, (long long)N, ok ? "ok" : "FAILED");
  return ok;
}

void bench(int64_t B, int64_t T, int64_t Di, int64_t N, DType dtype, bool gate, int reps) {
  const Inputs in = make_inputs(B, T, Di, N, dtype, Device::cuda(0), 11);
  const Tensor z = gate ? in.z : Tensor();
  const double s = double(dtype_size(dtype)), btd = double(B * T * Di), btn = double(B * T * N);
  const double fwd_bytes = s * ((3 + gate) * btd + 2 * btn), bwd_bytes = s * ((5 + 2 * gate) * btd + 4 * btn);
  Tensor ckpt;
  const double fwd_ms =
      time_ms([&] { nn::selective_scan_forward(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, z, &ckpt); }, reps);
  const double bwd_ms =
      time_ms([&] { nn::selective_scan_backward(in.dy, in.u, in.delta, in.A, in.Bm, in.Cm, in.D, z, ckpt); }, reps);
  const double recompute_ms =
      time_ms([&] { nn::selective_scan_backward(in.dy, in.u, in.delta, in.A, in.Bm, in.Cm, in.D, z); }, reps);
  const double copy_ms = gpu_timing::copy_ms(fwd_bytes + bwd_bytes, reps);  // as many bytes, half read, half written
  const double total_ms = fwd_ms + bwd_ms, total_bytes = fwd_bytes + bwd_bytes;
  const double gbs = total_bytes / (total_ms * 1e6), copy_gbs = total_bytes / (copy_ms * 1e6);
  std::printf(
      "%s%s B %lld T %lld Di %lld N %lld: fwd %.3f ms (%.1f MB), bwd %.3f ms (%.1f MB; %.3f ms recomputing "
      "checkpoints), fwd+bwd %.3f ms, %.0f GB/s; copy of the same bytes %.3f ms, %.0f GB/s; "
      "%.0f%% of copy bandwidth\n",
      dtype_name(dtype), gate ? " gated" : "", (long long)B, (long long)T, (long long)Di, (long long)N, fwd_ms,
      fwd_bytes / 1e6, bwd_ms, bwd_bytes / 1e6, recompute_ms, total_ms, gbs, copy_ms, copy_gbs, 100.0 * gbs / copy_gbs);
}

#endif

}  // namespace

int main(int argc, char** argv) {
#if SESSA_HAS_CUDA
  int reps = 20;
  bool gated_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--gated") == 0) {
      gated_only = true;
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--gated]\n", argv[0]);
      return 2;
    }
  }
  try {
    bool ok = validate(DType::F32);
    ok = validate(DType::BF16) && ok;
    if (!ok) return 1;
    for (DType dtype : {DType::BF16, DType::F32})
      for (bool gate : {false, true}) {
        if (gated_only && !gate) continue;
        bench(16, 1024, 1536, 16, dtype, gate, reps);
        bench(4, 4096, 1536, 16, dtype, gate, reps);
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mamba_scan: %s\n", e.what());
    return 1;
  }
  return 0;
#else
  (void)argc, (void)argv;
  std::fprintf(stderr, "bench_mamba_scan: this binary was built without the CUDA backend\n");
  return 1;
#endif
}
