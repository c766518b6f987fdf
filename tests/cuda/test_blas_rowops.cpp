// GPU parity for cuBLAS matmul (every transpose combination, batches, shared weights,
// strided views; float32 with and without TF32, bfloat16, float64), the cuBLASLt linear
// layer with its fused bias (and the matmul + add it falls back to), and the fused row
// ops: LayerNorm (float32, bfloat16 with float32 weights, float64), cross-entropy
// (ignored rows, awkward vocabulary sizes, device and host targets) and RoPE.
// Forward and backward; the CPU result is the reference.
#include <array>
#include <functional>

#include "tensor/cuda/blas.h"
#include "tensor/cuda/linear.h"
#include "tests/cuda/parity.h"

namespace sessa::test {
namespace {

Tensor host(const Tensor& t) { return t.to(Device::cpu()); }

// Rounds a float32 CPU tensor to `dtype` and back, so CPU and GPU see the same values.
Tensor rounded(const Tensor& x, DType dtype) { return x.to(dtype).to(DType::F32); }

void check_near(const Tensor& gpu_result, const Tensor& cpu_ref, double tol, const std::string& what) {
  REQUIRE_MESSAGE(gpu_result.shape() == cpu_ref.shape(),
                  what << ": shape " << gpu_result.shape() << " vs " << cpu_ref.shape());
  const double err = max_rel_diff(host(gpu_result).to(DType::F64), cpu_ref.to(DType::F64));
  CHECK_MESSAGE(err <= tol, what << ": relative error " << err << " > " << tol);
}

// ---- matmul ------------------------------------------------------------------------------

// op(a) @ op(b) and its two backward products (as autograd/ops_math.cpp forms them) on
// both devices. a and b are float32 CPU tensors; view_a/view_b (optional) turn an operand
// into the view fed to the op, on either device.
void check_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, DType dtype, double tol, const std::string& what,
                  const std::function<Tensor(const Tensor&)>& view_a = {},
                  const std::function<Tensor(const Tensor&)>& view_b = {}) {
  auto va = [&](const Tensor& t) { return view_a ? view_a(t) : t; };
  auto vb = [&](const Tensor& t) { return view_b ? view_b(t) : t; };
  const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  Tensor ac = rounded(a, dtype).to(ref_t), bc = rounded(b, dtype).to(ref_t);
  Tensor ag = a.to(dtype).to(gpu()), bg = b.to(dtype).to(gpu());
  Tensor ref = ops::matmul(va(ac), vb(bc), ta, tb);
  Tensor out = ops::matmul(va(ag), vb(bg), ta, tb);
  CHECK(out.dtype() == dtype);
  CHECK(out.is_cuda());
  check_near(out, ref, tol, what + " forward");

  // Backward products with an upstream gradient g shaped like the output.
  Generator gen(uint64_t(ref.numel()) + 77);
  Tensor g = cpu_randn(ref.shape(), gen);
  Tensor gc = rounded(g, dtype).to(ref_t), gg = g.to(dtype).to(gpu());
  auto backward = [&](const Tensor& A, const Tensor& B, const Tensor& G) {
    Tensor ga = ops::matmul(G, B, false, !tb);
    if (ta) ga = ops::transpose(ga, -1, -2);
    Tensor gb;
    if (B.dim() == 2 && A.dim() > 2 && !ta) {  // one tall GEMM over the flattened batch
      Tensor a2 = ops::reshape(A, {-1, A.size(-1)}), g2 = ops::reshape(G, {-1, G.size(-1)});
      gb = tb ? ops::matmul(g2, a2, true, false) : ops::matmul(a2, g2, true, false);
    } else {
      gb = ops::matmul(A, G, !ta, false);
      if (tb) gb = ops::transpose(gb, -1, -2);
    }
    return std::pair{ga, gb};
  };
  auto [ga_ref, gb_ref] = backward(va(ac), vb(bc), gc);
  auto [ga, gb] = backward(va(ag), vb(bg), gg);
  check_near(ga, ga_ref, tol, what + " grad a");
  if (!(vb(bc).dim() == 2 && va(ac).dim() > 2 && ta))  // that case sums over the batch (not a GEMM)
    check_near(gb, gb_ref, tol, what + " grad b");
}

Tensor operand(const Shape& rows_cols, bool trans, Generator& gen, const Shape& batch = {}) {
  Shape s = batch;
  s.push_back(trans ? rows_cols[1] : rows_cols[0]);
  s.push_back(trans ? rows_cols[0] : rows_cols[1]);
  return cpu_randn(s, gen);
}

std::string name(const char* kind, int64_t M, int64_t K, int64_t N, bool ta, bool tb) {
  return std::string(kind) + " M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
         (ta ? " ta" : "") + (tb ? " tb" : "");
}

}  // namespace

