// GPU parity for the Mamba kernels (nn/mamba_conv.cu, nn/mamba_scan.cu): causal
// depthwise conv1d and the selective scan, forward and every backward output, against the
// CPU ops, with fresh device memory poisoned (tests/cuda/main.cpp) so that an output the
// kernels leave unwritten fails. Shapes cover T = 1 (and T < K), T around the scan's
// checkpoint segments of 32 steps (16 for N > 16), its sub-segments of 8 (4) and forward
// tiles of 16 (3, 63, 65, 127, 129, 1000, 4097; with few channels time is also split into
// chunks of whole segments, which every case below but the "many channels" one does),
// batches of 1 and 3, channel counts that are not a multiple of the scan's 64-channel
// blocks (32 for N > 16) or the conv's blocks,
// K = 1 and K = 9 (two tap groups in the dw reduction), state sizes N = 1, 4, 5, 16, 32,
// 64, and Bm/Cm given as strided views (as the mixer passes them). The scan's backward
// runs both with the forward's chunk checkpoints and without (recomputed). bfloat16 runs
// on the GPU with bf16 inputs and is compared with the float32 CPU result from the same
// rounded values; float64 is compared with the float64 CPU ops. Every output must be
// bitwise reproducible (fixed-order reductions, no atomics).
//
// Tolerances: float32 2e-5 relative to max(1, max |ref|) (the parallel scan reassociates
// the recurrence, which changes rounding but not its size); bfloat16 3e-2 (outputs
// rounded to bf16); float64 1e-10.
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "nn/mamba_ops.h"
#include "tests/cuda/parity.h"

