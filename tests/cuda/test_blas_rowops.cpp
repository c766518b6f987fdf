// GPU checks of cuBLAS matmul, the cuBLASLt linear layer and the fused row ops that the op
// table (tests/op_table.cpp, driven by test_ops.cpp: forward, backward, every dtype and
// layout) cannot say: an empty inner dimension, which shapes get the fused cuBLASLt kernel,
// the refused LayerNorm dtype mix, and cross-entropy's count, all-ignored rows and target
// checks.
#include <cmath>
#include <optional>

#include "tensor/cuda/linear.h"
#include "tests/cuda/parity.h"

namespace sessa::test {

TEST_CASE("cuda matmul: empty inner dimension gives zeros") {
  Tensor a = Tensor::empty({4, 0}).to(gpu()), b = Tensor::empty({0, 3}).to(gpu());
  Tensor c = host(ops::matmul(a, b));
  CHECK(c.shape() == Shape{4, 3});
  for (double v : c.to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE("cuda linear: the fused cuBLASLt kernel runs for aligned shapes with a bias") {
  Generator gen(501);
  struct Case {
    Shape x;
    int64_t N;
    DType dtype;
    bool tf32;
  };
  // Aligned and large enough: cuBLASLt has a fused bias epilogue. Without a bias: a plain GEMM.
  for (const Case& c : {Case{{128, 256}, 64, DType::F32, false}, Case{{128, 256}, 64, DType::BF16, true},
                        Case{{4, 64, 768}, 2304, DType::BF16, true}, Case{{4, 64, 768}, 2304, DType::F32, true}}) {
    CAPTURE(dtype_name(c.dtype));
    CAPTURE(c.tf32);
    std::optional<NoTf32> exact;
    if (!c.tf32) exact.emplace();
    const Tensor x = cpu_randn(c.x, gen).to(c.dtype).to(gpu());
    const Tensor w = cpu_randn({c.N, c.x.back()}, gen, 0.05).to(c.dtype).to(gpu());
    const Tensor b = cpu_randn({c.N}, gen).to(c.dtype).to(gpu());
    CHECK(cuda::linear(x, w, b).has_value());
    CHECK_FALSE(cuda::linear(x, w, Tensor{}).has_value());
  }
}

TEST_CASE("cuda layer_norm: mixed weight dtypes other than bfloat16 x with float32 weights are refused") {
  Tensor x = Tensor::empty({2, 4}, {DType::F32, gpu()}), w = Tensor::empty({4}, {DType::BF16, gpu()});
  check_error([&] { ops::layer_norm(x, w, w, 1e-5); }, {"layer_norm", "dtype"});
}

TEST_CASE("cuda cross_entropy: count, all rows ignored, invalid device target") {
  Generator gen(303);
  Tensor x = cpu_randn({6, 11}, gen).to(gpu());
  // The non-ignored count: -1 (counted on the GPU) for device targets, exact for host targets.
  Tensor some = from_vector<int32_t>({0, -100, 10, -100, 3, 4}, {6}, {DType::I32});
  CHECK(ops::cross_entropy(x, some.to(gpu()), -100).count == -1);
  CHECK(ops::cross_entropy(x, some, -100).count == 4);
  Tensor all_ignored = full({6}, -100, {DType::I32}).to(gpu());
  auto res = ops::cross_entropy(x, all_ignored, -100);
  CHECK(host(res.loss).item() == 0.0);
  Tensor dx = ops::cross_entropy_backward(scalar(1.0).to(gpu()), x, all_ignored, res.lse, -100, res.count);
  for (double v : host(dx).to_vector<double>()) CHECK(v == 0.0);
  // Targets on the GPU are not range-checked on the host: an invalid one makes the loss NaN.
  Tensor bad = from_vector<int32_t>({0, 1, 11, 2, 3, 4}, {6}, {DType::I32});
  CHECK(std::isnan(host(ops::cross_entropy(x, bad.to(gpu()), -1).loss).item()));
  // Host targets are checked as on the CPU.
  check_error([&] { ops::cross_entropy(x, bad, -1); }, {"cross_entropy", "target 11", "row 2"});
}

TEST_CASE("cuda cross_entropy: the sum reduction and inverse_target_count, counted on the GPU") {
  Generator gen(304);
  Tensor x = cpu_randn({6, 11}, gen);
  Tensor some = from_vector<int32_t>({0, -100, 10, -100, 3, 4}, {6}, {DType::I32});
  const double sum = ops::cross_entropy(x, some, -100, ops::LossReduction::Sum).loss.item();
  CHECK(sum == doctest::Approx(4 * ops::cross_entropy(x, some, -100).loss.item()).epsilon(1e-6));
  CHECK(host(ops::cross_entropy(x.to(gpu()), some.to(gpu()), -100, ops::LossReduction::Sum).loss).item() ==
        doctest::Approx(sum).epsilon(1e-5));
  for (DType dtype : {DType::F32, DType::F64}) {
    Tensor inv = ops::inverse_target_count(some.to(gpu()), -100, dtype);
    CHECK(inv.is_cuda());
    CHECK(inv.dtype() == dtype);
    CHECK(host(inv).item() == 0.25);
    CHECK(host(ops::inverse_target_count(full({3000}, -100, {DType::I32}).to(gpu()), -100, dtype)).item() == 0.0);
    CHECK(host(ops::inverse_target_count(zeros({3000}, {DType::I32}).to(gpu()), -100, dtype)).item() ==
          doctest::Approx(1.0 / 3000));
  }
}

}  // namespace sessa::test