TEST_CASE("cuda matmul: 2-D, all transpose combinations, float32 exact") {
  NoTf32 exact;
  Generator gen(101);
  const std::vector<std::array<int64_t, 3>> sizes{{1, 1, 1}, {37, 53, 29}, {128, 64, 96}, {1, 300, 7}, {200, 1, 3}};
  for (auto [M, K, N] : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Tensor a = operand({M, K}, ta, gen), b = operand({K, N}, tb, gen);
        check_matmul(a, b, ta, tb, DType::F32, 2e-5, name("2-D", M, K, N, ta, tb));
      }
}

TEST_CASE("cuda matmul: batched, shared weight, expanded weight, float32 exact") {
  NoTf32 exact;
  Generator gen(102);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // Batched with two batch dims (odd sizes).
      Tensor a = operand({19, 33}, ta, gen, {3, 5}), b = operand({33, 21}, tb, gen, {3, 5});
      check_matmul(a, b, ta, tb, DType::F32, 2e-5, name("batched", 19, 33, 21, ta, tb));
      // A batch against a shared 2-D weight (a tall GEMM, or stride-0 batches when ta).
      Tensor x = operand({17, 40}, ta, gen, {4, 3}), w = operand({40, 24}, tb, gen);
      check_matmul(x, w, ta, tb, DType::F32, 2e-5, name("shared weight", 17, 40, 24, ta, tb));
      // The same weight expanded over the batch (batch stride 0).
      Tensor x1 = operand({9, 16}, ta, gen, {5}), w1 = operand({16, 11}, tb, gen);
      check_matmul(x1, w1, ta, tb, DType::F32, 2e-5, name("expanded weight", 9, 16, 11, ta, tb), {},
                   [](const Tensor& t) {
                     return ops::expand(ops::unsqueeze(t, 0), {5, t.size(0), t.size(1)});
                   });
    }
}

TEST_CASE("cuda matmul: transposed, sliced and permuted views") {
  NoTf32 exact;
  Generator gen(103);
  // Transposed views of contiguous storage: read as transposed operands, not copied.
  Tensor a = cpu_randn({45, 30}, gen), b = cpu_randn({22, 45}, gen);
  auto tr = [](const Tensor& t) { return ops::transpose(t, -1, -2); };
  check_matmul(a, b, false, false, DType::F32, 2e-5, "transposed views", tr, tr);
  Tensor a2 = cpu_randn({30, 45}, gen), b2 = cpu_randn({45, 22}, gen);  // op(view) is the original
  check_matmul(a2, b2, true, true, DType::F32, 2e-5, "transposed views, trans flags", tr, tr);
  // Column slices: row stride larger than the row.
  Tensor c = cpu_randn({31, 50}, gen), d = cpu_randn({20, 70}, gen);
  check_matmul(
      c, d, false, false, DType::F32, 2e-5, "sliced", [](const Tensor& t) { return ops::narrow(t, 1, 3, 20); },
      [](const Tensor& t) { return ops::narrow(t, 1, 5, 40); });
  // Batch dims that do not collapse to one stride (heads split out of (B, T, H, dh)).
  Tensor q = cpu_randn({2, 13, 3, 8}, gen), k = cpu_randn({2, 13, 3, 8}, gen);
  auto heads = [](const Tensor& t) { return ops::permute(t, {0, 2, 1, 3}); };
  check_matmul(q, k, false, true, DType::F32, 2e-5, "permuted heads q k^T", heads, heads);
  check_matmul(q, k, true, false, DType::F32, 2e-5, "permuted heads q^T k", heads, heads);
  // A stride-0 row (an expanded vector) as A.
  Tensor v = cpu_randn({1, 24}, gen), w = cpu_randn({24, 9}, gen);
  check_matmul(v, w, false, false, DType::F32, 2e-5, "expanded rows", [](const Tensor& t) {
    return ops::expand(t, {6, 24});
  });
}

