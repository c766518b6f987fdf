// Tensor library: creation, dtypes, views and aliasing, elementwise math,
// reductions, matmul, softmax, indexing, error messages, seeded random.
#include <doctest/doctest.h>

#include "tensor/ops.h"
#include "tests/helpers.h"

using namespace sessa;
using sessa::test::check_error;
using sessa::test::max_rel_diff;

TEST_CASE("creation and host round trip") {
  CHECK(zeros({2, 3}).to_vector<float>() == std::vector<float>(6, 0.f));
  CHECK(full({4}, 2.5, {DType::F64}).to_vector<double>() == std::vector<double>(4, 2.5));
  CHECK(arange(5, {DType::I32}).to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2, 3, 4});
  Tensor t = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.dtype() == DType::F32);
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.to_vector<double>() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(scalar(7).item() == 7);
}

TEST_CASE("dtype casts, bfloat16 rounds to nearest even") {
  CHECK(float(bf16(1.0f)) == 1.0f);
  CHECK(float(bf16(1.00390625f)) == 1.0f);       // halfway between 1 and 1+2^-7: ties to even
  CHECK(float(bf16(1.01171875f)) == 1.015625f);  // halfway, rounds up to even mantissa
  CHECK(std::isnan(float(bf16(NAN))));
  Tensor x = from_vector<float>({1.5f, -2.25f, 3.0f}, {3});
  CHECK(x.to(DType::BF16).to(DType::F64).to_vector<double>() == std::vector<double>{1.5, -2.25, 3.0});
  CHECK(x.to(DType::I32).to_vector<int32_t>() == std::vector<int32_t>{1, -2, 3});
  CHECK(from_vector<int32_t>({65535, 7}, {2}).to(DType::U16).to_vector<uint16_t>() == std::vector<uint16_t>{65535, 7});
}

TEST_CASE("views alias their storage; contiguous copies only when needed") {
  Tensor x = arange(12, {DType::F32});
  Tensor v = ops::view(x, {3, 4});
  CHECK(v.shares_storage(x));
  Tensor t = ops::transpose(v, 0, 1);
  CHECK(t.shares_storage(x));
  CHECK(!t.is_contiguous());
  CHECK(t.shape() == Shape{4, 3});
  CHECK(t.to_vector<float>() == std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  Tensor n = ops::narrow(v, 1, 1, 2);  // columns 1..2
  CHECK(n.to_vector<float>() == std::vector<float>{1, 2, 5, 6, 9, 10});
  ops::fill_(n, -1);  // writes through the view
  CHECK(x.to_vector<float>() == std::vector<float>{0, -1, -1, 3, 4, -1, -1, 7, 8, -1, -1, 11});
  CHECK(ops::contiguous(v).same(v));             // already contiguous: no copy
  CHECK(!ops::contiguous(t).shares_storage(x));  // transposed: copied
  // unit_last_stride keeps views whose rows are dense (a column range: row stride 4, unit
  // last stride) and copies the others.
  CHECK(ops::unit_last_stride(n).same(n));
  CHECK(!ops::unit_last_stride(t).shares_storage(x));
  CHECK(ops::unit_last_stride(t).to_vector<float>() == t.to_vector<float>());
  Tensor e = ops::expand(from_vector<float>({1, 2}, {2, 1}), {2, 3});
  CHECK(e.strides() == Shape{1, 0});
  CHECK(e.to_vector<float>() == std::vector<float>{1, 1, 1, 2, 2, 2});
  CHECK(ops::unsqueeze(v, 1).shape() == Shape{3, 1, 4});
  CHECK(ops::squeeze(ops::unsqueeze(v, 0), 0).shape() == Shape{3, 4});
  // Splitting the last dim of a slice is still a view (no copy).
  Tensor wide = zeros({2, 8});
  Tensor half = ops::narrow(wide, 1, 4, 4);
  Tensor heads = ops::view(half, {2, 2, 2});
  CHECK(heads.shares_storage(wide));
  CHECK(heads.strides() == Shape{8, 2, 1});
  CHECK_THROWS_WITH_AS(ops::view(t, {12}), doctest::Contains("use reshape"), Error);
  CHECK(!ops::reshape(t, {12}).shares_storage(x));
}

TEST_CASE("broadcasting elementwise arithmetic") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}, {DType::F64});
  Tensor b = from_vector<double>({10, 20, 30}, {3}, {DType::F64});
  CHECK(ops::add(a, b).to_vector<double>() == std::vector<double>{11, 22, 33, 14, 25, 36});
  CHECK(ops::mul(a, ops::view(from_vector<double>({2, 3}, {2}, {DType::F64}), {2, 1})).to_vector<double>() ==
        std::vector<double>{2, 4, 6, 12, 15, 18});
  CHECK(ops::sub(b, a).to_vector<double>() == std::vector<double>{9, 18, 27, 6, 15, 24});
  CHECK(ops::div(a, b).to_vector<double>()[2] == doctest::Approx(0.1));
  CHECK(ops::affine(a, 2, 1).to_vector<double>() == std::vector<double>{3, 5, 7, 9, 11, 13});
  Tensor acc = zeros({2, 3}, {DType::F64});
  ops::add_(acc, b, 0.5);
  CHECK(acc.to_vector<double>() == std::vector<double>{5, 10, 15, 5, 10, 15});
  ops::add_(acc, b, scalar(-0.5, {DType::F32}));  // alpha as a one-element tensor
  CHECK(acc.to_vector<double>() == std::vector<double>{0, 0, 0, 0, 0, 0});
  check_error([&] { ops::add_(acc, b, from_vector<double>({1, 2}, {2}, {DType::F64})); }, {"add_", "alpha"});
  check_error([&] { ops::add_(acc, zeros({4}, {DType::F64}), scalar(1.0)); },
              {"add_", "[2, 3] and [4] do not broadcast"});
  // Strided (transposed) inputs give the same answer as contiguous ones.
  Tensor at = ops::transpose(ops::contiguous(ops::transpose(a, 0, 1)), 0, 1);
  CHECK(!at.is_contiguous());
  CHECK(ops::add(at, b).to_vector<double>() == ops::add(a, b).to_vector<double>());
}

