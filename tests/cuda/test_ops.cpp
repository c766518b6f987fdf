// GPU driver of the op table (tests/op_table.h): for every entry with kCuda and each of its
// kGpu cases, the GPU result is compared with the CPU reference on the same values:
//   dtypes   float32 with exact products, float32 with TF32 (kTf32), bfloat16 (kBf16), float64;
//            the reference computes in float32 from the values rounded to the dtype under test
//            (float64 for float64 runs and kRef64 entries);
//   what     the differentiable output, the raw outputs (statistics) and every input gradient
//            (from the same rounded upstream gradient), with their dtypes and device;
//   layouts  contiguous, and for float32 and bfloat16 also padded, strided, transposed (kStrided)
//            and broadcast (kBroadcast) inputs; ids on the device, and on the host (kHostIndex);
//   repeats  kDeterministic entries run twice and must agree bit for bit.
// Fresh device memory is poisoned (tests/cuda/main.cpp), so an unwritten output fails.
// SESSA_OP=<substring> runs only the matching entries.
#include <cstdlib>
#include <optional>
#include <string>

#include "autograd/ops.h"
#include "sessa/feedback.h"
#include "sessa/feedback_cuda.h"
#include "tests/cuda/parity.h"
#include "tests/op_table.h"

namespace sessa::test {
namespace {

bool selected(const OpEntry& e) {
  const char* only = std::getenv("SESSA_OP");
  return !only || e.name.find(only) != std::string::npos;
}

uint64_t seed_of(const OpEntry& e, size_t case_index) { return std::hash<std::string>{}(e.name) + 7919 * case_index; }

struct Run {
  DType dtype;
  bool tf32;
};

// The CPU reference for a run (inputs with the Broadcast layout's values when broadcast).
OpResult reference(const OpEntry& e, const OpCase& c, uint64_t seed, DType dtype, bool broadcast) {
  const std::vector<Tensor> base = draw_inputs(e, c, seed);
  const DType ref_t = dtype == DType::F64 || (e.flags & kRef64) ? DType::F64 : DType::F32;
  return run_op(e, c, place_inputs(e, broadcast ? broadcast_values(e, base) : base, {dtype, ref_t}), seed + 1, dtype);
}

void check_entry_case(const OpEntry& e, const OpCase& c, uint64_t seed, Run run, Layout layout, bool host_ids,
                      const OpResult& ref) {
  const DType dtype = run.dtype;
  const bool bf16 = dtype == DType::BF16;
  const std::string what = case_name(e, c) + " " + dtype_name(dtype) + (run.tf32 ? " tf32" : "") + " " +
                           layout_name(layout) + (host_ids ? " host ids" : "");
  CAPTURE(what);
  const std::vector<Tensor> base = draw_inputs(e, c, seed);
  const Placement on_gpu{dtype, dtype, gpu(), host_ids ? Device::cpu() : gpu(), layout};
  const std::vector<Tensor> in = place_inputs(e, base, on_gpu);
  const OpResult got = run_op(e, c, in, seed + 1, dtype);
  REQUIRE(got.outputs.size() == ref.outputs.size());
  REQUIRE(got.grads.size() == ref.grads.size());

  const double out_tol = bf16 ? e.tol.bf16 : dtype == DType::F64 ? e.tol.f64 : run.tf32 ? e.tol.tf32 : e.tol.f32;
  for (size_t i = 0; i < got.outputs.size(); ++i) {
    const Tensor& y = got.outputs[i];
    const std::string name = what + (i == 0 ? " output" : " raw output " + std::to_string(i));
    const bool f32_in_bf16 = bf16 && (i == 0 ? (e.flags & kOutF32) : (e.flags & kRawF32));
    CHECK_MESSAGE(y.is_cuda(), name << " not on the GPU");
    CHECK_MESSAGE(y.dtype() == (f32_in_bf16 ? DType::F32 : dtype), name << " dtype " << dtype_name(y.dtype()));
    expect_close(y, ref.outputs[i], f32_in_bf16 ? e.tol.raw_bf16 : out_tol, name);
  }
  const double grad_tol = bf16                  ? e.grad_tol.bf16
                          : dtype == DType::F64 ? e.grad_tol.f64
                          : run.tf32            ? e.grad_tol.tf32
                                                : e.grad_tol.f32;
  for (size_t i = 0, k = 0; i < in.size(); ++i) {
    if (!e.inputs[i].grad) continue;
    const std::string name = what + " grad of input " + std::to_string(i);
    const Tensor& g = got.grads[k];
    REQUIRE_MESSAGE(g.defined() == ref.grads[k].defined(), name);
    if (g.defined()) {
      CHECK_MESSAGE(g.is_cuda(), name << " not on the GPU");
      CHECK_MESSAGE(g.dtype() == in[i].dtype(), name << " dtype " << dtype_name(g.dtype()));
    }
    expect_close(g, ref.grads[k], bf16 && e.inputs[i].keep_f32 ? e.grad_tol.raw_bf16 : grad_tol, name);
    ++k;
  }

  if ((e.flags & kDeterministic) && layout == Layout::Contiguous && !host_ids) {
    const OpResult again = run_op(e, c, place_inputs(e, base, on_gpu), seed + 1, dtype);
    for (size_t i = 0; i < got.outputs.size(); ++i)
      CHECK_MESSAGE(bitwise_equal(got.outputs[i], again.outputs[i]),
                    what << ": output " << i << " differs between runs");
    for (size_t i = 0; i < got.grads.size(); ++i)
      CHECK_MESSAGE(bitwise_equal(got.grads[i], again.grads[i]), what << ": grad " << i << " differs between runs");
  }
}

// Every GPU case of `e` with at most `max_rows` rows in its first input's dim 1 (T for the
// sequence ops; 0: no limit).
void check_entry(const OpEntry& e, int64_t max_rows) {
  std::vector<Run> runs{{DType::F32, false}, {DType::F64, false}};
  if (e.flags & kTf32) runs.push_back({DType::F32, true});
  if (e.flags & kBf16) runs.push_back({DType::BF16, false});
  for (size_t ci = 0; ci < e.cases.size(); ++ci) {
    const OpCase& c = e.cases[ci];
    if (!(c.where & kGpu)) continue;
    if (max_rows > 0 && c.shapes[0].size() > 1 && c.shapes[0][1] > max_rows) continue;
    for (const Run& run : runs) {
      std::optional<NoTf32> exact;
      if (!run.tf32) exact.emplace();
      std::vector<Layout> layouts{Layout::Contiguous};
      const bool views = run.dtype == DType::BF16 || (run.dtype == DType::F32 && !run.tf32);
      if (views && (e.flags & kStrided))
        layouts.insert(layouts.end(), {Layout::Padded, Layout::Strided, Layout::Transposed});
      if (views && (e.flags & kBroadcast)) layouts.push_back(Layout::Broadcast);
      const uint64_t seed = seed_of(e, ci);
      const OpResult ref = reference(e, c, seed, run.dtype, false);
      for (Layout layout : layouts)
        check_entry_case(e, c, seed, run, layout, false,
                         layout == Layout::Broadcast ? reference(e, c, seed, run.dtype, true) : ref);
      if (e.flags & kHostIndex) check_entry_case(e, c, seed, run, Layout::Contiguous, true, ref);
    }
  }
}

// All kCuda entries of one family (one test case each, so each runs alone within a time limit),
// their cases limited to `max_rows` as check_entry.
void check_family(const std::string& family, int64_t max_rows = 0) {
  int entries = 0;
  for (const OpEntry& e : op_table()) {
    if (e.family != family || !(e.flags & kCuda) || !selected(e)) continue;
    CAPTURE(e.name);
    check_entry(e, max_rows);
    ++entries;
  }
  MESSAGE("op table: " << entries << " " << family << " entries checked on the GPU");
}

}  // namespace

TEST_CASE("cuda op table: every family has a test case") {
  const std::vector<std::string> here{"elementwise", "reductions", "softmax",   "matmul",   "linear", "rowops",
                                      "indexing",    "views",      "attention", "feedback", "mamba"};
  CHECK(op_families() == here);
}

TEST_CASE("cuda op table: elementwise and unary") { check_family("elementwise"); }
TEST_CASE("cuda op table: reductions") { check_family("reductions"); }
TEST_CASE("cuda op table: softmax and log_softmax") { check_family("softmax"); }
TEST_CASE("cuda op table: matmul") { check_family("matmul"); }
TEST_CASE("cuda op table: linear") { check_family("linear"); }
TEST_CASE("cuda op table: layer_norm, cross_entropy, head_cross_entropy, rope") { check_family("rowops"); }
TEST_CASE("cuda op table: index_select and cat") { check_family("indexing"); }
TEST_CASE("cuda op table: views") { check_family("views"); }
TEST_CASE("cuda op table: attention") { check_family("attention"); }
TEST_CASE("cuda op table: feedback solve") { check_family("feedback"); }
// Puts the feedback solve's panel and leaf sizes back to their defaults when a test ends.
struct FeedbackShapeReset {
  ~FeedbackShapeReset() { cuda::set_feedback_panel_rows(0), cuda::set_feedback_leaf_blocks(0); }
};
// T = 4097 runs at the default panel size only (above): in panels of 64 rows its eight
// configurations took 130 s on the H200, mostly repeating its float64 reference.
TEST_CASE("cuda op table: feedback solve in small panels (many panel boundaries), both leaf shapes") {
  const FeedbackShapeReset reset;
  for (int leaf : {2, 4})
    for (int rows : {64, 128, 320, 1024}) {
      CAPTURE(leaf);
      CAPTURE(rows);
      cuda::set_feedback_leaf_blocks(leaf);
      cuda::set_feedback_panel_rows(rows);
      check_family("feedback", 1000);
    }
}
// Small enough for compute-sanitizer (memcheck, racecheck): the feedback solve's forward and
// backward through autograd over two panels of 128 rows (each two 64-row blocks) and a ragged
// last block, float32 (exact products) and bfloat16, against the float64 CPU solve.
TEST_CASE("cuda feedback solve sanitizer-sized: B 2, T 200, D 70, panels of 128 rows") {
  const FeedbackShapeReset reset;
  cuda::set_feedback_panel_rows(128);
  NoTf32 exact;
  Generator gen(81);
  const int64_t B = 2, T = 200, D = 70;
  const std::vector<Tensor> in{cpu_randn({B, T, D}, gen), cpu_randn({B, T, D}, gen),
                               uniform({B, T}, 0.9, 0.99, gen, {DType::F32}), cpu_randn({B, T, D}, gen)};
  const Tensor w = cpu_randn({B, T, D}, gen);
  // s and the gradients of q, k, gamma, f, in float64 on the host, from the inputs rounded to
  // `dt` and computed in `compute` (the reference: float64 on the CPU from the same rounded values).
  auto run = [&](Device dev, DType dt, DType compute) {
    std::vector<Tensor> leaves;
    for (const Tensor& t : in) {
      Tensor l = t.to(dt).to(compute).to(dev).detach();
      l.set_requires_grad();
      leaves.push_back(l);
    }
    Tensor s = layer::feedback_solve(leaves[0], leaves[1], leaves[2], leaves[3]);
    autograd::backward(sum_all(mul(s, w.to(dt).to(compute).to(dev))));
    std::vector<Tensor> out{host(s).to(DType::F64)};
    for (const Tensor& l : leaves) out.push_back(host(l.grad()).to(DType::F64));
    return out;
  };
  for (auto [dt, tol] : {std::pair{DType::F32, 3e-4}, std::pair{DType::BF16, 3e-2}}) {
    const std::vector<Tensor> ref = run(Device::cpu(), dt, DType::F64);
    for (int leaf : {2, 4}) {  // both leaf shapes (wide and narrow grids)
      cuda::set_feedback_leaf_blocks(leaf);
      const std::vector<Tensor> out = run(gpu(), dt, dt);
      const char* what[] = {"s", "dq", "dk", "dgamma", "df"};
      for (size_t i = 0; i < ref.size(); ++i) {
        const double err = max_rel_diff(out[i], ref[i]);
        CHECK_MESSAGE(err <= tol,
                      dtype_name(dt) << ", leaves of " << leaf << " blocks, " << what[i] << ": relative error " << err);
      }
    }
  }
}

TEST_CASE("cuda op table: Mamba conv and scan") { check_family("mamba"); }

}  // namespace sessa::test