TEST_CASE("cuda matmul: TF32, bfloat16 and float64") {
  Generator gen(104);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = operand({70, 256}, ta, gen, {3}), b = operand({256, 90}, tb, gen, {3});
      check_matmul(a, b, ta, tb, DType::F32, 2e-3, name("tf32", 70, 256, 90, ta, tb));
      check_matmul(a, b, ta, tb, DType::BF16, 2e-2, name("bf16", 70, 256, 90, ta, tb));
      check_matmul(a, b, ta, tb, DType::F64, 1e-12, name("f64", 70, 256, 90, ta, tb));
      Tensor x = operand({33, 64}, ta, gen, {2, 5}), w = operand({64, 48}, tb, gen);
      check_matmul(x, w, ta, tb, DType::BF16, 2e-2, name("bf16 shared weight", 33, 64, 48, ta, tb));
    }
  // A larger square product.
  Tensor a = cpu_randn({512, 768}, gen), b = cpu_randn({768, 1024}, gen);
  check_matmul(a, b, false, false, DType::F32, 2e-3, "tf32 512x768x1024");
  check_matmul(a, b, false, true, DType::BF16, 2e-2, "bf16 512x768x1024", {},
               [](const Tensor& t) { return ops::transpose(t, 0, 1); });
}

TEST_CASE("cuda matmul: empty inner dimension gives zeros") {
  Tensor a = Tensor::empty({4, 0}).to(gpu()), b = Tensor::empty({0, 3}).to(gpu());
  Tensor c = host(ops::matmul(a, b));
  CHECK(c.shape() == Shape{4, 3});
  for (double v : c.to_vector<double>()) CHECK(v == 0.0);
}

// ---- linear ------------------------------------------------------------------------------