TEST_CASE("unary math matches the standard library") {
  Tensor x = from_vector<double>({-2.0, -0.5, 0.3, 1.7}, {4}, {DType::F64});
  auto y = [&](ops::Unary op) { return ops::unary(op, x).to_vector<double>(); };
  CHECK(y(ops::Unary::Tanh)[1] == doctest::Approx(std::tanh(-0.5)));
  CHECK(y(ops::Unary::Gelu)[2] == doctest::Approx(0.5 * 0.3 * (1 + std::erf(0.3 / std::sqrt(2.0)))));
  CHECK(y(ops::Unary::Silu)[3] == doctest::Approx(1.7 / (1 + std::exp(-1.7))));
  CHECK(y(ops::Unary::Softplus)[0] == doctest::Approx(std::log1p(std::exp(-2.0))));
  CHECK(y(ops::Unary::Sigmoid)[0] == doctest::Approx(1 / (1 + std::exp(2.0))));
  CHECK(y(ops::Unary::Relu) == std::vector<double>{0, 0, 0.3, 1.7});
}

TEST_CASE("reductions") {
  Tensor a = from_vector<double>({1, 5, 3, 4, 2, 6}, {2, 3}, {DType::F64});
  CHECK(ops::sum(a, {1}).to_vector<double>() == std::vector<double>{9, 12});
  CHECK(ops::sum(a, {0}, true).shape() == Shape{1, 3});
  CHECK(ops::mean(a, {0, 1}).item() == doctest::Approx(3.5));
  CHECK(ops::sum_all(a).item() == 21);
  CHECK(ops::amax(a, 1).to_vector<double>() == std::vector<double>{5, 6});
  CHECK(ops::argmax(a, 1).to_vector<int32_t>() == std::vector<int32_t>{1, 2});
  CHECK(ops::argmax(a, 0).to_vector<int32_t>() == std::vector<int32_t>{1, 0, 1});
  CHECK(ops::sum_to(ops::expand(a, {4, 2, 3}), {2, 1}).to_vector<double>() == std::vector<double>{36, 48});

  // sum_add_: out += the sum, in x's dtype or float32 beside bfloat16.
  Tensor acc = from_vector<double>({10, 20, 30}, {3}, {DType::F64});
  ops::sum_add_(acc, a, {0});
  CHECK(acc.to_vector<double>() == std::vector<double>{15, 27, 39});
  Tensor acc32 = from_vector<float>({0.5f, -1.f}, {2});
  ops::sum_add_(acc32, a.to(DType::BF16), {1});
  CHECK(acc32.to_vector<float>() == std::vector<float>{9.5f, 11.f});
  check_error([&] { ops::sum_add_(acc, a, {1}); }, {"sum_add_", "output of shape [2]", "got float64[3] on cpu"});
  check_error([&] { ops::sum_add_(acc32, a, {1}); }, {"sum_add_", "float64"});
}

