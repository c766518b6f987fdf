// Autograd: what the op table (tests/op_table.cpp, whose test_ops.cpp gradchecks every
// differentiable op) cannot say: linear equals matmul + bias (+ residual), linear's shape
// errors, the residual's gradient passed on as the output's, Linear::forward with a residual,
// gradcheck catching a wrong backward, graph semantics (accumulation, no-grad, freeing),
// linear layers summing dx into the engine's running sum, which pending gradients the engine
// offers for summing in place, slices adding into their input's sum, layer_norm's input
// gradient summed into a residual's, and an MLP whose loss must fall > 100x.
#include <doctest/doctest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "tests/helpers.h"

using namespace sessa;
using autograd::gradcheck;
using sessa::test::leaf;

TEST_CASE("linear equals matmul + bias (2-D and 3-D input)") {
  Generator g(7);
  Tensor w = leaf({5, 4}, g), b = leaf({5}, g);
  for (const Shape& shape : std::vector<Shape>{{3, 4}, {2, 3, 4}}) {
    Tensor x = leaf(shape, g);
    CHECK(test::max_rel_diff(linear(x, w, b), add(matmul(x, w, false, true), b)) < 1e-14);
  }
}

TEST_CASE("linear with a residual equals r + (matmul + bias) in values and gradients; dr is dy itself") {
  Generator g(17);
  Tensor w = leaf({5, 4}, g), b = leaf({5}, g);
  for (const Shape& shape : std::vector<Shape>{{3, 4}, {2, 3, 4}}) {
    CAPTURE(shape);
    for (bool bias : {true, false}) {
      CAPTURE(bias);
      Shape r_shape = shape;
      r_shape.back() = 5;
      Tensor x = leaf(shape, g), r = leaf(r_shape, g);
      Tensor dy = normal(r.shape(), 0, 1, g, {DType::F64});
      auto run = [&](bool fused) {
        for (const Tensor& t : {x, w, b, r}) t.set_grad(Tensor{});
        const Tensor bb = bias ? b : Tensor{};
        Tensor y = fused ? linear(x, w, bb, r) : add(r, linear(x, w, bb));
        autograd::backward(y, dy);
        std::vector<Tensor> out{y.detach(), x.grad(), w.grad(), r.grad()};
        if (bias) out.push_back(b.grad());
        return out;
      };
      const std::vector<Tensor> ref = run(false), got = run(true);
      for (size_t i = 0; i < ref.size(); ++i) CHECK(test::max_rel_diff(got[i], ref[i]) < 1e-14);
      CHECK(test::max_rel_diff(got[3], dy) == 0.0);  // dr = dy exactly
    }
  }
}

TEST_CASE("Linear::forward(x, residual) is residual + forward(x), also under autocast (the residual cast too)") {
  Generator g(18);
  nn::Linear layer(4, 6, g, nn::LinearOptions{true, 0.5});
  Tensor x = normal({2, 3, 4}, 0, 1, g), r = normal({2, 3, 6}, 0, 1, g);
  CHECK(test::max_rel_diff(layer.forward(x, r), add(r, layer.forward(x))) < 1e-6);
  nn::AutocastScope f64(DType::F64);  // (bfloat16 on the GPU; the CPU has no bfloat16 GEMM)
  Tensor y = layer.forward(x, r);     // x and r cast to the autocast dtype like the weights
  CHECK(y.dtype() == DType::F64);
  CHECK(test::max_rel_diff(y, add(cast(r, DType::F64), layer.forward(x))) < 1e-14);
}

