// GPU parity of causal attention and of the Sessa feedback solve, forward and backward.
// Each input is drawn once, rounded to the dtype under test, and given to the GPU in that
// dtype and to the CPU op in float64; the GPU result must match the float64 answer.
// bfloat16 attention runs twice: on tensor cores and on the SIMT kernels
// (SESSA_ATTENTION_SIMT=1), so a failure says which path is wrong.
#include <cmath>
#include <cstdlib>
#include <string>

#include "sessa/feedback.h"
#include "tests/cuda/parity.h"

namespace sessa::test {

namespace {

Tensor host64(const Tensor& t) { return t.to(Device::cpu()).to(DType::F64); }

void expect_close(const Tensor& gpu_result, const Tensor& ref, double tol, const std::string& what) {
  REQUIRE_MESSAGE(gpu_result.shape() == ref.shape(), what << ": shape " << gpu_result.shape() << " vs " << ref.shape());
  const double err = max_rel_diff(host64(gpu_result), host64(ref));
  CHECK_MESSAGE(err <= tol, what << ": relative error " << err << " > " << tol);
}

// One input: on the GPU in `dtype`, and the same values as a float64 CPU tensor.
struct Input {
  Tensor gpu, cpu;
};
Input draw(const Shape& shape, Generator& gen, DType dtype, double scale = 1.0) {
  const Tensor x = cpu_randn(shape, gen, scale).to(dtype);
  return {x.to(gpu()), x.to(DType::F64)};
}

struct AttentionCase {
  int64_t B, H, Hkv, Tq, Tk, dh, q_offset;
};

void check_attention(const AttentionCase& c, DType dtype, uint64_t seed) {
  const std::string where = "B " + std::to_string(c.B) + " H " + std::to_string(c.H) + " Hkv " + std::to_string(c.Hkv) +
                            " Tq " + std::to_string(c.Tq) + " Tk " + std::to_string(c.Tk) + " dh " +
                            std::to_string(c.dh) + " q_offset " + std::to_string(c.q_offset) + " " + dtype_name(dtype);
  CAPTURE(where);
  Generator gen(seed);
  const Input q = draw({c.B, c.H, c.Tq, c.dh}, gen, dtype), k = draw({c.B, c.Hkv, c.Tk, c.dh}, gen, dtype);
  const Input v = draw({c.B, c.Hkv, c.Tk, c.dh}, gen, dtype), dout = draw({c.B, c.H, c.Tq, c.dh}, gen, dtype);
  const double scale = 1.0 / std::sqrt(double(c.dh));
  const double tol_fwd = dtype == DType::BF16 ? 2e-2 : 2e-5, tol_bwd = dtype == DType::BF16 ? 3e-2 : 2e-5;

  const auto ref = ops::attention(q.cpu, k.cpu, v.cpu, c.q_offset, scale);
  const auto res = ops::attention(q.gpu, k.gpu, v.gpu, c.q_offset, scale);
  CHECK(res.out.dtype() == dtype);
  CHECK(res.lse.dtype() == (dtype == DType::BF16 ? DType::F32 : dtype));
  expect_close(res.out, ref.out, tol_fwd, "out");
  expect_close(res.lse, ref.lse, tol_fwd, "lse");

  const auto rg = ops::attention_backward(dout.cpu, q.cpu, k.cpu, v.cpu, ref.out, ref.lse, c.q_offset, scale);
  const auto gg = ops::attention_backward(dout.gpu, q.gpu, k.gpu, v.gpu, res.out, res.lse, c.q_offset, scale);
  expect_close(gg.dq, rg.dq, tol_bwd, "dq");
  expect_close(gg.dk, rg.dk, tol_bwd, "dk");
  expect_close(gg.dv, rg.dv, tol_bwd, "dv");
}

const AttentionCase kAttentionCases[] = {
    {2, 3, 3, 70, 70, 64, 0},      // MHA, T not a multiple of 64
    {1, 4, 2, 200, 200, 64, 0},    // GQA 4/2
    {3, 4, 1, 70, 70, 16, 0},      // GQA 4/1, dh 16, odd batch
    {2, 4, 2, 1, 37, 64, 36},      // decoding: one query against a cache
    {1, 2, 1, 5, 100, 32, 95},     // a few queries at the end of the cache
    {1, 2, 2, 40, 100, 64, 30},    // queries in the middle: later keys get zero gradients
    {1, 1, 1, 1, 1, 64, 0},        // T = 1
    {1, 2, 1, 130, 130, 128, 0},   // dh 128
    {2, 2, 2, 33, 33, 20, 0},      // dh not a multiple of 8 (scalar loads)
    {2, 12, 12, 300, 300, 64, 0},  // larger
};

struct SimtGuard {  // forces the SIMT path for bfloat16 attention while alive
  explicit SimtGuard(bool on) { setenv("SESSA_ATTENTION_SIMT", on ? "1" : "0", 1); }
  ~SimtGuard() { unsetenv("SESSA_ATTENTION_SIMT"); }
};

}  // namespace

TEST_CASE("cuda attention: float32 forward and backward match the CPU") {
  uint64_t seed = 100;
  for (const auto& c : kAttentionCases) check_attention(c, DType::F32, ++seed);
}

TEST_CASE("cuda attention: bfloat16 (tensor cores and SIMT) matches the CPU on the same inputs") {
  for (bool simt : {false, true}) {
    CAPTURE(simt);
    SimtGuard guard(simt);
    uint64_t seed = 200;
    for (const auto& c : kAttentionCases) check_attention(c, DType::BF16, ++seed);
  }
}

TEST_CASE("cuda attention: float64") {
  check_attention({2, 4, 2, 70, 70, 64, 0}, DType::F64, 300);
  check_attention({1, 2, 1, 3, 90, 128, 87}, DType::F64, 301);
}

namespace {

// tol: the bound for bfloat16 inputs, or float32 ones with TF32 products (3e-2).
void check_feedback(int64_t B, int64_t T, int64_t D, DType dtype, uint64_t seed, bool tf32 = false) {
  const std::string where =
      "B " + std::to_string(B) + " T " + std::to_string(T) + " D " + std::to_string(D) + " " + dtype_name(dtype);
  CAPTURE(where);
  Generator gen(seed);
  const Input q = draw({B, T, D}, gen, dtype), k = draw({B, T, D}, gen, dtype), f = draw({B, T, D}, gen, dtype);
  const Input ds = draw({B, T, D}, gen, dtype);
  const Tensor g32 = uniform({B, T}, 0.989, 0.999, gen, {DType::F32}).to(dtype);  // gamma near gamma_max
  const Input gamma{g32.to(gpu()), g32.to(DType::F64)};
  const bool loose = dtype == DType::BF16 || tf32;
  const double tol_fwd = loose ? 3e-2 : dtype == DType::F64 ? 1e-12 : 1e-4;
  const double tol_bwd = loose ? 3e-2 : dtype == DType::F64 ? 1e-11 : 3e-4;
  const DType saved = dtype == DType::BF16 ? DType::F32 : dtype;

  const auto ref = ops::feedback_solve(q.cpu, k.cpu, gamma.cpu, f.cpu);
  const auto res = ops::feedback_solve(q.gpu, k.gpu, gamma.gpu, f.gpu);
  CHECK(res.s.dtype() == dtype);
  CHECK(res.alpha.dtype() == saved);
  CHECK(res.ctx.dtype() == saved);
  expect_close(res.alpha, ref.alpha, tol_fwd, "alpha");
  expect_close(res.ctx, ref.ctx, tol_fwd, "ctx");
  expect_close(res.s, ref.s, tol_fwd, "s");

  const auto rg = ops::feedback_solve_backward(ds.cpu, q.cpu, k.cpu, gamma.cpu, ref);
  const auto gg = ops::feedback_solve_backward(ds.gpu, q.gpu, k.gpu, gamma.gpu, res);
  expect_close(gg.df, rg.df, tol_bwd, "df");
  expect_close(gg.dgamma, rg.dgamma, tol_bwd, "dgamma");
  expect_close(gg.dq, rg.dq, tol_bwd, "dq");
  expect_close(gg.dk, rg.dk, tol_bwd, "dk");
}

struct FeedbackCase {
  int64_t B, T, D;
};
const FeedbackCase kFeedbackCases[] = {{1, 1, 8}, {2, 5, 8}, {1, 64, 33}, {3, 130, 70}, {2, 200, 40}, {1, 300, 96}};

}  // namespace

TEST_CASE("cuda feedback solve: float32 forward and backward match the float64 CPU solve") {
  uint64_t seed = 400;
  {
    NoTf32 exact;
    for (const auto& c : kFeedbackCases) check_feedback(c.B, c.T, c.D, DType::F32, ++seed);
  }
  for (const auto& c : kFeedbackCases) check_feedback(c.B, c.T, c.D, DType::F32, ++seed, /*tf32=*/true);
}

TEST_CASE("cuda feedback solve: bfloat16 inputs, float32 solve, within 3e-2 of float64") {
  uint64_t seed = 500;
  for (const auto& c : kFeedbackCases) check_feedback(c.B, c.T, c.D, DType::BF16, ++seed);
}

TEST_CASE("cuda feedback solve: float64") { check_feedback(2, 130, 24, DType::F64, 600); }

}  // namespace sessa::test