namespace {

using View = std::function<Tensor(const Tensor&)>;

// ops::linear and ops::linear_backward on both devices for float32 CPU values x (..., K),
// w (N, K) and b (N, or undefined); view_x/view_b (optional) turn x and b into the views fed
// to the op. The unfused CUDA composition (matmul + add: what ops::linear runs where cuBLASLt
// has no fused kernel) must match the CPU too. Returns whether the fused kernel ran.
bool check_linear(const Tensor& x, const Tensor& w, const Tensor& b, DType dtype, double tol, const std::string& what,
                  const View& view_x = {}, const View& view_b = {}) {
  const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  auto on_cpu = [&](const Tensor& t) { return t.defined() ? rounded(t, dtype).to(ref_t) : t; };
  auto on_gpu = [&](const Tensor& t) { return t.defined() ? t.to(dtype).to(gpu()) : t; };
  auto vx = [&](const Tensor& t) { return view_x ? view_x(t) : t; };
  auto vb = [&](const Tensor& t) { return view_b && t.defined() ? view_b(t) : t; };
  const Tensor xc = vx(on_cpu(x)), wc = on_cpu(w), bc = vb(on_cpu(b));
  const Tensor xg = vx(on_gpu(x)), wg = on_gpu(w), bg = vb(on_gpu(b));
  const Tensor ref = ops::linear(xc, wc, bc), out = ops::linear(xg, wg, bg);
  CHECK(out.dtype() == dtype);
  CHECK(out.is_cuda());
  check_near(out, ref, tol, what + " forward");
  const Tensor product = ops::matmul(xg, wg, false, true);
  check_near(b.defined() ? ops::add(product, bg) : product, ref, tol, what + " unfused forward");
  const bool fused = cuda::linear(xg, wg, bg).has_value();
  if (b.defined() && !fused) MESSAGE(what << ": no fused cuBLASLt kernel, matmul + add ran");

  Generator gen(uint64_t(ref.numel()) + 91);
  const Tensor g = cpu_randn(ref.shape(), gen);
  const auto gref = ops::linear_backward(on_cpu(g), xc, wc, b.defined());
  const auto gout = ops::linear_backward(on_gpu(g), xg, wg, b.defined());
  check_near(gout.dx, gref.dx, tol, what + " dx");
  check_near(gout.dweight, gref.dweight, tol, what + " dweight");
  CHECK(gout.dbias.defined() == b.defined());
  if (b.defined()) check_near(gout.dbias, gref.dbias, tol, what + " dbias");
  return fused;
}

struct LinearCase {
  Shape x;
  int64_t N;
};
// M = 1, odd M, N and K (not multiples of 8), a 3-D input, one output feature.
const std::vector<LinearCase> kLinearCases{{{1, 8}, 16},    {{1, 13}, 7},     {{37, 53}, 29}, {{3, 5, 24}, 40},
                                           {{2, 7, 13}, 9}, {{128, 256}, 64}, {{300, 96}, 1}};

std::string linear_name(const LinearCase& c, DType dtype, const char* extra = "") {
  std::string s = std::string("linear ") + dtype_name(dtype) + " x=[";
  for (size_t i = 0; i < c.x.size(); ++i) s += (i ? ", " : "") + std::to_string(c.x[i]);
  return s + "] N=" + std::to_string(c.N) + extra;
}

}  // namespace

TEST_CASE("cuda linear: fused bias vs CPU, float32 exact, awkward shapes, no bias") {
  NoTf32 exact;
  Generator gen(501);
  for (const LinearCase& c : kLinearCases) {
    Tensor x = cpu_randn(c.x, gen), w = cpu_randn({c.N, c.x.back()}, gen), b = cpu_randn({c.N}, gen);
    const bool fused = check_linear(x, w, b, DType::F32, 2e-5, linear_name(c, DType::F32));
    if (c.x == Shape{128, 256}) CHECK(fused);  // aligned and large: cuBLASLt has a fused kernel
    CHECK_FALSE(check_linear(x, w, Tensor{}, DType::F32, 2e-5, linear_name(c, DType::F32, " no bias")));
  }
}

TEST_CASE("cuda linear: strided, transposed and permuted inputs, an unaligned bias") {
  NoTf32 exact;
  Generator gen(502);
  Tensor w = cpu_randn({24, 20}, gen), b = cpu_randn({24}, gen);
  // Column slice: rows 50 apart, starting 3 elements in (an address aligned to 4 bytes only).
  check_linear(cpu_randn({31, 50}, gen), w, b, DType::F32, 2e-5, "linear sliced x",
               [](const Tensor& t) { return ops::narrow(t, 1, 3, 20); });
  // A transposed view has no unit column stride: copied first.
  check_linear(cpu_randn({20, 31}, gen), w, b, DType::F32, 2e-5, "linear transposed x",
               [](const Tensor& t) { return ops::transpose(t, 0, 1); });
  // Heads split out of (B, T, H, dh): the leading dims do not flatten to one row stride.
  Tensor w8 = cpu_randn({12, 8}, gen), b8 = cpu_randn({12}, gen);
  check_linear(cpu_randn({2, 13, 3, 8}, gen), w8, b8, DType::F32, 2e-5, "linear permuted x", [](const Tensor& t) {
    return ops::permute(t, {0, 2, 1, 3});
  });
  // The bias one element into a larger buffer.
  for (DType dtype : {DType::F32, DType::BF16})
    check_linear(cpu_randn({40, 20}, gen), w, cpu_randn({25}, gen), dtype, dtype == DType::BF16 ? 2e-2 : 2e-5,
                 std::string("linear offset bias ") + dtype_name(dtype), {},
                 [](const Tensor& t) { return ops::narrow(t, 0, 1, 24); });
}

