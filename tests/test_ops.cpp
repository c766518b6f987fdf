// CPU driver of the op table (tests/op_table.h): for every entry's kCpu cases, the float64
// gradcheck of the differentiable op, and, in float64 and float32, the outputs and input
// gradients with padded, strided, transposed and broadcast (stride-0) inputs against a
// contiguous run of the same values. SESSA_OP=<substring> runs only the matching entries.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "tests/helpers.h"
#include "tests/op_table.h"

namespace sessa::test {
namespace {

bool selected(const OpEntry& e) {
  const char* only = std::getenv("SESSA_OP");
  return !only || e.name.find(only) != std::string::npos;
}

uint64_t seed_of(const OpEntry& e, size_t case_index) { return std::hash<std::string>{}(e.name) + case_index; }

TEST_CASE("op table: every entry has cases for what its flags ask") {
  CHECK(op_table().size() >= 40);
  size_t cpu_cases = 0, gpu_cases = 0;
  for (const OpEntry& e : op_table())
    for (const OpCase& c : e.cases)
      cpu_cases += (c.where & kCpu) != 0, gpu_cases += (c.where & kGpu) && (e.flags & kCuda);
  MESSAGE("op table: " << op_table().size() << " entries, " << cpu_cases << " CPU cases, " << gpu_cases
                       << " GPU cases");
  for (const OpEntry& e : op_table()) {
    CAPTURE(e.name);
    bool cpu = false, gpu = false;
    for (const OpCase& c : e.cases) {
      cpu = cpu || (c.where & kCpu), gpu = gpu || (c.where & kGpu);
      CHECK(c.shapes.size() == e.inputs.size());
    }
    if (e.flags & (kGradcheck | kStrided | kBroadcast)) CHECK(cpu);
    if (e.flags & kCuda) CHECK(gpu);
    CHECK(bool(e.call));
  }
}

TEST_CASE("op table: float64 gradcheck of every entry") {
  for (const OpEntry& e : op_table()) {
    if (!(e.flags & kGradcheck) || !selected(e)) continue;
    for (size_t ci = 0; ci < e.cases.size(); ++ci) {
      const OpCase& c = e.cases[ci];
      if (!(c.where & kCpu)) continue;
      const std::string what = case_name(e, c);
      CAPTURE(what);
      const std::vector<Tensor> all = place_inputs(e, draw_inputs(e, c, seed_of(e, ci)), {});
      std::vector<Tensor> leaves;
      for (size_t i = 0; i < all.size(); ++i)
        if (e.inputs[i].grad) leaves.push_back(all[i]);
      auto f = [&](const std::vector<Tensor>& in) {
        std::vector<Tensor> full = all;
        for (size_t i = 0, k = 0; i < full.size(); ++i)
          if (e.inputs[i].grad) full[i] = in[k++];
        return e.call(full, c.arg);
      };
      expect_gradcheck(f, leaves, e.gradcheck);
    }
  }
}

TEST_CASE("op table: padded, strided, transposed and broadcast inputs agree with a contiguous run") {
  for (const OpEntry& e : op_table()) {
    if (!(e.flags & (kStrided | kBroadcast)) || !selected(e)) continue;
    std::vector<Layout> layouts;
    if (e.flags & kStrided) layouts = {Layout::Padded, Layout::Strided, Layout::Transposed};
    if (e.flags & kBroadcast) layouts.push_back(Layout::Broadcast);
    for (size_t ci = 0; ci < e.cases.size(); ++ci) {
      const OpCase& c = e.cases[ci];
      if (!(c.where & kCpu)) continue;
      const std::vector<Tensor> base = draw_inputs(e, c, seed_of(e, ci));
      for (DType dtype : {DType::F64, DType::F32}) {
        const double tol = dtype == DType::F64 ? e.tol.f64 : e.tol.f32;
        const double gtol = dtype == DType::F64 ? e.grad_tol.f64 : e.grad_tol.f32;
        for (Layout layout : layouts) {
          const std::string what = case_name(e, c) + " " + dtype_name(dtype) + " " + layout_name(layout);
          CAPTURE(what);
          const auto values = layout == Layout::Broadcast ? broadcast_values(e, base) : base;
          const Placement contiguous{dtype, dtype}, viewed{dtype, dtype, Device::cpu(), Device::cpu(), layout};
          const OpResult ref = run_op(e, c, place_inputs(e, values, contiguous), seed_of(e, ci) + 1, dtype);
          const OpResult got = run_op(e, c, place_inputs(e, base, viewed), seed_of(e, ci) + 1, dtype);
          REQUIRE(got.outputs.size() == ref.outputs.size());
          REQUIRE(got.grads.size() == ref.grads.size());
          for (size_t i = 0; i < ref.outputs.size(); ++i)
            expect_close(got.outputs[i], ref.outputs[i], tol, what + " output " + std::to_string(i));
          for (size_t i = 0; i < ref.grads.size(); ++i)
            expect_close(got.grads[i], ref.grads[i], gtol, what + " grad " + std::to_string(i));
        }
      }
    }
  }
}

}  // namespace
}  // namespace sessa::test