TEST_CASE("linear: wrong shapes give an error naming them") {
  Tensor x = zeros({2, 3}), w = zeros({4, 3}), b = zeros({4});
  CHECK_THROWS_AS(linear(x, zeros({4, 5}), b), Error);
  test::check_error([&] { linear(x, zeros({4, 5}), b); }, {"linear", "[2, 3]", "[out, 3]", "[4, 5]"});
  test::check_error([&] { linear(x, w, zeros({3})); }, {"linear", "[4, 3]", "bias of shape [4]", "got [3]"});
  test::check_error([&] { linear(x, w, zeros({4}, {DType::F64})); }, {"linear", "dtype"});
  test::check_error([&] { linear(x, w, b, zeros({2, 3})); }, {"linear", "residual", "[2, 4]", "got [2, 3]"});
  test::check_error([&] { linear(x, w, b, zeros({4})); }, {"linear", "residual", "[2, 4]", "got [4]"});
  test::check_error([&] { linear(x, w, b, zeros({2, 4}, {DType::F64})); }, {"linear", "residual", "dtype"});
  test::check_error([&] { ops::linear_backward(zeros({2, 5}), x, w, true); }, {"linear_backward", "[2, 5]", "[2, 4]"});
  Generator g(8);
  nn::Linear layer(3, 4, g);
  test::check_error([&] { layer.forward(zeros({2, 5})); }, {"Linear", "[2, 5]", "expects 3"});
}

TEST_CASE("Linear::forward_parts equals split(forward) in values and gradients") {
  Generator g(9);
  for (bool bias : {true, false}) {
    CAPTURE(bias);
    nn::Linear layer(5, 7, g, nn::LinearOptions{bias, 0.5}, TensorOptions{DType::F64});
    Tensor x = leaf({2, 3, 5}, g), w = normal({2, 3, 7}, 0, 1, g, {DType::F64});
    auto loss_grads = [&](bool parts_path) {
      for (const Tensor& t : {x, layer.weight, layer.bias})
        if (t.defined()) t.set_grad(Tensor{});
      std::vector<Tensor> parts = parts_path ? layer.forward_parts(x, {3, 4}) : split(layer.forward(x), -1, {3, 4});
      CHECK(parts.size() == 2);
      if (parts_path) CHECK((parts[0].is_contiguous() && parts[1].is_contiguous()));
      Tensor y = cat({parts[0] * 2.0, parts[1]}, -1);  // the parts enter the loss differently
      autograd::backward(sum_all(y * w));
      std::vector<Tensor> out{y.detach(), x.grad(), layer.weight.grad()};
      if (bias) out.push_back(layer.bias.grad());
      return out;
    };
    const std::vector<Tensor> ref = loss_grads(false), got = loss_grads(true);
    for (size_t i = 0; i < ref.size(); ++i) CHECK(test::max_rel_diff(got[i], ref[i]) < 1e-12);
  }
  test::check_error([&] { nn::Linear(3, 4, g).forward_parts(zeros({2, 3}), {1, 2}); }, {"split", "add up to 3"});
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

// autograd::cast hands a leaf its gradient in the cast's dtype, and the engine accumulates it
// in the leaf's own dtype (the autocast path: float32 parameters, bfloat16 compute).
TEST_CASE("linear layers sharing an input sum dx into the engine's running sum: gradients equal the plain sum") {
  Generator g(8);
  Tensor x = leaf({2, 3, 5}, g), w1 = leaf({4, 5}, g), w2 = leaf({4, 5}, g), w3 = leaf({4, 5}, g), b = leaf({4}, g);
  Tensor c1 = normal({2, 3, 4}, 0, 1, g, {DType::F64}), c3 = normal({2, 3, 4}, 0, 1, g, {DType::F64});
  // h (not a leaf) feeds three layers; y1 is also y2's residual (its gradient passed on as is).
  // Backward reaches h from y3 (a new dx: the engine's sum), then y2 and y1 (added in place).
  auto loss = [&](const Tensor& xi, bool summing) {
    Tensor h = xi * 1.5;
    auto lin = [&](const Tensor& w, const Tensor& bias, const Tensor& r) {
      if (summing) return linear(h, w, bias, r);
      Tensor y = matmul(h, w, false, true);  // a plain node: its dx is added by the engine
      if (bias.defined()) y = y + bias;
      return r.defined() ? y + r : y;
    };
    Tensor y1 = lin(w1, b, {}), y2 = lin(w2, {}, y1), y3 = lin(w3, b, y2);
    return sum_all(y3 * c3) + sum_all(y1 * c1);
  };
  auto grads = [&](bool summing) {
    for (const Tensor& t : {x, w1, w2, w3, b}) t.set_grad(Tensor{});
    autograd::backward(loss(x, summing));
    return std::vector<Tensor>{x.grad(), w1.grad(), w2.grad(), w3.grad(), b.grad()};
  };
  const std::vector<Tensor> ref = grads(false), got = grads(true);
  for (size_t i = 0; i < ref.size(); ++i) CHECK(test::max_rel_diff(got[i], ref[i]) < 1e-12);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return loss(in[0], true); }, {x}).ok);
}