TEST_CASE("cuda linear: TF32, bfloat16 and float64") {
  Generator gen(503);
  for (const LinearCase& c : kLinearCases) {
    Tensor x = cpu_randn(c.x, gen), w = cpu_randn({c.N, c.x.back()}, gen), b = cpu_randn({c.N}, gen);
    check_linear(x, w, b, DType::F32, 2e-3, linear_name(c, DType::F32, " tf32"));
    const bool fused = check_linear(x, w, b, DType::BF16, 2e-2, linear_name(c, DType::BF16));
    if (c.x == Shape{128, 256}) CHECK(fused);
    check_linear(x, w, b, DType::F64, 1e-12, linear_name(c, DType::F64));
    check_linear(x, w, Tensor{}, DType::BF16, 2e-2, linear_name(c, DType::BF16, " no bias"));
  }
  // A GPT-2-sized projection: (4 x 64) tokens of 768 features to 3 * 768.
  Tensor x = cpu_randn({4, 64, 768}, gen), w = cpu_randn({2304, 768}, gen, 0.05), b = cpu_randn({2304}, gen);
  CHECK(check_linear(x, w, b, DType::BF16, 2e-2, "linear bf16 4x64x768 -> 2304"));
  CHECK(check_linear(x, w, b, DType::F32, 2e-3, "linear tf32 4x64x768 -> 2304"));
}

// ---- layer_norm --------------------------------------------------------------------------

namespace {

// x: float32 CPU values; the GPU gets x in `dtype` and weights in `wdtype`.
void check_layer_norm(const Shape& shape, DType dtype, DType wdtype, Generator& gen, bool transposed = false) {
  const int64_t D = shape.back();
  const std::string what = std::string("layer_norm ") + dtype_name(dtype) + "/" + dtype_name(wdtype) +
                           " D=" + std::to_string(D) + " rows=" + std::to_string(numel(shape) / D);
  const double tol = dtype == DType::BF16 ? 2e-2 : dtype == DType::F64 ? 1e-12 : 2e-5;
  const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  Tensor x = ops::affine(cpu_randn(shape, gen, 2.0), 1.0, 0.5), dy = cpu_randn(shape, gen);
  Tensor w = ops::affine(cpu_randn({D}, gen, 0.5), 1.0, 1.0), b = cpu_randn({D}, gen, 0.3);
  auto view = [&](const Tensor& t) {  // a non-contiguous input with the same values
    if (!transposed) return t;
    return ops::transpose(ops::contiguous(ops::transpose(t, 0, 1)), 0, 1);
  };
  Tensor xc = rounded(x, dtype).to(ref_t), dyc = rounded(dy, dtype).to(ref_t);
  Tensor wc = rounded(w, wdtype).to(ref_t), bc = rounded(b, wdtype).to(ref_t);
  Tensor xg = view(x.to(dtype).to(gpu())), dyg = dy.to(dtype).to(gpu());
  Tensor wg = w.to(wdtype).to(gpu()), bg = b.to(wdtype).to(gpu());

  auto ref = ops::layer_norm(xc, wc, bc, 1e-5);
  auto out = ops::layer_norm(xg, wg, bg, 1e-5);
  CHECK(out.y.dtype() == dtype);
  CHECK(out.mean.dtype() == (dtype == DType::F64 ? DType::F64 : DType::F32));
  check_near(out.y, ref.y, tol, what + " y");
  check_near(out.mean, ref.mean, dtype == DType::F64 ? 1e-12 : 2e-5, what + " mean");
  check_near(out.rstd, ref.rstd, dtype == DType::F64 ? 1e-12 : 2e-5, what + " rstd");

  auto gref = ops::layer_norm_backward(dyc, xc, wc, ref.mean, ref.rstd);
  auto gout = ops::layer_norm_backward(dyg, xg, wg, out.mean, out.rstd);
  CHECK(gout.dx.dtype() == dtype);
  CHECK(gout.dweight.dtype() == wdtype);
  CHECK(gout.dbias.dtype() == wdtype);
  check_near(gout.dx, gref.dx, tol, what + " dx");
  // Parameter gradients are float sums over rows of values computed from the same inputs.
  const double ptol = wdtype == DType::BF16 ? 2e-2 : dtype == DType::F64 ? 1e-12 : dtype == DType::BF16 ? 1e-4 : 2e-5;
  check_near(gout.dweight, gref.dweight, ptol, what + " dweight");
  check_near(gout.dbias, gref.dbias, ptol, what + " dbias");
}

}  // namespace

