// Autograd: float64 gradchecks of every differentiable op, graph semantics
// (accumulation, no-grad, freeing), and an MLP whose loss must fall > 100x.
#include <doctest/doctest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "tests/helpers.h"

using namespace sessa;
using autograd::gradcheck;
using sessa::test::expect_gradcheck;
using sessa::test::leaf;

TEST_CASE("gradcheck: broadcasting arithmetic") {
  Generator g(1);
  Tensor a = leaf({3, 4}, g), b = leaf({4}, g), c = leaf({3, 1}, g);
  expect_gradcheck([](auto& x) { return add(x[0], x[1]); }, {a, b});
  expect_gradcheck([](auto& x) { return sub(x[0], x[1]); }, {a, c});
  expect_gradcheck([](auto& x) { return mul(x[0], x[1]); }, {a, b});
  expect_gradcheck([](auto& x) { return div(x[0], affine(square(x[1]), 1, 1)); }, {a, c});
  expect_gradcheck([](auto& x) { return x[0] * 3.0 + 1.0; }, {a});
}

TEST_CASE("gradcheck: unary functions") {
  Generator g(2);
  Tensor x = leaf({5, 3}, g);
  for (auto op : {ops::Unary::Neg, ops::Unary::Exp, ops::Unary::Square, ops::Unary::Tanh, ops::Unary::Sigmoid,
                  ops::Unary::Gelu, ops::Unary::Silu, ops::Unary::Softplus}) {
    CAPTURE(ops::unary_name(op));
    expect_gradcheck([op](auto& in) { return sessa::unary(op, in[0]); }, {x});
  }
  Tensor pos = leaf({4}, g);
  expect_gradcheck([](auto& in) { return log(affine(square(in[0]), 1, 0.5)); }, {pos});
  expect_gradcheck([](auto& in) { return sqrt(affine(square(in[0]), 1, 0.5)); }, {pos});
}

TEST_CASE("gradcheck: reductions, matmul and softmax") {
  Generator g(3);
  Tensor x = leaf({2, 3, 4}, g);
  expect_gradcheck([](auto& in) { return sum(in[0], {1}); }, {x});
  expect_gradcheck([](auto& in) { return mean(in[0], {0, 2}, true); }, {x});
  expect_gradcheck([](auto& in) { return sum_all(in[0]); }, {x});
  expect_gradcheck([](auto& in) { return softmax(in[0]); }, {x});
  expect_gradcheck([](auto& in) { return log_softmax(in[0]); }, {x});
  Tensor a = leaf({5, 3}, g), b = leaf({3, 4}, g), bt = leaf({4, 3}, g), at = leaf({3, 5}, g);
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1]); }, {a, b});
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1], false, true); }, {a, bt});
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1], true, false); }, {at, b});
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1], true, true); }, {at, bt});
  Tensor xa = leaf({2, 5, 3}, g), xb = leaf({2, 3, 4}, g);
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1]); }, {xa, xb});  // batched
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1]); }, {xa, b});   // shared weight
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1], false, true); }, {xa, bt});
  Tensor xat = leaf({2, 3, 5}, g);
  expect_gradcheck([](auto& in) { return matmul(in[0], in[1], true, false); }, {xat, b});
}

TEST_CASE("gradcheck: views, joins, indexing, layer norm") {
  Generator g(4);
  Tensor x = leaf({2, 3, 4}, g), y = leaf({2, 2, 4}, g);
  expect_gradcheck([](auto& in) { return reshape(in[0], {6, 4}); }, {x});
  expect_gradcheck([](auto& in) { return permute(in[0], {2, 0, 1}); }, {x});
  expect_gradcheck([](auto& in) { return narrow(in[0], 1, 1, 2); }, {x});
  expect_gradcheck([](auto& in) { return expand(narrow(in[0], 1, 0, 1), {2, 5, 4}); }, {x});
  expect_gradcheck([](auto& in) { return cat({in[0], in[1]}, 1); }, {x, y});
  expect_gradcheck(
      [](auto& in) {
        auto parts = split(in[0], 2, {1, 3});
        return mul(parts[0], parts[1]);
      },
      {x});
  Tensor ids = from_vector<int32_t>({2, 0, 2, 1}, {2, 2}, {DType::I32});
  Tensor table = leaf({3, 4}, g);
  expect_gradcheck([ids](auto& in) { return index_select(in[0], 0, ids); }, {table});
  Tensor w = leaf({4}, g), b = leaf({4}, g);
  expect_gradcheck([](auto& in) { return nn::layer_norm(in[0], in[1], in[2], 1e-5); }, {x, w, b});
}