namespace sessa::test {
namespace {

// Rounds a float32 CPU tensor to `dtype` and back, so CPU and GPU see the same values.
Tensor rounded(const Tensor& x, DType dtype) { return x.to(dtype).to(DType::F32); }

double tol_for(DType t) { return t == DType::BF16 ? 3e-2 : t == DType::F64 ? 1e-10 : 2e-5; }

void check_near(const Tensor& gpu_result, const Tensor& cpu_ref, DType dtype, const std::string& what) {
  REQUIRE_MESSAGE(gpu_result.is_cuda(), what << ": result not on the GPU");
  REQUIRE_MESSAGE(gpu_result.dtype() == dtype, what << ": dtype " << dtype_name(gpu_result.dtype()));
  REQUIRE_MESSAGE(gpu_result.shape() == cpu_ref.shape(),
                  what << ": shape " << gpu_result.shape() << " vs " << cpu_ref.shape());
  const double err = max_rel_diff(host(gpu_result).to(DType::F64), cpu_ref.to(DType::F64));
  CHECK_MESSAGE(err <= tol_for(dtype), what << ": relative error " << err << " > " << tol_for(dtype));
}

// CPU reference copies (float32, or float64 for a float64 run) and GPU copies of
// float32 CPU tensors, both from the values rounded to `dtype`.
struct Placed {
  std::vector<Tensor> cpu, gpu;
};
Placed place(const std::vector<Tensor>& ts, DType dtype) {
  const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  Placed p;
  for (const Tensor& t : ts) {
    p.cpu.push_back(rounded(t, dtype).to(ref_t));
    p.gpu.push_back(t.to(dtype).to(gpu()));
  }
  return p;
}

std::string name(const char* op, const Shape& s, DType dtype) {
  std::string r = std::string(op) + " " + dtype_name(dtype) + " [";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// ---- causal conv1d ------------------------------------------------------------------

// With `silu`, the conv fused with SiLU (forward, and the backward recomputing it).
void check_conv(int64_t B, int64_t T, int64_t C, int64_t K, DType dtype, uint64_t seed, bool silu = false) {
  const std::string what = name(silu ? "causal_conv1d + silu" : "causal_conv1d", {B, T, C, K}, dtype);
  Generator gen(seed);
  Placed p = place(
      {cpu_randn({B, T, C}, gen), cpu_randn({C, K}, gen, 0.5), cpu_randn({C}, gen), cpu_randn({B, T, C}, gen)}, dtype);
  auto run = [silu](const std::vector<Tensor>& t) {
    auto g =
        silu ? nn::causal_conv1d_backward(t[3], t[0], t[1], t[2], true) : nn::causal_conv1d_backward(t[3], t[0], t[1]);
    return std::vector<Tensor>{nn::causal_conv1d_forward(t[0], t[1], t[2], silu), g.dx, g.dw, g.dbias};
  };
  const std::vector<Tensor> ref = run(p.cpu), out = run(p.gpu);
  const char* names[] = {"y", "dx", "dw", "dbias"};
  for (size_t i = 0; i < ref.size(); ++i) check_near(out[i], ref[i], dtype, what + " " + names[i]);
  const std::vector<Tensor> again = run(p.gpu);
  CHECK_MESSAGE(bitwise_equal(out[2], again[2]), what << ": dw differs between two runs");
  CHECK_MESSAGE(bitwise_equal(out[3], again[3]), what << ": dbias differs between two runs");
}

TEST_CASE("cuda causal_conv1d float32: forward and backward match the CPU") {
  check_conv(3, 7, 37, 4, DType::F32, 1);     // odd batch, C not a multiple of 32
  check_conv(1, 1, 5, 4, DType::F32, 2);      // T = 1 < K
  check_conv(5, 2, 3, 4, DType::F32, 3);      // T < K, tiny C
  check_conv(3, 7, 37, 1, DType::F32, 4);     // K = 1
  check_conv(2, 33, 19, 9, DType::F32, 5);    // K + 1 > 8 taps: two tap groups
  check_conv(2, 300, 70, 4, DType::F32, 6);   // long T
  check_conv(4, 512, 200, 4, DType::F32, 7);  // several row splits in the dw reduction
}

TEST_CASE("cuda causal_conv1d at sequence lengths around the scan's chunks") {
  check_conv(1, 63, 45, 4, DType::F32, 8);
  check_conv(3, 65, 37, 4, DType::F32, 9);
  check_conv(1, 4097, 37, 4, DType::F32, 10);
}

TEST_CASE("cuda causal_conv1d fused with SiLU") {
  check_conv(3, 1, 37, 4, DType::F32, 15, true);
  check_conv(1, 3, 19, 4, DType::F32, 16, true);
  check_conv(3, 65, 37, 4, DType::F32, 17, true);
  check_conv(1, 1000, 70, 4, DType::F32, 18, true);
  check_conv(2, 33, 19, 9, DType::F32, 19, true);
  check_conv(3, 300, 45, 4, DType::BF16, 20, true);
  check_conv(3, 63, 37, 4, DType::F64, 21, true);
}

TEST_CASE("cuda causal_conv1d bfloat16 and float64") {
  check_conv(3, 300, 70, 4, DType::BF16, 11);
  check_conv(1, 1, 37, 4, DType::BF16, 12);
  check_conv(3, 7, 37, 4, DType::F64, 13);
  check_conv(2, 65, 33, 1, DType::F64, 14);
}

// Channel counts that are multiples of a 16-byte pack (8 bf16, 4 float, 2 double) take the
// packed kernels; the cases above (odd C) take the one-channel ones.
TEST_CASE("cuda causal_conv1d with channels in 16-byte packs") {
  check_conv(2, 300, 64, 4, DType::BF16, 22, true);
  check_conv(3, 65, 96, 4, DType::BF16, 23);
  check_conv(1, 3, 8, 4, DType::BF16, 24, true);  // T < K, one pack per row
  check_conv(2, 33, 40, 4, DType::F32, 25, true);
  check_conv(2, 129, 36, 9, DType::F32, 26);
  check_conv(1, 1000, 16, 4, DType::F64, 27, true);
}

// The backward walks runs of rows with its windows in registers: runs that start and end
// inside sequences, sequences shorter than a run, kernels narrower (K 2) and wider (K 16)
// than its packed window of 4, backward packs of 4 where the forward's 16-byte packs do not fit.
TEST_CASE("cuda causal_conv1d backward: runs across sequences, kernel sizes 2 and 16") {
  check_conv(8, 5, 8, 4, DType::F32, 28, true);      // 40 rows in 3 runs of 14: sequences of 5 inside
  check_conv(16, 37, 64, 4, DType::BF16, 29, true);  // 37 runs of 16 rows, boundaries mid-run
  check_conv(2, 70, 36, 4, DType::BF16, 30, true);   // C % 8 != 0: backward packs of 4
  check_conv(2, 40, 12, 2, DType::F32, 31, true);    // K 2 < 4
  check_conv(3, 45, 5, 16, DType::F32, 32);          // K 16, the widest
  check_conv(1, 9, 3, 16, DType::F64, 33, true);     // K 16 > T
  check_conv(5, 3, 8, 4, DType::BF16, 34, true);     // one run of 15 rows: 5 sequences shorter than K
  check_conv(4, 9, 16, 4, DType::F64, 35, true);     // 3 runs of 12: they start at t 3 and 6, double packs
}

TEST_CASE("cuda causal_conv1d backward names a kernel wider than 16 taps") {
  Generator gen(1);
  const Tensor x = cpu_randn({1, 8, 3}, gen).to(gpu()), w = cpu_randn({3, 17}, gen).to(gpu()),
               dy = cpu_randn({1, 8, 3}, gen).to(gpu());
  check_error([&] { nn::causal_conv1d_backward(dy, x, w); }, {"causal_conv1d_backward", "16", "[3, 17]"});
}

// ---- selective scan -----------------------------------------------------------------

// u, dy ~ N(0, 1); delta ~ U(0.01, 1) (softplus outputs); A ~ -U(0.1, 4) (A = -exp(A_log));
// Bm, Cm ~ N(0, 1); D ~ N(0, 1). With `views`, Bm and Cm are slices of one
// (B, T, 3 + 2N) tensor, like the x_proj output the mixer splits.
// With `gate`, the output is gated by SiLU(z) inside the op (z ~ N(0, 2)).
void check_scan(int64_t B, int64_t T, int64_t Di, int64_t N, DType dtype, uint64_t seed, bool views = false,
                bool gate = false) {
  const std::string what = name(gate    ? "selective_scan (gated)"
                                : views ? "selective_scan (views)"
                                        : "selective_scan",
                                {B, T, Di, N}, dtype);
  Generator gen(seed);
  Tensor u = cpu_randn({B, T, Di}, gen), delta = uniform({B, T, Di}, 0.01, 1.0, gen, {DType::F32});
  Tensor A = uniform({Di, N}, -4.0, -0.1, gen, {DType::F32});
  Tensor dbc = cpu_randn({B, T, 3 + 2 * N}, gen), D = cpu_randn({Di}, gen), dy = cpu_randn({B, T, Di}, gen);
  Tensor Bm = ops::contiguous(ops::narrow(dbc, 2, 3, N)), Cm = ops::contiguous(ops::narrow(dbc, 2, 3 + N, N));
  Tensor z = cpu_randn({B, T, Di}, gen, 2.0);
  Placed p = place({u, delta, A, views ? dbc : Bm, views ? dbc : Cm, D, dy, z}, dtype);
  // y and the six gradients; the backward reuses the forward's checkpoints if `saved`.
  auto run = [&](const std::vector<Tensor>& t, bool saved) {
    const Tensor Bv = views ? ops::narrow(t[3], 2, 3, N) : t[3], Cv = views ? ops::narrow(t[4], 2, 3 + N, N) : t[4];
    Tensor ckpt;
    const Tensor zv = gate ? t[7] : Tensor();
    Tensor y = nn::selective_scan_forward(t[0], t[1], t[2], Bv, Cv, t[5], zv, saved ? &ckpt : nullptr);
    if (saved && t[0].is_cuda()) {
      const int64_t every = N <= 16 ? 32 : 16;  // the checkpoint spacing (nn/mamba_scan.cuh)
      const Shape want{B, (T + every - 1) / every, N, Di};
      CHECK_MESSAGE(ckpt.shape() == want, what << ": checkpoints " << ckpt.shape());
    }
    auto g = nn::selective_scan_backward(t[6], t[0], t[1], t[2], Bv, Cv, t[5], zv, ckpt);
    std::vector<Tensor> r{y, g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD};
    if (gate) r.push_back(g.dz);
    return r;
  };
  const std::vector<Tensor> ref = run(p.cpu, false);
  const char* names[] = {"y", "du", "ddelta", "dA", "dBm", "dCm", "dD", "dz"};
  for (bool saved : {false, true}) {
    const std::string how = what + (saved ? " (forward checkpoints)" : " (recomputed checkpoints)");
    const std::vector<Tensor> out = run(p.gpu, saved);
    for (size_t i = 0; i < ref.size(); ++i) check_near(out[i], ref[i], dtype, how + " " + names[i]);
    const std::vector<Tensor> again = run(p.gpu, saved);
    for (size_t i = 0; i < ref.size(); ++i)
      CHECK_MESSAGE(bitwise_equal(out[i], again[i]), how << ": " << names[i] << " differs between two runs");
  }
}

TEST_CASE("cuda selective_scan float32: forward and backward match the CPU") {
  check_scan(3, 1, 37, 16, DType::F32, 21);     // T = 1: one step, one sub-segment
  check_scan(1, 3, 37, 16, DType::F32, 22);     // T = 3 < a sub-segment's 4 steps
  check_scan(3, 63, 45, 16, DType::F32, 23);    // one step short of a 64-step segment
  check_scan(1, 65, 70, 16, DType::F32, 24);    // one step past a segment
  check_scan(3, 127, 19, 16, DType::F32, 25);   // one step short of two segments
  check_scan(1, 129, 37, 16, DType::F32, 26);   // one step past two segments
  check_scan(3, 1000, 45, 16, DType::F32, 27);  // 16 segments, the last partial
  check_scan(1, 4097, 37, 16, DType::F32, 28);  // 65 segments, the last of one step
  check_scan(2, 300, 45, 4, DType::F32, 29);    // N = 4
  check_scan(3, 7, 37, 5, DType::F32, 30);      // N = 5
  check_scan(1, 20, 33, 1, DType::F32, 31);     // N = 1
  check_scan(2, 150, 40, 32, DType::F32, 32);   // N = 32
  check_scan(2, 140, 33, 64, DType::F32, 33);   // the largest state supported
  check_scan(2, 1000, 256, 16, DType::F32, 34);
  check_scan(2, 129, 300, 16, DType::F32, 36);  // channels over five 64-channel blocks, last partial
}

// Time is split into chunks only when batch x channel blocks leave resident-block slots
// idle (as in every case above); with 939 blocks of 64 channels (one chunk forward and
// backward on an H200) each thread walks the whole sequence.
TEST_CASE("cuda selective_scan with many channels: one time chunk") { check_scan(3, 200, 20000, 16, DType::F32, 35); }

TEST_CASE("cuda selective_scan with strided Bm and Cm views") {
  check_scan(3, 7, 37, 16, DType::F32, 41, true);
  check_scan(2, 200, 40, 4, DType::F32, 42, true);
  check_scan(1, 65, 21, 16, DType::BF16, 43, true);
}

TEST_CASE("cuda selective_scan gated by SiLU(z)") {
  check_scan(3, 1, 37, 16, DType::F32, 81, false, true);
  check_scan(1, 65, 45, 16, DType::F32, 82, false, true);
  check_scan(3, 1000, 37, 16, DType::F32, 83, false, true);
  check_scan(2, 63, 21, 5, DType::F32, 84, true, true);
  check_scan(1, 4097, 37, 16, DType::BF16, 85, false, true);
  check_scan(3, 63, 37, 16, DType::F64, 86, false, true);
}

TEST_CASE("cuda selective_scan bfloat16") {
  check_scan(3, 65, 45, 16, DType::BF16, 51);
  check_scan(1, 4097, 37, 16, DType::BF16, 52);
  check_scan(3, 3, 37, 4, DType::BF16, 53);
  check_scan(1, 1000, 70, 16, DType::BF16, 54);
}

// Small enough for compute-sanitizer racecheck/memcheck (the cases above take minutes
// under racecheck): two chunks, the last partial; channels over three blocks, the last
// partial; both the forward's and the recomputed checkpoints; gated; strided Bm, Cm.
TEST_CASE("cuda selective_scan sanitizer-sized: B 2, T 300, channels 40, N 16, gated") {
  check_scan(2, 300, 40, 16, DType::F32, 91, false, true);
  check_scan(2, 300, 40, 16, DType::BF16, 92, true, true);
}

TEST_CASE("cuda selective_scan float64") {
  check_scan(3, 63, 37, 16, DType::F64, 61);
  check_scan(1, 65, 35, 5, DType::F64, 62);
  check_scan(3, 1, 9, 16, DType::F64, 63);
  check_scan(1, 1000, 20, 16, DType::F64, 64);
  check_scan(1, 70, 20, 64, DType::F64, 65);
}

// The autograd node keeps the forward's checkpoints for its backward: gradients through
// nn::selective_scan (gated, with and without delta = softplus(dt) inside the node as the
// mixer calls it) on the GPU match the CPU ones.
TEST_CASE("cuda nn::selective_scan backward through autograd matches the CPU") {
  Generator gen(71);
  const int64_t B = 2, T = 300, Di = 45, N = 16;
  std::vector<Tensor> in{cpu_randn({B, T, Di}, gen),
                         uniform({B, T, Di}, 0.01, 1.0, gen, {DType::F32}),
                         uniform({Di, N}, -4.0, -0.1, gen, {DType::F32}),
                         cpu_randn({B, T, N}, gen),
                         cpu_randn({B, T, N}, gen),
                         cpu_randn({Di}, gen),
                         cpu_randn({B, T, Di}, gen)};
  Tensor w = cpu_randn({B, T, Di}, gen);
  auto grads = [&](Device dev, bool delta_softplus) {
    std::vector<Tensor> leaves;
    for (const Tensor& t : in) {
      Tensor l = t.to(dev).detach();  // a fresh leaf, not `t` itself
      l.set_requires_grad();
      leaves.push_back(l);
    }
    Tensor y =
        nn::selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], delta_softplus);
    autograd::backward(sum_all(mul(y, w.to(dev))));
    std::vector<Tensor> g;
    for (const Tensor& l : leaves) g.push_back(host(l.grad()));
    return g;
  };
  for (bool delta_softplus : {false, true}) {
    CAPTURE(delta_softplus);
    const std::vector<Tensor> ref = grads(Device::cpu(), delta_softplus), out = grads(gpu(), delta_softplus);
    for (size_t i = 0; i < ref.size(); ++i) {
      const double err = max_rel_diff(out[i].to(DType::F64), ref[i].to(DType::F64));
      CHECK_MESSAGE(err <= 2e-5, "input " << i << ": relative error " << err);
    }
  }
}

TEST_CASE("cuda selective_scan rejects a state larger than 64") {
  Generator gen(51);
  Tensor u = cpu_randn({1, 2, 3}, gen).to(gpu()), A = cpu_randn({3, 65}, gen).to(gpu());
  Tensor Bm = cpu_randn({1, 2, 65}, gen).to(gpu()), D = cpu_randn({3}, gen).to(gpu());
  check_error([&] { nn::selective_scan_forward(u, u, A, Bm, Bm, D); }, {"selective_scan", "64"});
}

}  // namespace
}  // namespace sessa::test