// A parameter with a .grad buffer (nn::ParameterBuffer keeps one per parameter) gets dW and db
// added into that buffer by the linear layer's own GEMM and sum, also through slices of it
// (nn::Linear::forward_parts); the buffer stays the same tensor, and the sums equal the plain
// engine's (a double count, or a dropped one, fails the comparison).
TEST_CASE("linear layers add dW and db into a parameter's .grad in place, also through slices") {
  Generator g(9);
  Tensor x = leaf({3, 4, 5}, g), w = leaf({6, 5}, g), b = leaf({6}, g);
  const Tensor c1 = normal({3, 4, 2}, 0, 1, g, {DType::F64}), c2 = normal({3, 4, 4}, 0, 1, g, {DType::F64});
  auto loss = [&](bool summing) {
    const std::vector<Tensor> ws = split(w, 0, {2, 4}), bs = split(b, 0, {2, 4});
    auto lin = [&](int i) {
      if (summing) return linear(x, ws[size_t(i)], bs[size_t(i)]);
      return matmul(x, ws[size_t(i)], false, true) + bs[size_t(i)];  // plain nodes: the engine adds
    };
    // w also feeds a plain op, whose gradient the engine adds to the same .grad.
    return sum_all(lin(0) * c1) + sum_all(lin(1) * c2) + sum_all(mul(w, w));
  };
  auto grads = [&](bool summing, bool buffers) {
    x.set_grad(Tensor{});
    w.set_grad(buffers ? full({6, 5}, 0.5, {DType::F64}) : Tensor{});  // a buffer holding an earlier sum
    b.set_grad(buffers ? full({6}, 0.5, {DType::F64}) : Tensor{});
    const Tensor gw = w.grad(), gb = b.grad();
    autograd::backward(loss(summing));
    if (buffers) CHECK((w.grad().same(gw) && b.grad().same(gb)));  // summed where they were
    return std::vector<Tensor>{x.grad(), w.grad(), b.grad()};
  };
  const std::vector<Tensor> ref = grads(false, false), got = grads(true, true);
  CHECK(test::max_rel_diff(got[0], ref[0]) < 1e-12);
  CHECK(test::max_rel_diff(got[1], ops::add(ref[1], full({6, 5}, 0.5, {DType::F64}))) < 1e-12);
  CHECK(test::max_rel_diff(got[2], ops::add(ref[2], full({6}, 0.5, {DType::F64}))) < 1e-12);
  const std::vector<Tensor> fresh = grads(true, false);  // no buffers: the engine's sums as before
  for (size_t i = 0; i < ref.size(); ++i) CHECK(test::max_rel_diff(fresh[i], ref[i]) < 1e-12);
}