TEST_CASE("gradcheck: fused linear, with and without bias, 2-D, 3-D and transposed input") {
  Generator g(7);
  Tensor w = leaf({5, 4}, g), b = leaf({5}, g);
  for (const Shape& shape : std::vector<Shape>{{3, 4}, {2, 3, 4}}) {
    Tensor x = leaf(shape, g);
    expect_gradcheck([](auto& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
    expect_gradcheck([](auto& in) { return linear(in[0], in[1], Tensor{}); }, {x, w});
    CHECK(test::max_rel_diff(linear(x, w, b), add(matmul(x, w, false, true), b)) < 1e-14);
  }
  Tensor xt = leaf({4, 3}, g);  // read through a transposed view (last-dim stride 3)
  expect_gradcheck([](auto& in) { return linear(transpose(in[0], 0, 1), in[1], in[2]); }, {xt, w, b});
}

TEST_CASE("linear: wrong shapes give an error naming them") {
  Tensor x = zeros({2, 3}), w = zeros({4, 3}), b = zeros({4});
  CHECK_THROWS_AS(linear(x, zeros({4, 5}), b), Error);
  test::check_error([&] { linear(x, zeros({4, 5}), b); }, {"linear", "[2, 3]", "[out, 3]", "[4, 5]"});
  test::check_error([&] { linear(x, w, zeros({3})); }, {"linear", "[4, 3]", "bias of shape [4]", "got [3]"});
  test::check_error([&] { linear(x, w, zeros({4}, {DType::F64})); }, {"linear", "dtype"});
  test::check_error([&] { ops::linear_backward(zeros({2, 5}), x, w, true); }, {"linear_backward", "[2, 5]", "[2, 4]"});
  Generator g(8);
  nn::Linear layer(3, 4, g);
  test::check_error([&] { layer.forward(zeros({2, 5})); }, {"Linear", "[2, 5]", "expects 3"});
}

TEST_CASE("gradcheck detects a wrong backward") {
  Generator g(5);
  Tensor x = leaf({3}, g);
  auto wrong = [](const std::vector<Tensor>& in) {  // claims d(2x)/dx = 1
    return autograd::record("wrong", ops::affine(in[0], 2, 0), {in[0]},
                            [](const Tensor& gr) { return std::vector<Tensor>{gr}; });
  };
  CHECK_FALSE(gradcheck(wrong, {x}).ok);
}

TEST_CASE("graph semantics: accumulation, no-grad, freeing") {
  Generator g(6);
  Tensor x = leaf({3}, g);
  Tensor y = sum_all(mul(x, x) + x);  // x used twice: gradients add up to 2x + 1
  autograd::backward(y);
  auto gx = x.grad().to_vector<double>(), vx = x.to_vector<double>();
  for (size_t i = 0; i < 3; ++i) CHECK(gx[i] == doctest::Approx(2 * vx[i] + 1));
  // A second backward through the same (freed) graph is an error, not garbage.
  CHECK_THROWS_WITH_AS(autograd::backward(y), doctest::Contains("already freed"), Error);
  // Gradients accumulate across backward calls until zeroed.
  autograd::backward(sum_all(x));
  CHECK(x.grad().to_vector<double>()[0] == doctest::Approx(2 * vx[0] + 2));
  {
    autograd::NoGradGuard no_grad;
    Tensor z = mul(x, x);
    CHECK_FALSE(z.requires_grad());
  }
  CHECK(mul(x, x).requires_grad());
  Tensor leaf_free = normal({2}, 0, 1, g, {DType::F64});
  CHECK_FALSE(add(leaf_free, leaf_free).requires_grad());
  CHECK_THROWS_WITH_AS(autograd::backward(sum_all(leaf_free)), doctest::Contains("does not require grad"), Error);
}

TEST_CASE("an MLP fits a smooth regression target: loss falls more than 100x") {
  Generator gen(7);
  const int64_t n = 256;
  Tensor x = uniform({n, 4}, -1, 1, gen, {DType::F64});
  auto xv = x.to_vector<double>();
  std::vector<double> yv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double* r = &xv[size_t(i * 4)];
    yv[size_t(i)] = std::sin(2 * r[0]) + r[1] * r[2] - 0.5 * r[3] * r[3];
  }
  Tensor y = from_vector(yv, {n, 1}, {DType::F64});

  struct Mlp : nn::Module {
    std::shared_ptr<nn::Linear> l1, l2, l3;
    explicit Mlp(Generator& g) {
      l1 = register_module(
          "l1", std::make_shared<nn::Linear>(4, 64, g, nn::LinearOptions{true, 0.5}, TensorOptions{DType::F64}));
      l2 = register_module(
          "l2", std::make_shared<nn::Linear>(64, 64, g, nn::LinearOptions{true, 0.125}, TensorOptions{DType::F64}));
      l3 = register_module(
          "l3", std::make_shared<nn::Linear>(64, 1, g, nn::LinearOptions{true, 0.125}, TensorOptions{DType::F64}));
    }
    Tensor forward(const Tensor& in) { return l3->forward(tanh(l2->forward(tanh(l1->forward(in))))); }
  } mlp(gen);
  CHECK(mlp.named_parameters()[2].name == "l2.weight");

  nn::ParameterBuffer params(mlp.named_parameters());
  nn::AdamW opt(params, {.lr = 1e-2, .weight_decay = 0.0});
  auto loss_of = [&] { return mean_all(square(mlp.forward(x) - y)); };
  double first = loss_of().item(), last = first;
  const int64_t steps = 1500;
  for (int64_t s = 0; s < steps; ++s) {
    params.zero_grad();
    Tensor loss = loss_of();
    autograd::backward(loss);
    nn::clip_grad_norm({params.grad()}, 10.0);
    opt.step(nn::cosine_lr(s, 50, steps, 1e-2, 0.01));
    last = loss.item();
  }
  MESSAGE("MLP regression loss " << first << " -> " << last << " (" << first / last << "x)");
  CHECK(first / last > 100);
}

TEST_CASE("cosine schedule and gradient clipping") {
  CHECK(nn::cosine_lr(0, 10, 100, 1.0) == doctest::Approx(0.1));
  CHECK(nn::cosine_lr(9, 10, 100, 1.0) == doctest::Approx(1.0));
  CHECK(nn::cosine_lr(100, 10, 100, 1.0, 0.1) == doctest::Approx(0.1));
  CHECK(nn::cosine_lr(55, 10, 100, 1.0, 0.0) == doctest::Approx(0.5));
  // Two pieces of one gradient vector: norm sqrt(3^2 + 4^2 + 12^2) = 13.
  Tensor a = from_vector<double>({3, 4}, {2}, {DType::F64}), b = from_vector<double>({12}, {1}, {DType::F64});
  CHECK(nn::clip_grad_norm({a, b}, 1.0) == doctest::Approx(13.0));
  CHECK(a.to_vector<double>()[1] == doctest::Approx(4.0 / 13).epsilon(1e-5));
  CHECK(b.to_vector<double>()[0] == doctest::Approx(12.0 / 13).epsilon(1e-5));
  CHECK(nn::clip_grad_norm({a, b}, 2.0) == doctest::Approx(1.0));  // under the limit: unchanged
  CHECK(b.to_vector<double>()[0] == doctest::Approx(12.0 / 13).epsilon(1e-5));
}