TEST_CASE("matmul: transposes, batches and a shared weight against a naive product") {
  Generator gen(3);
  auto naive = [](const Tensor& a, const Tensor& b) {  // 2-D, contiguous, float64
    int64_t M = a.size(0), K = a.size(1), N = b.size(1);
    std::vector<double> out(size_t(M * N));
    auto va = a.to_vector<double>(), vb = b.to_vector<double>();
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < K; ++k) out[size_t(i * N + j)] += va[size_t(i * K + k)] * vb[size_t(k * N + j)];
    return from_vector(out, {M, N}, {DType::F64});
  };
  Tensor a = normal({37, 19}, 0, 1, gen, {DType::F64}), b = normal({19, 23}, 0, 1, gen, {DType::F64});
  Tensor ref = naive(a, b);
  CHECK(max_rel_diff(ops::matmul(a, b), ref) < 1e-12);
  Tensor at = ops::contiguous(ops::transpose(a, 0, 1)), bt = ops::contiguous(ops::transpose(b, 0, 1));
  CHECK(max_rel_diff(ops::matmul(at, b, true, false), ref) < 1e-12);
  CHECK(max_rel_diff(ops::matmul(a, bt, false, true), ref) < 1e-12);
  CHECK(max_rel_diff(ops::matmul(ops::transpose(at, 0, 1), b), ref) < 1e-12);  // transposed view, no flag
  // Batched, and a batch against one shared 2-D weight, in float32.
  Tensor xa = normal({2, 3, 5, 7}, 0, 1, gen), xb = normal({2, 3, 7, 4}, 0, 1, gen), w = normal({7, 4}, 0, 1, gen);
  Tensor batched = ops::matmul(xa, xb), shared = ops::matmul(xa, w);
  CHECK(batched.shape() == Shape{2, 3, 5, 4});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      auto pick = [&](const Tensor& t) { return ops::narrow(ops::narrow(t, 0, i, 1), 1, j, 1); };
      auto as2d = [](const Tensor& t) { return ops::reshape(t, {t.size(-2), t.size(-1)}).to(DType::F64); };
      CHECK(max_rel_diff(as2d(pick(batched)), naive(as2d(pick(xa)), as2d(pick(xb)))) < 1e-5);
      CHECK(max_rel_diff(as2d(pick(shared)), naive(as2d(pick(xa)), w.to(DType::F64))) < 1e-5);
    }
  // matmul_add_: c += a b in place (transposed operands and the shared-weight batch too).
  Tensor c = normal({37, 23}, 0, 1, gen, {DType::F64}), c0 = ops::clone(c);
  ops::matmul_add_(c, at, b, true, false);
  CHECK(max_rel_diff(c, ops::add(c0, ref)) < 1e-12);
  Tensor cs = normal({2, 3, 5, 4}, 0, 1, gen), cs0 = ops::clone(cs);
  ops::matmul_add_(cs, xa, w);
  CHECK(max_rel_diff(cs.to(DType::F64), ops::add(cs0, shared).to(DType::F64)) < 1e-5);
  check_error([&] { ops::matmul_add_(zeros({37, 22}, {DType::F64}), a, b); }, {"matmul_add_", "[37, 23]"});
  check_error([&] { ops::matmul_add_(ops::transpose(zeros({23, 37}, {DType::F64}), 0, 1), a, b); }, {"contiguous"});
  // A sum in another dtype only as float32 beside bfloat16 operands: float32 beside float64 is refused.
  check_error([&] { ops::matmul_add_(zeros({37, 23}, {DType::F32}), a, b); }, {"matmul_add_", "float32 also for"});
}

