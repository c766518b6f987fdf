// Fused attention, RoPE and cross-entropy: forward against naive float64 references,
// semantics (ignored rows, inverse rotation) and the errors they raise. Their gradchecks
// and layout checks are op-table entries (tests/op_table.cpp).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/functional.h"
#include "tests/helpers.h"

using namespace sessa;
using autograd::gradcheck;
using sessa::test::check_error;
using sessa::test::leaf;
using sessa::test::max_rel_diff;

namespace {

// Materialised float64 attention: full score matrix per head, -inf above the causal
// diagonal, softmax, times V. Returns out (B, H, Tq, dh) and lse (B, H, Tq).
ops::AttentionOut naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), dh = q.size(3), Hkv = k.size(1), Tk = k.size(2);
  auto vq = q.to_vector<double>(), vk = k.to_vector<double>(), vv = v.to_vector<double>();
  std::vector<double> out(size_t(B * H * Tq * dh)), lse(size_t(B * H * Tq));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t row = (b * H + h) * Tq + i, kv = (b * Hkv + h / (H / Hkv)) * Tk;
        std::vector<double> s(static_cast<size_t>(Tk));
        double mx = -std::numeric_limits<double>::infinity(), total = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < dh; ++c) dot += vq[size_t(row * dh + c)] * vk[size_t((kv + j) * dh + c)];
          s[size_t(j)] = j <= q_offset + i ? scale * dot : -std::numeric_limits<double>::infinity();
          mx = std::max(mx, s[size_t(j)]);
        }
        for (int64_t j = 0; j < Tk; ++j) total += std::exp(s[size_t(j)] - mx);
        lse[size_t(row)] = mx + std::log(total);
        for (int64_t j = 0; j < Tk; ++j)
          for (int64_t c = 0; c < dh; ++c)
            out[size_t(row * dh + c)] += std::exp(s[size_t(j)] - mx) / total * vv[size_t((kv + j) * dh + c)];
      }
  return {from_vector(out, {B, H, Tq, dh}, {DType::F64}), from_vector(lse, {B, H, Tq}, {DType::F64})};
}

void check_attention_forward(int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t dh, uint64_t seed) {
  const Shape sizes{B, H, Hkv, Tq, Tk, dh};
  CAPTURE(sizes);
  Generator gen(seed);
  Tensor q = normal({B, H, Tq, dh}, 0, 1, gen, {DType::F64});
  Tensor k = normal({B, Hkv, Tk, dh}, 0, 1, gen, {DType::F64}), v = normal({B, Hkv, Tk, dh}, 0, 1, gen, {DType::F64});
  const int64_t q_offset = Tk - Tq;
  const double scale = 1.0 / std::sqrt(double(dh));
  auto ref = naive_attention(q, k, v, q_offset, scale);
  auto got = ops::attention(q, k, v, q_offset, scale);
  CHECK(max_rel_diff(got.out, ref.out) < 1e-12);
  CHECK(max_rel_diff(got.lse, ref.lse) < 1e-12);
  auto got32 = ops::attention(q.to(DType::F32), k.to(DType::F32), v.to(DType::F32), q_offset, scale);
  CHECK(got32.out.dtype() == DType::F32);
  CHECK(got32.lse.dtype() == DType::F32);
  CHECK(max_rel_diff(got32.out, ref.out) < 1e-5);
  CHECK(max_rel_diff(got32.lse, ref.lse) < 1e-5);
}

}  // namespace

TEST_CASE("attention forward matches a naive float64 reference") {
  check_attention_forward(2, 3, 3, 7, 7, 5, 1);       // MHA, odd sizes
  check_attention_forward(2, 4, 2, 6, 6, 4, 2);       // GQA, 2 query heads per kv head
  check_attention_forward(1, 4, 1, 5, 5, 8, 3);       // MQA
  check_attention_forward(2, 4, 2, 1, 9, 6, 4);       // decode: one query against a cache
  check_attention_forward(1, 2, 1, 3, 8, 3, 5);       // q_offset > 0 with Tq < Tk
  check_attention_forward(1, 1, 1, 1, 1, 4, 6);       // T = 1
  check_attention_forward(1, 2, 1, 150, 150, 40, 7);  // several query blocks, blocked gemm
  check_attention_forward(1, 2, 2, 70, 100, 16, 8);   // several blocks with an offset
}