TEST_CASE("cuda layer_norm: float32 forward and backward, awkward shapes") {
  Generator gen(201);
  for (const Shape& s : std::vector<Shape>{{1, 1}, {5, 37}, {2, 3, 64}, {7, 1000}, {2100, 96}, {3, 4096}, {4, 9000}})
    check_layer_norm(s, DType::F32, DType::F32, gen);
  check_layer_norm({6, 130}, DType::F32, DType::F32, gen, true);  // non-contiguous input
}

TEST_CASE("cuda layer_norm: bfloat16 input with float32 or bfloat16 weights, float64") {
  Generator gen(202);
  for (const Shape& s : std::vector<Shape>{{5, 37}, {4, 33, 768}, {1500, 128}}) {
    check_layer_norm(s, DType::BF16, DType::F32, gen);
    check_layer_norm(s, DType::BF16, DType::BF16, gen);
    check_layer_norm(s, DType::F64, DType::F64, gen);
  }
  // Mixed weight dtypes other than bfloat16 x with float32 weights are refused.
  Tensor x = Tensor::empty({2, 4}, {DType::F32, gpu()}), w = Tensor::empty({4}, {DType::BF16, gpu()});
  check_error([&] { ops::layer_norm(x, w, w, 1e-5); }, {"layer_norm", "dtype"});
}

// ---- cross_entropy -----------------------------------------------------------------------

namespace {

void check_cross_entropy(int64_t N, int64_t V, DType dtype, bool device_targets, Generator& gen,
                         double ignore_frac = 0.25) {
  const std::string what = std::string("cross_entropy ") + dtype_name(dtype) + " N=" + std::to_string(N) +
                           " V=" + std::to_string(V) + (device_targets ? " device targets" : " host targets");
  const double tol = dtype == DType::BF16 ? 2e-2 : dtype == DType::F64 ? 1e-12 : 2e-5;
  const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  const int64_t ignore = -100;
  Tensor logits = cpu_randn({N, V}, gen, 3.0);
  auto u = uniform({N}, 0.0, 1.0, gen, {DType::F64}).to_vector<double>();
  auto pick = uniform({N}, 0.0, double(V), gen, {DType::F64}).to_vector<double>();
  std::vector<int32_t> tv(static_cast<size_t>(N));
  int64_t count = 0;
  for (size_t r = 0; r < tv.size(); ++r) {
    tv[r] = u[r] < ignore_frac ? int32_t(ignore) : std::min<int32_t>(int32_t(pick[r]), int32_t(V - 1));
    count += tv[r] != ignore;
  }
  Tensor targets = from_vector<int32_t>(tv, {N}, {DType::I32});
  Tensor xc = rounded(logits, dtype).to(ref_t), xg = logits.to(dtype).to(gpu());
  Tensor tg = device_targets ? targets.to(gpu()) : targets;

  auto ref = ops::cross_entropy(xc, targets, ignore);
  auto out = ops::cross_entropy(xg, tg, ignore);
  CHECK(out.count == (device_targets ? -1 : count));
  CHECK(out.loss.dim() == 0);
  CHECK(out.loss.dtype() == ref_t);
  CHECK(out.lse.dtype() == ref_t);
  check_near(out.loss, ref.loss, dtype == DType::F64 ? 1e-12 : 2e-5, what + " loss");
  check_near(out.lse, ref.lse, dtype == DType::F64 ? 1e-12 : 2e-5, what + " lse");

  Tensor dloss = scalar(1.75, {ref_t});
  Tensor dref = ops::cross_entropy_backward(dloss, xc, targets, ref.lse, ignore, ref.count);
  Tensor dx = ops::cross_entropy_backward(dloss.to(gpu()), xg, tg, out.lse, ignore, out.count);
  CHECK(dx.dtype() == dtype);
  check_near(dx, dref, tol, what + " dlogits");
}

}  // namespace