// The parts of a split activation (Mamba's x_proj output) consumed by plain ops: the first
// part's gradient becomes the input's running sum, the others are added into their slices of
// it in place; a part used twice and a slice of a leaf with a .grad buffer too. A double or a
// dropped add fails the gradcheck or the buffer sum.
TEST_CASE("a slice adds its gradient into its input's running sum or .grad in place") {
  Generator g(13);
  Tensor x = leaf({2, 3, 9}, g);
  const Tensor c0 = normal({2, 3, 2}, 0, 1, g, {DType::F64}), c1 = normal({2, 3, 3}, 0, 1, g, {DType::F64}),
               c2 = normal({2, 3, 4}, 0, 1, g, {DType::F64});
  auto loss = [&](const Tensor& xi) {
    const std::vector<Tensor> parts = split(xi * 1.5, 2, {2, 3, 4});
    return sum_all(parts[0] * c0) + sum_all(mul(parts[1], parts[1]) * c1) + sum_all(exp(parts[2]) * c2) +
           sum_all(parts[0] * parts[0]);
  };
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return loss(in[0]); }, {x}).ok);

  auto leaf_loss = [&]() {
    const std::vector<Tensor> parts = split(x, 2, {2, 3, 4});
    return sum_all(parts[0] * c0) + sum_all(exp(parts[2]) * c2) + sum_all(mul(parts[1], parts[1]) * c1);
  };
  x.set_grad(Tensor{});
  autograd::backward(leaf_loss());
  const Tensor ref = ops::clone(x.grad());
  const Tensor buffer = full({2, 3, 9}, 0.25, {DType::F64});
  x.set_grad(buffer);
  autograd::backward(leaf_loss());
  CHECK(x.grad().same(buffer));  // summed where it was
  CHECK(test::max_rel_diff(x.grad(), ops::add(ref, full({2, 3, 9}, 0.25, {DType::F64}))) < 1e-12);
}

// An embedding lookup scatter-adds its gradient rows (repeated ids included) straight into the
// table's .grad: a buffer the trainer keeps, or one the engine made for a plain op's gradient
// that arrived first; with neither it returns a new tensor.
TEST_CASE("index_select adds its gradient into a parameter's .grad in place") {
  Generator g(11);
  Tensor w = leaf({7, 4}, g);
  const std::vector<int32_t> idv{3, 0, 3, 6, 3, 1, 0, 2, 6, 5};
  const Tensor ids = from_vector<int32_t>(idv, {2, 5}, {DType::I32});
  const Tensor c = normal({2, 5, 4}, 0, 1, g, {DType::F64});
  Tensor rows = full({7, 4}, 0.0, {DType::F64});  // the lookup's gradient, by hand
  for (size_t i = 0; i < idv.size(); ++i)
    for (int64_t k = 0; k < 4; ++k) rows.data<double>()[idv[i] * 4 + k] += c.data<double>()[i * 4 + k];
  auto grads = [&](bool buffer, bool plain) {
    w.set_grad(buffer ? full({7, 4}, 0.5, {DType::F64}) : Tensor{});
    const Tensor gw = w.grad();
    Tensor loss = sum_all(index_select(w, 0, ids) * c);
    if (plain) loss = loss + sum_all(mul(w, w));  // its gradient 2 w, summed by the engine
    autograd::backward(loss);
    if (buffer) CHECK(w.grad().same(gw));  // summed where it was
    return w.grad();
  };
  const Tensor half = full({7, 4}, 0.5, {DType::F64}), twice_w = ops::affine(w.detach(), 2.0, 0.0);
  CHECK(test::max_rel_diff(grads(false, false), rows) < 1e-12);
  CHECK(test::max_rel_diff(grads(true, false), ops::add(rows, half)) < 1e-12);
  CHECK(test::max_rel_diff(grads(false, true), ops::add(rows, twice_w)) < 1e-12);
  CHECK(test::max_rel_diff(grads(true, true), ops::add(ops::add(rows, half), twice_w)) < 1e-12);
}

// LayerNorm's weight and bias gradients go into their .grad buffers the same way; the weight
// also feeds a plain op whose gradient the engine adds to the same buffer.
TEST_CASE("layer_norm adds its weight and bias gradients into the parameters' .grad in place") {
  Generator g(10);
  Tensor x = leaf({3, 4, 6}, g), w = leaf({6}, g), b = leaf({6}, g);
  const Tensor c = normal({3, 4, 6}, 0, 1, g, {DType::F64});
  auto grads = [&](bool buffers) {
    x.set_grad(Tensor{});
    w.set_grad(buffers ? full({6}, 0.5, {DType::F64}) : Tensor{});
    b.set_grad(buffers ? full({6}, 0.5, {DType::F64}) : Tensor{});
    const Tensor gw = w.grad(), gb = b.grad();
    autograd::backward(sum_all(nn::layer_norm(x, w, b, 1e-5) * c) + sum_all(mul(w, w)));
    if (buffers) CHECK((w.grad().same(gw) && b.grad().same(gb)));  // summed where they were
    return std::vector<Tensor>{x.grad(), w.grad(), b.grad()};
  };
  const std::vector<Tensor> ref = grads(false), got = grads(true);
  CHECK(test::max_rel_diff(got[0], ref[0]) < 1e-12);
  CHECK(test::max_rel_diff(got[1], ops::add(ref[1], full({6}, 0.5, {DType::F64}))) < 1e-12);
  CHECK(test::max_rel_diff(got[2], ops::add(ref[2], full({6}, 0.5, {DType::F64}))) < 1e-12);
}