TEST_CASE("attention accepts strided inputs and keys past the last query") {
  Generator gen(9);
  // (B, T, H, dh) activations viewed as (B, H, T, dh)
  Tensor q = ops::permute(normal({2, 5, 4, 3}, 0, 1, gen, {DType::F64}), {0, 2, 1, 3});
  Tensor k = ops::permute(normal({2, 6, 2, 3}, 0, 1, gen, {DType::F64}), {0, 2, 1, 3});
  Tensor v = ops::permute(normal({2, 6, 2, 3}, 0, 1, gen, {DType::F64}), {0, 2, 1, 3});
  CHECK_FALSE(q.is_contiguous());
  auto ref = naive_attention(ops::contiguous(q), ops::contiguous(k), ops::contiguous(v), 0, 0.7);
  CHECK(max_rel_diff(ops::attention(q, k, v, 0, 0.7).out, ref.out) < 1e-12);  // q_offset + Tq < Tk
}

TEST_CASE("attention rejects bad shapes") {
  Tensor q = zeros({1, 4, 3, 8}), k = zeros({1, 2, 3, 8});
  check_error(
      [&] {
        ops::attention(q, zeros({1, 3, 3, 8}), zeros({1, 3, 3, 8}), 0, 1.0);
      },
      {"attention", "[1, 4, 3, 8]", "[1, 3, 3, 8]"});
  check_error([&] { ops::attention(q, k, zeros({1, 2, 4, 8}), 0, 1.0); }, {"attention", "[1, 2, 4, 8]"});
  check_error(
      [&] {
        ops::attention(q, zeros({1, 2, 3, 4}), zeros({1, 2, 3, 4}), 0, 1.0);
      },
      {"attention", "[1, 2, 3, 4]"});
  check_error([&] { ops::attention(q, k, k, 1, 1.0); }, {"attention", "q_offset 1"});
  check_error([&] { ops::attention(zeros({4, 3, 8}), k, k, 0, 1.0); }, {"attention", "[4, 3, 8]"});
  check_error([&] { ops::attention(q, k.to(DType::F64), k, 0, 1.0); }, {"attention", "float64"});
  check_error([&] { ops::attention(q, k, k, 0, 0.0); }, {"attention", "scale 0"});
  check_error([&] { ops::attention(q, k, k, 0, -0.5); }, {"attention", "scale -0.5", "positive"});
}

TEST_CASE("attention backward matches autograd through composed ops (parallel, several blocks)") {
  const int64_t B = 2, H = 4, Hkv = 2, Tq = 80, Tk = 100, dh = 16, off = Tk - Tq;
  const double scale = 0.25;
  Generator g(13);
  Tensor w = normal({B, H, Tq, dh}, 0, 1, g, {DType::F64});
  auto grads_of = [&](bool fused) {
    Generator gi(14);
    Tensor q = leaf({B, H, Tq, dh}, gi), k = leaf({B, Hkv, Tk, dh}, gi), v = leaf({B, Hkv, Tk, dh}, gi);
    Tensor out;
    if (fused) {
      out = nn::causal_attention(q, k, v, off, scale);
    } else {  // repeat kv heads, materialise masked scores, softmax
      const Shape grouped{B, Hkv, H / Hkv, Tk, dh}, full_shape{B, H, Tk, dh};
      Tensor kx = reshape(expand(unsqueeze(k, 2), grouped), full_shape);
      Tensor vx = reshape(expand(unsqueeze(v, 2), grouped), full_shape);
      std::vector<double> mask(size_t(Tq * Tk));
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t s = 0; s < Tk; ++s) mask[size_t(i * Tk + s)] = s <= off + i ? 0.0 : -1e30;
      Tensor scores = matmul(q, kx, false, true) * scale + from_vector(mask, {Tq, Tk}, {DType::F64});
      out = matmul(softmax(scores), vx);
    }
    autograd::backward(sum_all(out * w));
    return std::vector<Tensor>{out, q.grad(), k.grad(), v.grad()};
  };
  auto fused = grads_of(true), ref = grads_of(false);
  for (size_t i = 0; i < 4; ++i) CHECK(max_rel_diff(fused[i], ref[i]) < 1e-12);
}