TEST_CASE("cuda cross_entropy: float32, ignored rows, odd vocabularies, both target devices") {
  Generator gen(301);
  for (bool dev : {true, false}) {
    check_cross_entropy(1, 1, DType::F32, dev, gen, 0.0);
    check_cross_entropy(7, 257, DType::F32, dev, gen);
    check_cross_entropy(33, 1000, DType::F32, dev, gen);
    check_cross_entropy(64, 50304, DType::F32, dev, gen);
    check_cross_entropy(1100, 300, DType::F32, dev, gen);
  }
}

TEST_CASE("cuda cross_entropy: bfloat16 and float64") {
  Generator gen(302);
  check_cross_entropy(9, 257, DType::BF16, true, gen);
  check_cross_entropy(40, 50304, DType::BF16, true, gen);
  check_cross_entropy(9, 257, DType::F64, true, gen);
  check_cross_entropy(40, 5003, DType::F64, false, gen);
}

TEST_CASE("cuda cross_entropy: all rows ignored, invalid device target") {
  Generator gen(303);
  Tensor x = cpu_randn({6, 11}, gen).to(gpu());
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

// ---- rope --------------------------------------------------------------------------------

TEST_CASE("cuda rope: forward and inverse (the backward), awkward shapes and dtypes") {
  Generator gen(401);
  struct Case {
    Shape shape;
    int64_t pos;
    double base;
  };
  for (const Case& c : std::vector<Case>{{{1, 1, 1, 2}, 0, 10000.0},
                                         {{2, 3, 5, 8}, 7, 10000.0},
                                         {{3, 4, 17, 64}, 5, 500.0},
                                         {{2, 12, 257, 128}, 1000, 10000.0}})
    for (DType dtype : {DType::F32, DType::BF16, DType::F64})
      for (bool inverse : {false, true}) {
        const std::string what =
            std::string("rope ") + dtype_name(dtype) + " T=" + std::to_string(c.shape[2]) + (inverse ? " inverse" : "");
        const double tol = dtype == DType::BF16 ? 2e-2 : dtype == DType::F64 ? 1e-12 : 2e-5;
        const DType ref_t = dtype == DType::F64 ? DType::F64 : DType::F32;
        Tensor x = cpu_randn(c.shape, gen);
        Tensor ref = ops::rope(rounded(x, dtype).to(ref_t), c.pos, c.base, inverse);
        Tensor out = ops::rope(x.to(dtype).to(gpu()), c.pos, c.base, inverse);
        CHECK(out.dtype() == dtype);
        check_near(out, ref, tol, what);
      }
  // A non-contiguous input (heads split out of (B, T, H, dh)).
  Tensor x = cpu_randn({2, 9, 3, 16}, gen);
  auto heads = [](const Tensor& t) { return ops::permute(t, {0, 2, 1, 3}); };
  check_near(ops::rope(heads(x.to(gpu())), 3), ops::rope(heads(x), 3), 2e-5, "rope permuted");
}

}  // namespace sessa::test