// The engine offers a summing op the running gradient of its input's producer only when it
// holds the only handle to it (Tensor::unshared): a residual's gradient that a linear layer
// passed on, once that layer has run, is offered; the caller's seed passed on the same way,
// or one gradient handed to both inputs of an add, is not (writing it would change the
// caller's tensor, or the add's other input's gradient). The probe is an identity op that
// records whether it was offered a sum and adds into it when it was.
TEST_CASE("summing ops are offered a pending gradient only when the engine holds its only handle") {
  Generator g(12);
  Tensor x = leaf({2, 3, 4}, g), w = leaf({4, 4}, g);
  const Tensor c = normal({2, 3, 4}, 0, 1, g, {DType::F64}), seed = normal({2, 3, 4}, 0, 1, g, {DType::F64});
  int offered = -1;
  auto probe = [&](const Tensor& in) {
    return autograd::record_summing("probe", ops::clone(in), {in},
                                    [&offered](const Tensor& gr, const std::vector<Tensor>& sums) {
                                      offered = sums[0].defined();
                                      if (!offered) return std::vector<Tensor>{gr};
                                      ops::add_(sums[0], gr);
                                      return std::vector<Tensor>{sums[0]};
                                    });
  };
  enum Graph { kResidual, kSeeded, kAdd };
  auto out = [&](Graph graph, bool with_probe) {
    Tensor h = x * 1.5, p = with_probe ? probe(h) : h * 1.0;
    if (graph == kAdd) return sum_all((p + h) * c);
    Tensor y = linear(p, w, {}, h);  // dh from the residual: the output's gradient itself
    return graph == kResidual ? sum_all(y * c) : y;
  };
  auto grad_x = [&](Graph graph, bool with_probe) {
    x.set_grad(Tensor{}), w.set_grad(Tensor{});
    if (graph == kSeeded)
      autograd::backward(out(graph, with_probe), seed);
    else
      autograd::backward(out(graph, with_probe));
    return x.grad();
  };
  const Tensor seed_before = ops::clone(seed);
  for (Graph graph : {kResidual, kSeeded, kAdd}) {
    CAPTURE(int(graph));
    const Tensor ref = grad_x(graph, false), got = grad_x(graph, true);
    CHECK(offered == (graph == kResidual));
    CHECK(test::max_rel_diff(got, ref) < 1e-12);
  }
  CHECK(test::max_rel_diff(seed, seed_before) == 0.0);  // the caller's seed is untouched
}

// LayerNorm under a residual (the pre-norm block: x + f(layer_norm(x))) adds its input
// gradient into the residual's running gradient in place; the result must still be right.
TEST_CASE("layer_norm adds its input gradient into a residual stream's gradient: gradcheck") {
  Generator g(13);
  Tensor x = leaf({2, 3, 6}, g), w = leaf({6}, g), b = leaf({6}, g), lw = leaf({6, 6}, g);
  const Tensor c = normal({2, 3, 6}, 0, 1, g, {DType::F64});
  auto loss = [&](const std::vector<Tensor>& in) {
    Tensor h = in[0] * 1.5;
    return sum_all(linear(nn::layer_norm(h, in[1], in[2], 1e-5), in[3], {}, h) * c);
  };
  CHECK(gradcheck(loss, {x, w, b, lw}).ok);
  // and the same values with the gradient summed by the engine (h * 1.0 between them)
  auto grads = [&](bool fused) {
    for (const Tensor& t : {x, w, b}) t.set_grad(Tensor{});
    Tensor h = x * 1.5;
    Tensor n = nn::layer_norm(fused ? h : h * 1.0, w, b, 1e-5);
    autograd::backward(sum_all(linear(n, lw, {}, h) * c));
    return std::vector<Tensor>{x.grad(), w.grad(), b.grad()};
  };
  const std::vector<Tensor> ref = grads(false), got = grads(true);
  for (size_t i = 0; i < ref.size(); ++i) CHECK(test::max_rel_diff(got[i], ref[i]) < 1e-12);
}