TEST_CASE("softmax and log_softmax rows") {
  Tensor x = from_vector<double>({1, 2, 3, 1000, 1000, 1000}, {2, 3}, {DType::F64});
  auto y = ops::softmax(x).to_vector<double>();
  CHECK(y[0] + y[1] + y[2] == doctest::Approx(1.0));
  CHECK(y[4] == doctest::Approx(1.0 / 3));  // large logits stay finite
  auto ly = ops::log_softmax(x).to_vector<double>();
  CHECK(std::exp(ly[2]) == doctest::Approx(y[2]));
}

TEST_CASE("cat, index_select and index_add") {
  Tensor a = from_vector<float>({1, 2, 3, 4}, {2, 2}), b = from_vector<float>({5, 6}, {2, 1});
  CHECK(ops::cat({a, b}, 1).to_vector<float>() == std::vector<float>{1, 2, 5, 3, 4, 6});
  Tensor table = from_vector<float>({0, 1, 10, 11, 20, 21}, {3, 2});
  Tensor ids = from_vector<int32_t>({2, 0, 2}, {3}, {DType::I32});
  CHECK(ops::index_select(table, 0, ids).to_vector<float>() == std::vector<float>{20, 21, 0, 1, 20, 21});
  Tensor g = ones({3, 2});
  CHECK(ops::index_add({3, 2}, 0, ids, g).to_vector<float>() == std::vector<float>{1, 1, 0, 0, 2, 2});
  check_error([&] { ops::index_select(table, 0, from_vector<int32_t>({3}, {1}, {DType::I32})); },
              {"index_select", "index 3", "[0, 3)"});
}

TEST_CASE("errors name the op and the shapes") {
  check_error([] { ops::add(zeros({2, 3}), zeros({4})); }, {"add", "[2, 3]", "[4]"});
  check_error([] { ops::matmul(zeros({2, 3}), zeros({4, 5})); }, {"matmul", "[2, 3]", "[4, 5]"});
  check_error([] { ops::add(zeros({2}), zeros({2}, {DType::F64})); }, {"add", "float32", "float64"});
  check_error([] { ops::view(zeros({2, 3}), {4}); }, {"view", "[2, 3]", "[4]"});
  check_error([] { ops::softmax(zeros({2}, {DType::I32})); }, {"softmax", "int32"});
  check_error([] { parse_device("tpu"); }, {"device", "tpu"});
}

TEST_CASE("seeded random: reproducible, well distributed, independent of the split") {
  Generator g1(42), g2(42), g3(43);
  Tensor a = normal({1000}, 0, 1, g1), b = normal({1000}, 0, 1, g2), c = normal({1000}, 0, 1, g3);
  CHECK(a.to_vector<float>() == b.to_vector<float>());
  CHECK(a.to_vector<float>() != c.to_vector<float>());
  CHECK(ops::mean(a, {0}).item() == doctest::Approx(0).epsilon(0.1).scale(1));
  Tensor sq = ops::mul(a, a);
  CHECK(ops::mean(sq, {0}).item() == doctest::Approx(1).epsilon(0.15));
  // Two draws of 500 equal one draw of 1000: numbers depend only on (seed, counter).
  Generator g4(42);
  Tensor first = normal({500}, 0, 1, g4), second = normal({500}, 0, 1, g4);
  CHECK(ops::cat({first, second}, 0).to_vector<float>() == a.to_vector<float>());
  Tensor u = uniform({2000}, -1, 3, g1);
  CHECK(ops::amax(u, 0).item() < 3);
  CHECK(ops::amax(ops::affine(u, -1, 0), 0).item() <= 1);
}
