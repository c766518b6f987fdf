// GPU checks of cuBLAS matmul, the cuBLASLt linear layer and the fused row ops that the op
// table (tests/op_table.cpp, driven by test_ops.cpp: forward, backward, every dtype and
// layout) cannot say: an empty inner dimension, which shapes get the fused cuBLASLt kernels,
// the refused LayerNorm dtype mix, LayerNorm's gradients added into given sums, and
// cross-entropy's count, all-ignored rows and target checks.
#include <cmath>
#include <optional>

#include "autograd/ops.h"
#include "nn/layers.h"
#include "tensor/cuda/linear.h"
#include "tests/cuda/parity.h"

namespace sessa::test {

TEST_CASE("cuda matmul: empty inner dimension gives zeros") {
  Tensor a = Tensor::empty({4, 0}).to(gpu()), b = Tensor::empty({0, 3}).to(gpu());
  Tensor c = host(ops::matmul(a, b));
  CHECK(c.shape() == Shape{4, 3});
  for (double v : c.to_vector<double>()) CHECK(v == 0.0);
}

// matmul_add_ (what linear's backward runs into the autograd engine's running gradient sum):
// the GEMM's beta = 1 must add to what is there, in every dtype, for transposed operands and for
// a batch against one shared weight (the tall-GEMM path).
TEST_CASE("cuda matmul_add_: c += a b matches the CPU") {
  Generator gen(503);
  for (DType dtype : {DType::F32, DType::BF16, DType::F64}) {
    CAPTURE(dtype_name(dtype));
    const NoTf32 exact;
    const Tensor a = cpu_randn({96, 40}, gen).to(dtype), b = cpu_randn({96, 72}, gen).to(dtype);
    const Tensor c = cpu_randn({40, 72}, gen).to(dtype);
    Tensor c_gpu = c.to(gpu());
    ops::matmul_add_(c_gpu, a.to(gpu()), b.to(gpu()), true, false);  // (40, 72) += a^T b
    const Tensor a64 = a.to(DType::F64), b64 = b.to(DType::F64);
    check_close(c_gpu, ops::add(c.to(DType::F64), ops::matmul(a64, b64, true, false)), dtype, "c + a^T b");

    const Tensor x = cpu_randn({2, 3, 16, 40}, gen).to(dtype), w = cpu_randn({72, 40}, gen).to(dtype);
    const Tensor s = cpu_randn({2, 3, 16, 72}, gen).to(dtype);
    Tensor s_gpu = s.to(gpu());
    ops::matmul_add_(s_gpu, x.to(gpu()), w.to(gpu()), false, true);  // (2, 3, 16, 72) += x w^T
    check_close(s_gpu, ops::add(s.to(DType::F64), ops::matmul(x.to(DType::F64), w.to(DType::F64), false, true)), dtype,
                "s + x w^T");
  }
  // A float32 sum of bfloat16 products (the head loss sums its dW over row chunks so): the
  // products of bfloat16 values are exact in float32, so the float32 tolerance applies.
  const NoTf32 exact;
  const Tensor a = cpu_randn({96, 40}, gen).to(DType::BF16), b = cpu_randn({96, 72}, gen).to(DType::BF16);
  const Tensor c = cpu_randn({40, 72}, gen);
  Tensor c_gpu = c.to(gpu());
  ops::matmul_add_(c_gpu, a.to(gpu()), b.to(gpu()), true, false);
  CHECK(c_gpu.dtype() == DType::F32);
  check_close(c_gpu, ops::add(c.to(DType::F64), ops::matmul(a.to(DType::F64), b.to(DType::F64), true, false)),
              DType::F32, "float32 c + bfloat16 a^T b");
}

// Under autocast (float32 parameters, bfloat16 compute) a layer's dW and db are summed into the
// parameters' float32 .grad by its own GEMM (beta = 1) and row sum, through autocast's cast and
// forward_parts' slices (autograd/node.h, sum_view): the buffers stay the same tensors and
// hold the earlier sum plus the gradient of the float64 CPU reference.
TEST_CASE("cuda linear under autocast: dW and db summed into the float32 .grad in place, through slices") {
  Generator gen(77);
  nn::Linear layer(24, 40, gen, nn::LinearOptions{.bias = true, .init_std = 0.2}, {DType::F32});
  const Tensor x = cpu_randn({3, 16, 24}, gen), c0 = cpu_randn({3, 16, 16}, gen), c1 = cpu_randn({3, 16, 24}, gen);
  const auto loss = [&](const nn::Linear& l, const Tensor& c0d, const Tensor& c1d, const Tensor& xd) {
    const std::vector<Tensor> parts = l.forward_parts(xd, {16, 24});
    return sum_all(parts[0] * c0d) + sum_all(parts[1] * c1d);
  };
  nn::Linear ref(layer.weight.to(DType::F64), layer.bias.to(DType::F64));
  ref.weight.set_requires_grad(), ref.bias.set_requires_grad();
  autograd::backward(loss(ref, c0.to(DType::F64), c1.to(DType::F64), x.to(DType::F64)));

  layer.to(gpu());
  const Tensor gw = full({40, 24}, 0.5, {DType::F32, gpu()}), gb = full({40}, 0.5, {DType::F32, gpu()});
  layer.weight.set_requires_grad(), layer.bias.set_requires_grad();
  layer.weight.set_grad(gw), layer.bias.set_grad(gb);  // as nn::ParameterBuffer keeps them
  {
    nn::AutocastScope autocast(DType::BF16, true);
    autograd::backward(
        loss(layer, c0.to(gpu()).to(DType::BF16), c1.to(gpu()).to(DType::BF16), x.to(gpu()).to(DType::BF16)));
  }
  CHECK((layer.weight.grad().same(gw) && layer.bias.grad().same(gb)));
  check_close(gw, ops::add(ref.weight.grad(), full({40, 24}, 0.5, {DType::F64})), DType::BF16, "dW + 0.5");
  check_close(gb, ops::add(ref.bias.grad(), full({40}, 0.5, {DType::F64})), DType::BF16, "db + 0.5");
}

TEST_CASE("cuda matmul_add_: bfloat16 products summed into float32, long inner dims (split-K added in place)") {
  // A weight gradient's shape: few output tiles, a long inner dim, so cuBLASLt splits it; the
  // splits are added into C itself (tensor/cuda/linear.h). Both transposes, odd sizes.
  Generator gen(78);
  struct Case {
    int64_t M, N, K;
    bool trans_a, trans_b;
  };
  for (const Case& c : {Case{96, 80, 8192, true, false}, Case{64, 128, 16384, true, false},
                        Case{40, 24, 4099, false, true}, Case{33, 65, 6000, false, false}}) {
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(c.K);
    const Tensor a = cpu_randn(c.trans_a ? Shape{c.K, c.M} : Shape{c.M, c.K}, gen).to(DType::BF16);
    const Tensor b = cpu_randn(c.trans_b ? Shape{c.N, c.K} : Shape{c.K, c.N}, gen).to(DType::BF16);
    const Tensor c0 = cpu_randn({c.M, c.N}, gen);
    const Tensor got = c0.to(gpu());
    ops::matmul_add_(got, a.to(gpu()), b.to(gpu()), c.trans_a, c.trans_b);
    const Tensor ref =
        ops::add(c0.to(DType::F64), ops::matmul(a.to(DType::F64), b.to(DType::F64), c.trans_a, c.trans_b));
    expect_close(got, ref, 1e-5, "C + op(A) op(B)");
  }
}

TEST_CASE("cuda matmul: inner dim 1 (rank-1 products, outer.cu), written and added into bf16, float32 or float64") {
  // A one-output layer's input gradient: dy (M, 1) w (1, N), written or summed into a running
  // gradient; both transposes, packed and odd widths, bfloat16 into float32.
  Generator gen(81);
  struct Case {
    int64_t M, N;
    bool trans_a, trans_b;
    DType in, out;
  };
  for (const Case& c :
       {Case{4099, 768, false, false, DType::BF16, DType::BF16}, Case{300, 77, true, false, DType::BF16, DType::BF16},
        Case{64, 40, false, true, DType::BF16, DType::F32}, Case{37, 24, true, true, DType::F32, DType::F32},
        Case{33, 13, false, false, DType::F64, DType::F64}}) {
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(dtype_name(c.in));
    CAPTURE(dtype_name(c.out));
    const Tensor a = cpu_randn(c.trans_a ? Shape{1, c.M} : Shape{c.M, 1}, gen).to(c.in);
    const Tensor b = cpu_randn(c.trans_b ? Shape{c.N, 1} : Shape{1, c.N}, gen).to(c.in);
    const Tensor ref = ops::matmul(a.to(DType::F64), b.to(DType::F64), c.trans_a, c.trans_b);
    const double tol = c.out == DType::BF16 ? 1e-2 : c.out == DType::F32 ? 1e-6 : 1e-12;
    if (c.out == c.in) {
      const Tensor got = ops::matmul(a.to(gpu()), b.to(gpu()), c.trans_a, c.trans_b);
      expect_close(got, ref, tol, "op(A) op(B)");
    }
    const Tensor c0 = cpu_randn({c.M, c.N}, gen).to(c.out);
    const Tensor sum = c0.to(gpu());
    ops::matmul_add_(sum, a.to(gpu()), b.to(gpu()), c.trans_a, c.trans_b);
    expect_close(sum, ops::add(c0.to(DType::F64), ref), tol, "C + op(A) op(B)");
  }
}

TEST_CASE("cuda sum_add_: column and row sums added into float32 or the input's dtype, in one launch") {
  // A bias gradient's shape first: bfloat16 columns summed into a prefilled float32 vector
  // (packs, chunks, the last block adding); then odd widths, a row sum, float32 and float64.
  Generator gen(79);
  struct Case {
    Shape x;
    std::vector<int64_t> dims;
    DType dtype, out;
  };
  for (const Case& c :
       {Case{{16384, 768}, {0}, DType::BF16, DType::F32}, Case{{4099, 264}, {0}, DType::BF16, DType::F32},
        Case{{3, 2500, 16}, {1}, DType::BF16, DType::F32}, Case{{4099, 77}, {0}, DType::BF16, DType::F32},
        Case{{37, 900}, {1}, DType::BF16, DType::F32}, Case{{4099, 264}, {0}, DType::F32, DType::F32},
        Case{{5, 3001}, {1}, DType::F64, DType::F64}, Case{{2001, 33}, {0}, DType::BF16, DType::BF16}}) {
    CAPTURE(c.x);
    CAPTURE(dtype_name(c.dtype));
    CAPTURE(dtype_name(c.out));
    const Tensor x = cpu_randn(c.x, gen).to(c.dtype);
    const Tensor ref_sum = ops::sum(x.to(DType::F64), c.dims);
    const Tensor out0 = cpu_randn(ref_sum.shape(), gen).to(c.out);
    const Tensor got = out0.to(gpu());
    const Tensor xg = x.to(gpu());
    ops::sum_add_(got, xg, c.dims);
    expect_close(got, ops::add(out0.to(DType::F64), ref_sum), c.out == DType::BF16 ? 1e-2 : 1e-5, "out + sum");
    // The chunks' partials are added in a fixed order, whichever block finishes last.
    const Tensor again = out0.to(gpu());
    ops::sum_add_(again, xg, c.dims);
    CHECK(bitwise_equal(again, got));
  }
}

TEST_CASE("cuda layer_norm: weight and bias gradients added into the float32 .grad in place (bf16 input)") {
  Generator gen(80);
  const Tensor x = cpu_randn({5, 37, 200}, gen), c = cpu_randn({5, 37, 200}, gen);
  const Tensor w0 = cpu_randn({200}, gen), b0 = cpu_randn({200}, gen);
  Tensor wr = w0.to(DType::F64), br = b0.to(DType::F64);
  wr.set_requires_grad(), br.set_requires_grad();
  autograd::backward(sum_all(nn::layer_norm(x.to(DType::F64), wr, br, 1e-5) * c.to(DType::F64)));

  Tensor w = w0.to(gpu()), b = b0.to(gpu());
  w.set_requires_grad(), b.set_requires_grad();
  const Tensor gw = full({200}, 0.5, {DType::F32, gpu()}), gb = full({200}, 0.5, {DType::F32, gpu()});
  w.set_grad(gw), b.set_grad(gb);  // as nn::ParameterBuffer keeps them
  autograd::backward(sum_all(nn::layer_norm(x.to(gpu()).to(DType::BF16), w, b, 1e-5) * c.to(gpu()).to(DType::BF16)));
  CHECK((w.grad().same(gw) && b.grad().same(gb)));
  check_close(gw, ops::add(wr.grad(), full({200}, 0.5, {DType::F64})), DType::BF16, "dweight + 0.5");
  check_close(gb, ops::add(br.grad(), full({200}, 0.5, {DType::F64})), DType::BF16, "dbias + 0.5");
}

// A pre-norm block's LayerNorm adds its input gradient into the residual's running gradient
// (sums.dx, the kernel's kAddDx): the sum handed in comes back holding old + dx, for rows in
// packs (D 200) and element by element (D 203).
TEST_CASE("cuda layer_norm_backward: dx added into a given sum (bf16 and float32; packed and not)") {
  Generator gen(81);
  for (DType dtype : {DType::BF16, DType::F32})
    for (int64_t D : {200, 203}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(D);
      const Tensor x = cpu_randn({3, 29, D}, gen).to(dtype), dy = cpu_randn({3, 29, D}, gen).to(dtype);
      const Tensor w = cpu_randn({D}, gen), b = cpu_randn({D}, gen), old = cpu_randn({3, 29, D}, gen).to(dtype);
      const Tensor x64 = x.to(DType::F64), w64 = w.to(DType::F64);
      const auto fwd64 = ops::layer_norm(x64, w64, b.to(DType::F64), 1e-5);
      const Tensor ref = ops::add(old.to(DType::F64),
                                  ops::layer_norm_backward(dy.to(DType::F64), x64, w64, fwd64.mean, fwd64.rstd).dx);
      const Tensor wg = w.to(gpu()), xg = x.to(gpu());
      const auto fwd = ops::layer_norm(xg, wg, b.to(gpu()), 1e-5);
      const Tensor sum = old.to(gpu());
      const auto got = ops::layer_norm_backward(dy.to(gpu()), xg, wg, fwd.mean, fwd.rstd, {sum, {}, {}});
      CHECK(got.dx.same(sum));
      check_close(sum, ref, dtype, "old + dx");
    }
  const Tensor x = cpu_randn({2, 8}, gen).to(gpu()), w = ones({8}, {DType::F32, gpu()});
  const auto fwd = ops::layer_norm(x, w, w, 1e-5);
  check_error(
      [&] {
        ops::layer_norm_backward(x, x, w, fwd.mean, fwd.rstd, {zeros({2, 7}, x.options()), {}, {}});
      },
      {"layer_norm_backward", "input gradient sum", "[2, 7]"});
}

TEST_CASE("cuda linear: the fused cuBLASLt kernel runs for aligned shapes with a bias or a residual") {
  Generator gen(501);
  struct Case {
    Shape x;
    int64_t N;
    DType dtype;
    bool tf32;
  };
  // Aligned and large enough: cuBLASLt has a fused bias epilogue, and takes a residual as C
  // (beta = 1) with or without it. With neither: a plain GEMM (ops::matmul).
  for (const Case& c : {Case{{128, 256}, 64, DType::F32, false}, Case{{128, 256}, 64, DType::BF16, true},
                        Case{{4, 64, 768}, 2304, DType::BF16, true}, Case{{4, 64, 768}, 2304, DType::F32, true}}) {
    CAPTURE(dtype_name(c.dtype));
    CAPTURE(c.tf32);
    std::optional<NoTf32> exact;
    if (!c.tf32) exact.emplace();
    const Tensor x = cpu_randn(c.x, gen).to(c.dtype).to(gpu());
    const Tensor w = cpu_randn({c.N, c.x.back()}, gen, 0.05).to(c.dtype).to(gpu());
    const Tensor b = cpu_randn({c.N}, gen).to(c.dtype).to(gpu());
    Shape y_shape = c.x;
    y_shape.back() = c.N;
    const Tensor r = cpu_randn(y_shape, gen).to(c.dtype).to(gpu());
    CHECK(cuda::linear(x, w, b).has_value());
    CHECK(cuda::linear(x, w, b, r).has_value());
    CHECK(cuda::linear(x, w, Tensor{}, r).has_value());
    CHECK_FALSE(cuda::linear(x, w, Tensor{}).has_value());
  }
}

// The weight and bias gradients from one GEMM with the BGRADB epilogue (what linear's backward
// runs with a bias): bfloat16 must get the fused kernel (a silent fallback would pass the op
// table unnoticed), and every dtype that gets it must match dy^T x and the column sums of dy on
// the CPU. Fresh device memory is poisoned (tests/cuda/main.cpp), so a bias gradient the
// epilogue did not write shows up as a mismatch.
TEST_CASE("cuda linear: dW and db from one cuBLASLt GEMM (BGRADB) match matmul and sum") {
  Generator gen(502);
  struct Case {
    int64_t M, K, N;
    DType dtype;
  };
  for (const Case& c :
       {Case{128, 256, 64, DType::BF16}, Case{4 * 1024, 768, 2304, DType::BF16}, Case{4 * 1024, 3072, 768, DType::BF16},
        Case{256, 64, 128, DType::F32}, Case{64, 32, 48, DType::F64}, Case{37, 53, 29, DType::BF16}}) {
    CAPTURE(dtype_name(c.dtype));
    CAPTURE(c.M);
    CAPTURE(c.N);
    const NoTf32 exact;
    const Tensor dy = cpu_randn({c.M, c.N}, gen).to(c.dtype), x = cpu_randn({c.M, c.K}, gen).to(c.dtype);
    const auto g = cuda::linear_weight_bias_grad(dy.to(gpu()), x.to(gpu()));
    if (c.dtype == DType::BF16 && c.K % 8 == 0 && c.N % 8 == 0) REQUIRE(g.has_value());  // 16-byte rows
    if (!g) {
      MESSAGE("no fused BGRADB kernel for this case: linear_backward runs matmul + sum");
      continue;
    }
    const Tensor dy64 = dy.to(DType::F64), x64 = x.to(DType::F64);
    check_close(g->dweight, ops::matmul(dy64, x64, true, false), c.dtype, "dweight");
    check_close(g->dbias, ops::sum(dy64, {0}), c.dtype, "dbias");
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

// The fused loss-and-gradient pass (what the chunked head runs): rows whose packs all stay in
// registers (bf16, V 50304), rows longer than the cache (bf16 V 70000, float32 V 50304: the rest
// read again from memory), rows without packs (V 50305 and 7: one element at a time), ignored
// rows, a loss_sum that already holds a value; against float64 on the CPU.
TEST_CASE("cuda cross_entropy_and_grad_: loss added and gradient written over the logits") {
  Generator gen(305);
  for (auto [dtype, V] : std::vector<std::pair<DType, int64_t>>{
           {DType::BF16, 50304}, {DType::BF16, 70000}, {DType::F32, 50304}, {DType::BF16, 50305}, {DType::F32, 7}}) {
    CAPTURE(dtype_name(dtype));
    CAPTURE(V);
    const int64_t N = 9;
    const Tensor x = cpu_randn({N, V}, gen, 3.0).to(dtype);
    std::vector<int32_t> ids(size_t(N), -100);
    for (int64_t r = 0; r < N; ++r)
      if (r % 4 != 1) ids[size_t(r)] = int32_t((r * 7919 + 13) % V);
    const Tensor targets = from_vector<int32_t>(ids, {N}, {DType::I32});
    const DType stat = dtype == DType::BF16 ? DType::F32 : dtype;

    Tensor logits = x.to(gpu()), loss_sum = scalar(1.5, {stat, gpu()});
    ops::cross_entropy_and_grad_(logits, targets.to(gpu()), -100, scalar(0.25, {stat, gpu()}), loss_sum);

    const Tensor x64 = x.to(DType::F64);
    const auto ce = ops::cross_entropy(x64, targets, -100, ops::LossReduction::Sum);
    const Tensor dx = ops::cross_entropy_backward(scalar(0.25, {DType::F64}), x64, targets, ce.lse, -100, 1);
    CHECK(host(loss_sum).item() == doctest::Approx(1.5 + ce.loss.item()).epsilon(1e-5));
    check_close(logits, dx, dtype, "gradient written over the logits");
  }
  // A device target outside [0, V) makes the loss NaN (no host check), as cross_entropy does.
  Tensor logits = cpu_randn({2, 11}, gen).to(gpu()), loss_sum = scalar(0.0, {DType::F32, gpu()});
  ops::cross_entropy_and_grad_(logits, from_vector<int32_t>({3, 11}, {2}, {DType::I32}).to(gpu()), -100,
                               scalar(1.0, {DType::F32, gpu()}), loss_sum);
  CHECK(std::isnan(host(loss_sum).item()));
  // Arguments of the wrong kind are refused by name.
  check_error([&] { ops::cross_entropy_and_grad_(logits, zeros({2}, {DType::I32}), -100, scalar(1.0), loss_sum); },
              {"cross_entropy_and_grad_", "0-d float32"});
  check_error(
      [&] {
        ops::cross_entropy_and_grad_(ops::transpose(cpu_randn({11, 2}, gen).to(gpu()), 0, 1), zeros({2}, {DType::I32}),
                                     -100, scalar(1.0, {DType::F32, gpu()}), loss_sum);
      },
      {"cross_entropy_and_grad_", "contiguous"});
}

TEST_CASE("cuda rope: the kept cos / sin tables follow the positions, head dim, base and dtype asked for") {
  // The GPU keeps the last tables made (tensor/cuda/rope.cu); each call here changes one part of
  // their key from the call before, so a table kept too long gives the wrong rotation.
  Generator gen(21);
  const Tensor x16 = normal({2, 3, 9, 16}, 0.0, 1.0, gen), x8 = normal({2, 3, 9, 8}, 0.0, 1.0, gen);
  struct Call {
    const Tensor* x;
    int64_t pos;
    double base;
    bool inverse;
    DType dtype;
  };
  for (const Call& c : {Call{&x16, 0, 1e4, false, DType::F32}, Call{&x16, 0, 1e4, true, DType::F32},
                        Call{&x16, 5, 1e4, false, DType::F32}, Call{&x16, 5, 50.0, false, DType::F32},
                        Call{&x8, 5, 50.0, false, DType::F32}, Call{&x8, 5, 50.0, false, DType::F64},
                        Call{&x16, 0, 1e4, true, DType::F32}}) {
    CAPTURE(c.pos);
    CAPTURE(c.base);
    CAPTURE(c.inverse);
    CAPTURE(dtype_name(c.dtype));
    const Tensor xc = c.x->to(c.dtype);
    expect_close(ops::rope(xc.to(gpu()), c.pos, c.base, c.inverse), ops::rope(xc, c.pos, c.base, c.inverse), 1e-5,
                 "rope");
  }
}

}  // namespace sessa::test