TEST_CASE("rope: hand-computed rotation, inverse, norms, float32, errors") {
  // x (1, 1, 2, 4) at positions 3 and 4 with base 100: pair 0 turns by p, pair 1 by p / 10.
  std::vector<double> xv{1, 2, 3, 4, -1, 0.5, 2, -3};
  Tensor x = from_vector(xv, {1, 1, 2, 4}, {DType::F64});
  auto y = ops::rope(x, 3, 100.0).to_vector<double>();
  for (int t = 0; t < 2; ++t)
    for (int i = 0; i < 2; ++i) {
      const double th = (3 + t) * (i == 0 ? 1.0 : 0.1), x0 = xv[size_t(4 * t + 2 * i)],
                   x1 = xv[size_t(4 * t + 2 * i + 1)];
      CHECK(y[size_t(4 * t + 2 * i)] == doctest::Approx(x0 * std::cos(th) - x1 * std::sin(th)).epsilon(1e-14));
      CHECK(y[size_t(4 * t + 2 * i + 1)] == doctest::Approx(x0 * std::sin(th) + x1 * std::cos(th)).epsilon(1e-14));
    }

  Generator g(11);
  Tensor z = normal({2, 3, 5, 8}, 0, 1, g, {DType::F64});
  Tensor r = ops::rope(z, 7);
  CHECK(max_rel_diff(ops::rope(r, 7, 10000.0, true), z) < 1e-14);
  auto zv = z.to_vector<double>(), rv = r.to_vector<double>();
  for (size_t i = 0; i < zv.size(); i += 2)
    CHECK(std::hypot(rv[i], rv[i + 1]) == doctest::Approx(std::hypot(zv[i], zv[i + 1])).epsilon(1e-13));
  // float32 agrees with the float64 result.
  CHECK(max_rel_diff(ops::rope(z.to(DType::F32), 7), r) < 1e-6);
  check_error([] { ops::rope(zeros({1, 1, 2, 5}), 0); }, {"rope", "even", "[1, 1, 2, 5]"});
}

TEST_CASE("cross_entropy: matches log_softmax, ignores rows, errors") {
  Generator g(12);
  const int64_t N = 6, V = 5;
  Tensor logits = normal({N, V}, 0, 2, g, {DType::F64});
  std::vector<int32_t> tv{0, 4, -1, 2, 3, -1};
  Tensor targets = from_vector<int32_t>(tv, {N}, {DType::I32});
  auto lsm = ops::log_softmax(logits).to_vector<double>();
  double expect = 0;
  int count = 0;
  for (int64_t r = 0; r < N; ++r)
    if (tv[size_t(r)] != -1) expect -= lsm[size_t(r * V + tv[size_t(r)])], ++count;
  expect /= count;
  auto res = ops::cross_entropy(logits, targets, -1);
  CHECK(res.count == 4);
  CHECK(res.loss.dim() == 0);
  CHECK(res.loss.item() == doctest::Approx(expect).epsilon(1e-13));
  auto res32 = ops::cross_entropy(logits.to(DType::F32), targets, -1);
  CHECK(res32.loss.dtype() == DType::F32);
  CHECK(res32.loss.item() == doctest::Approx(expect).epsilon(1e-6));

  // Gradient is zero on ignored rows.
  Tensor x = leaf({N, V}, g);
  autograd::backward(nn::cross_entropy(x, targets));
  auto gx = x.grad().to_vector<double>();
  for (int64_t j = 0; j < V; ++j) CHECK(gx[size_t(2 * V + j)] == 0.0);

  // All targets ignored: loss 0, gradient 0.
  Tensor all_ignored = full({N}, -100, {DType::I32});
  Tensor y = leaf({N, V}, g);
  Tensor loss = nn::cross_entropy(y, all_ignored, -100);
  CHECK(loss.item() == 0.0);
  autograd::backward(loss);
  for (double d : y.grad().to_vector<double>()) CHECK(d == 0.0);

  Tensor bad = from_vector<int32_t>({0, 1, 5, 2, 3, 4}, {N}, {DType::I32});
  check_error([&] { ops::cross_entropy(logits, bad, -1); }, {"cross_entropy", "target 5", "row 2"});
  check_error([&] { ops::cross_entropy(logits, targets.to(DType::F64), -1); }, {"cross_entropy", "int32"});
  check_error([&] { ops::cross_entropy(logits, zeros({N + 1}, {DType::I32}), -1); },
              {"cross_entropy", "[6, 5]", "[7]"});
}