TEST_CASE("a leaf reached through casts gets its gradient summed in its own dtype") {
  Generator g(8);
  Tensor x = leaf({5}, g);  // float64
  const Tensor c = normal({5}, 0, 1, g, {DType::F32});
  // Two uses through casts of the leaf (the first gradient creates .grad, the second adds to
  // it), one through a cast of a non-leaf (converted back as before).
  Tensor y = sum_all(mul(cast(x, DType::F32), c)) + sum_all(mul(cast(x, DType::F32), c)) +
             cast(sum_all(mul(x, x)), DType::F32);
  autograd::backward(y);
  REQUIRE(x.grad().dtype() == DType::F64);
  const auto gx = x.grad().to_vector<double>(), vx = x.to_vector<double>(), vc = c.to_vector<double>();
  for (size_t i = 0; i < 5; ++i) CHECK(gx[i] == doctest::Approx(2 * vc[i] + 2 * vx[i]).epsilon(1e-6));
  // A leaf whose only use is a cast: its first gradient is stored converted.
  Tensor z = leaf({3}, g);
  autograd::backward(sum_all(cast(z, DType::F32)));
  REQUIRE(z.grad().dtype() == DType::F64);
  CHECK(z.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  // ops::add_ itself: a float32 source into a float64 destination, broadcast.
  Tensor dst = full({2, 3}, 1.0, {DType::F64});
  ops::add_(dst, full({3}, 0.25, {DType::F32}), -2.0);
  CHECK(dst.to_vector<double>() == std::vector<double>(6, 0.5));
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
  CHECK(nn::clip_factor(13.0, 1.0) == doctest::Approx(1.0 / 13).epsilon(1e-5));
  CHECK(nn::clip_factor(1.0, 2.0) == 1.0);
  CHECK(nn::clip_factor(13.0, 0.0) == 1.0);  // clipping off
}

// The trainer clips inside the update: AdamW's grad_scale s on g is the step on s g, and the
// stored gradient stays as it was.
TEST_CASE("adamw_step_ with grad_scale equals the step on the scaled gradient") {
  Generator gen(5);
  const Tensor p0 = normal({7}, 0, 1, gen, {DType::F64}), g = normal({7}, 0, 1, gen, {DType::F64});
  const Tensor m0 = normal({7}, 0, 0.1, gen, {DType::F64}), v0 = uniform({7}, 0.0, 0.01, gen, {DType::F64});
  const Tensor g_before = ops::clone(g);
  Tensor p1 = ops::clone(p0), m1 = ops::clone(m0), v1 = ops::clone(v0);
  Tensor p2 = ops::clone(p0), m2 = ops::clone(m0), v2 = ops::clone(v0);
  ops::adamw_step_(p1, g, m1, v1, {1e-2, 0.9, 0.999, 1e-8, 0.1, 2, 0.3});
  ops::adamw_step_(p2, ops::affine(g, 0.3, 0.0), m2, v2, {1e-2, 0.9, 0.999, 1e-8, 0.1, 2});
  CHECK(test::max_rel_diff(p1, p2) < 1e-14);
  CHECK(test::max_rel_diff(m1, m2) < 1e-14);
  CHECK(test::max_rel_diff(v1, v2) < 1e-14);
  CHECK(test::max_rel_diff(g, g_before) == 0.0);
}
