// The op table (see op_table.h) and the code that draws, places and runs an entry's inputs.
// Shapes: CPU cases (kCpu) stay tiny, since each is gradchecked in float64 and run in every
// layout; GPU cases (kGpu) hold the awkward sizes (1, odd, 63/65, not multiples of 8 or 32,
// larger than one block or one tile) and a few model-sized ones.
#include "tests/op_table.h"

#include <array>
#include <cmath>
#include <sstream>

#include "autograd/ops.h"
#include "nn/functional.h"
#include "nn/head_loss.h"
#include "nn/layers.h"
#include "nn/mamba_ops.h"
#include "sessa/feedback.h"
#include "sessa/gate.h"
#include "tensor/random.h"

namespace sessa::test {

namespace {

constexpr int64_t kAxisFromArg = -1000;  // InputSpec.axis: the case's arg is the axis

// ---- entries by family ------------------------------------------------------------------------

void add_elementwise(std::vector<OpEntry>& t) {
  // b stays away from 0 for div. CPU: same shapes, broadcasting either side; GPU: long rows,
  // odd sizes, 4-D broadcasting both ways.
  const std::vector<OpCase> cases{
      {{{3, 4}, {4}}},
      {{{3, 4}, {3, 1}}},
      {{{4, 1, 5}, {3, 1}}},
      {{{1}, {1}}},
      {{{3, 1}, {2, 3, 4}}},
      {{{17, 33}, {17, 33}}, 0, kGpu},
      {{{6, 129, 7}, {7}}, 0, kGpu},
      {{{7}, {6, 129, 7}}, 0, kGpu},
      {{{2, 3, 1, 5}, {3, 4, 1}}, 0, kGpu},
      {{{1031, 517}, {517}}, 0, kGpu},
      {{{1031}, {517, 1031}}, 0, kGpu},
      {{{517, 1031}, {517, 1}}, 0, kGpu},
      {{{64, 1031}, {64, 1031}}, 0, kGpu},  // one shape: mul's gradients in one pass (packs)
      {{{3, 5}, {1, 1}}},                   // one-element operands (gradchecked here; GPU entries below)
      {{{2, 3}, {}}},
  };
  const std::vector<InputSpec> in{normal_in(), uniform_in(0.5, 2.0)};
  t.push_back({"add", in, cases, [](auto& x, int64_t) { return add(x[0], x[1]); }});
  t.push_back({"sub", in, cases, [](auto& x, int64_t) { return sub(x[0], x[1]); }});
  t.push_back({"mul", in, cases, [](auto& x, int64_t) { return mul(x[0], x[1]); }});
  t.push_back({"div", in, cases, [](auto& x, int64_t) { return div(x[0], x[1]); }});
  // A 0-d operand beside a contiguous tensor runs as a dense map on the GPU (the loss's gradient
  // scaling a head's output), arg 1 with the 0-d operand first. The 0-d operand is a constant
  // here: its gradient is the sum of N zero-mean terms, whose bfloat16 rounding error (~ulp
  // sqrt(N)) against a value of ~sqrt(N) |z| is no relative test (1031 x 517: 7-10% of seeds
  // exceed 2e-2); the CPU cases above gradcheck it, the reduction entries cover the sum.
  const std::vector<OpCase> scalar_cases{
      {{{2, 3}, {}}, 0, kCpu}, {{{2, 3}, {}}, 1, kCpu}, {{{1031, 517}, {}}, 0, kGpu}, {{{6, 129, 7}, {}}, 1, kGpu}};
  const std::vector<InputSpec> scalar_in{uniform_in(0.5, 2.0), const_in(normal_in())};
  using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);
  for (const auto& op : {std::pair<const char*, BinaryFn>{"add", add}, {"sub", sub}, {"mul", mul}, {"div", div}}) {
    const BinaryFn fn = op.second;  // (clang 14, the sanitizer build, cannot capture a structured binding)
    t.push_back({std::string(op.first) + " by a 0-d constant", scalar_in, scalar_cases,
                 [fn](auto& x, int64_t first) { return first ? fn(x[1], x[0]) : fn(x[0], x[1]); }});
  }
  t.push_back({"affine",
               {normal_in()},
               {{{{5, 3}}}, {{{1}}}, {{{17, 33}}, 0, kGpu}, {{{1031, 517}}, 0, kGpu}},
               [](auto& x, int64_t) { return affine(x[0], -1.5, 0.25); }});
  // Every unary op. Wide values so softplus crosses its threshold of 20 and the saturating ops saturate.
  for (int k = 0; k <= int(ops::Unary::Softplus); ++k) {
    const auto op = ops::Unary(k);
    const bool positive = op == ops::Unary::Log || op == ops::Unary::Sqrt;
    const InputSpec x = positive ? uniform_in(0.05, 4.0) : normal_in(op == ops::Unary::Exp ? 2.0 : 8.0);
    t.push_back({ops::unary_name(op),
                 {x},
                 {{{{5, 3}}}, {{{1}}}, {{{7, 13}}, 0, kGpu}, {{{3, 1001}}, 0, kGpu}, {{{257, 1029}}, 0, kGpu}},
                 [op](auto& in, int64_t) { return sessa::unary(op, in[0]); }});
  }
}

// arg: a bit per reduced dim (bits 0-7), bit 8 = keepdim.
std::vector<int64_t> dims_of(int64_t arg) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < 8; ++d)
    if (arg & (int64_t(1) << d)) dims.push_back(d);
  return dims;
}
constexpr int64_t kKeep = 256;

void add_reductions(std::vector<OpEntry>& t) {
  const std::vector<OpCase> cases{
      {{{2, 3, 4}}, 0b010},
      {{{2, 3, 4}}, 0b101 | kKeep},
      {{{5, 7}}, 0b01},
      {{{1, 1}}, 0b11},
      {{{5, 7}}, 0b10, kGpu},
      {{{3, 4, 5}}, 0b010 | kKeep, kGpu},
      {{{3, 4, 5}}, 0b011, kGpu},
      {{{3, 4, 5}}, 0b101, kGpu},
      {{{3, 4, 5}}, 0b111, kGpu},
      {{{3, 1, 4, 5}}, 0b0101 | kKeep, kGpu},
      {{{4099, 77}}, 0b01, kGpu},
      {{{300001}}, 0b1, kGpu},
      {{{2, 4099, 33}}, 0b010, kGpu},
      {{{4099, 264}}, 0b01, kGpu},     // 16-byte column packs, chunks, a ragged last column group
      {{{3, 2500, 16}}, 0b010, kGpu},  // packs, chunks, three slabs
      {{{64, 2048}}, 0b10, kGpu},
      {{{6, 5, 4}}, 0, kGpu},  // no dims
  };
  t.push_back({"sum", {normal_in()}, cases, [](auto& x, int64_t a) { return sum(x[0], dims_of(a), a & kKeep); }});
  t.push_back({"mean", {normal_in()}, cases, [](auto& x, int64_t a) { return mean(x[0], dims_of(a), a & kKeep); }});
  t.push_back({"sum (empty dim)",
               {normal_in()},
               {{{{3, 0, 4}}, 0b010}},
               [](auto& x, int64_t a) { return sum(x[0], dims_of(a), a & kKeep); },
               {},
               kCuda | kBf16 | kStrided});
  t.push_back(
      {"sum_all", {normal_in()}, {{{{2, 3, 4}}}, {{{4, 3, 5}}, 0, kGpu}, {{{1000003}}, 0, kGpu}}, [](auto& x, int64_t) {
         return sum_all(x[0]);
       }});
}

void add_softmax(std::vector<OpEntry>& t) {
  const std::vector<OpCase> cases{{{{2, 3, 4}}},
                                  {{{1, 1}}},
                                  {{{5, 7}}, 0, kGpu},
                                  {{{1, 129}}, 0, kGpu},
                                  {{{3, 4, 1000}}, 0, kGpu},
                                  {{{3, 33001}}, 0, kGpu},
                                  {{{2049, 64}}, 0, kGpu}};
  t.push_back({"softmax", {normal_in(3.0)}, cases, [](auto& x, int64_t) { return softmax(x[0]); }});
  t.push_back({"log_softmax", {normal_in(3.0)}, cases, [](auto& x, int64_t) { return log_softmax(x[0]); }});
  // Rows starting with 3 -inf entries (masked logits). log_softmax is -inf there: compare the finite part.
  const std::vector<OpCase> masked{{{{2, 5}}},
                                   {{{5, 7}}, 0, kGpu},
                                   {{{1, 129}}, 0, kGpu},
                                   {{{3, 4, 1000}}, 0, kGpu},
                                   {{{3, 33001}}, 0, kGpu},
                                   {{{2049, 64}}, 0, kGpu}};
  t.push_back({"softmax (masked)", {masked_in(3.0)}, masked, [](auto& x, int64_t) { return softmax(x[0]); }});
  t.push_back({"log_softmax (masked)", {masked_in(3.0)}, masked, [](auto& x, int64_t) {
                 return narrow(log_softmax(x[0]), -1, 3, x[0].size(-1) - 3);
               }});
}

// matmul cases: arg bit 0 = trans_a, bit 1 = trans_b; a and b are stored as op() expects.
OpCase mm(int64_t M, int64_t K, int64_t N, int64_t arg, Shape batch_a, Shape batch_b, unsigned where) {
  const bool ta = arg & 1, tb = arg & 2;
  Shape a = batch_a, b = batch_b;
  a.push_back(ta ? K : M), a.push_back(ta ? M : K);
  b.push_back(tb ? N : K), b.push_back(tb ? K : N);
  return {{a, b}, arg, where};
}

void add_matmul(std::vector<OpEntry>& t) {
  std::vector<OpCase> cases;
  for (int64_t arg = 0; arg < 4; ++arg) {
    cases.push_back(mm(5, 3, 4, arg, {}, {}, kBoth));
    cases.push_back(mm(5, 3, 4, arg, {2}, {2}, kBoth));  // batched
    cases.push_back(mm(5, 3, 4, arg, {2}, {}, kBoth));   // a batch against a shared weight
    for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{
             {1, 1, 1}, {37, 53, 29}, {128, 64, 96}, {1, 300, 7}, {200, 1, 3}, {70, 256, 90}})
      cases.push_back(mm(M, K, N, arg, {}, {}, kGpu));
    cases.push_back(mm(19, 33, 21, arg, {3, 5}, {3, 5}, kGpu));
    cases.push_back(mm(17, 40, 24, arg, {4, 3}, {}, kGpu));
    cases.push_back(mm(70, 256, 90, arg, {3}, {3}, kGpu));
    cases.push_back(mm(33, 64, 48, arg, {2, 5}, {}, kGpu));
  }
  cases.push_back(mm(13, 8, 13, 2, {2, 3}, {2, 3}, kGpu));  // q k^T per head (permuted in the Transposed layout)
  cases.push_back(mm(8, 13, 8, 1, {2, 3}, {2, 3}, kGpu));   // q^T k per head
  cases.push_back(mm(512, 768, 1024, 0, {}, {}, kGpu));
  cases.push_back(mm(512, 768, 1024, 2, {}, {}, kGpu));
  t.push_back({"matmul",
               {normal_in(), normal_in()},
               cases,
               [](auto& x, int64_t a) { return matmul(x[0], x[1], a & 1, a & 2); },
               {},
               kDefault | kTf32});
}

void add_linear(std::vector<OpEntry>& t) {
  // x (..., K), w (N, K), b (N). M = 1, odd M, N and K (not multiples of 8), 3-D x, N = 1, a GPT-2 projection.
  std::vector<OpCase> cases{{{{3, 4}, {5, 4}, {5}}}, {{{2, 3, 4}, {5, 4}, {5}}}};
  for (auto [x, N] : std::vector<std::pair<Shape, int64_t>>{{{1, 8}, 16},
                                                            {{1, 13}, 7},
                                                            {{37, 53}, 29},
                                                            {{3, 5, 24}, 40},
                                                            {{2, 7, 13}, 9},
                                                            {{128, 256}, 64},
                                                            {{300, 96}, 1},
                                                            {{2, 13, 3, 8}, 12},
                                                            {{4, 64, 768}, 2304}})
    cases.push_back({{x, {N, x.back()}, {N}}, 0, kGpu});
  // The unfused composition (what runs where cuBLASLt has no fused kernel) must agree too.
  t.push_back(
      {"linear",
       {normal_in(), normal_in(0.2), normal_in()},
       cases,
       [](auto& x, int64_t) { return linear(x[0], x[1], x[2]); },
       [](auto& x, int64_t) { return std::vector<Tensor>{ops::add(ops::matmul(x[0], x[1], false, true), x[2])}; },
       kDefault | kTf32});
  std::vector<OpCase> no_bias;
  for (const OpCase& c : cases) no_bias.push_back({{c.shapes[0], c.shapes[1]}, 0, c.where});
  t.push_back({"linear (no bias)",
               {normal_in(), normal_in(0.2)},
               no_bias,
               [](auto& x, int64_t) { return linear(x[0], x[1], Tensor{}); },
               [](auto& x, int64_t) { return std::vector<Tensor>{ops::matmul(x[0], x[1], false, true)}; },
               kDefault | kTf32});
  // y = r + x W^T (+ b): a residual r (..., N) read as the GEMM's C (beta = 1) on CUDA, with the
  // bias epilogue (a Transformer's out-projections) and without (Sessa's and Mamba's).
  std::vector<OpCase> residual, residual_no_bias;
  for (const OpCase& c : cases) {
    Shape r = c.shapes[0];
    r.back() = c.shapes[1][0];
    residual.push_back({{c.shapes[0], c.shapes[1], c.shapes[2], r}, 0, c.where});
    residual_no_bias.push_back({{c.shapes[0], c.shapes[1], r}, 0, c.where});
  }
  t.push_back({"linear (residual)",
               {normal_in(), normal_in(0.2), normal_in(), normal_in()},
               residual,
               [](auto& x, int64_t) { return linear(x[0], x[1], x[2], x[3]); },
               [](auto& x, int64_t) {
                 return std::vector<Tensor>{ops::add(x[3], ops::add(ops::matmul(x[0], x[1], false, true), x[2]))};
               },
               kDefault | kTf32});
  t.push_back(
      {"linear (residual, no bias)",
       {normal_in(), normal_in(0.2), normal_in()},
       residual_no_bias,
       [](auto& x, int64_t) { return linear(x[0], x[1], Tensor{}, x[2]); },
       [](auto& x, int64_t) { return std::vector<Tensor>{ops::add(x[2], ops::matmul(x[0], x[1], false, true))}; },
       kDefault | kTf32});
}

void add_rowops(std::vector<OpEntry>& t) {
  // LayerNorm: x ~ N(0.5, 2), weight ~ N(1, 0.5), bias ~ N(0, 0.3); mean and rstd compared too.
  std::vector<OpCase> ln{{{{2, 3, 4}, {4}, {4}}}, {{{1, 5}, {5}, {5}}}};
  for (const Shape& s : std::vector<Shape>{{1, 1},
                                           {5, 37},
                                           {2, 3, 64},
                                           {7, 1000},
                                           {2100, 96},
                                           {3, 4096},
                                           {4, 9000},
                                           {4, 33, 768},
                                           {1500, 128},
                                           {6, 130}})
    ln.push_back({{s, {s.back()}, {s.back()}}, 0, kGpu});
  auto ln_call = [](auto& x, int64_t) { return nn::layer_norm(x[0], x[1], x[2], 1e-5); };
  auto ln_raw = [](auto& x, int64_t) {
    auto r = ops::layer_norm(x[0], x[1], x[2], 1e-5);
    return std::vector<Tensor>{r.mean, r.rstd};
  };
  const InputSpec lx{Fill::Normal, 2.0, 0.5}, lw{Fill::Normal, 0.5, 1.0}, lb = normal_in(0.3);
  t.push_back({"layer_norm", {lx, lw, lb}, ln, ln_call, ln_raw, kDefault | kRawF32});
  // bfloat16 activations with float32 weights (the mixed-precision model layout).
  OpEntry mixed{"layer_norm (float32 weights)", {lx, f32_in(lw), f32_in(lb)}, ln, ln_call, ln_raw,
                kCuda | kBf16 | kRawF32};
  mixed.grad_tol.raw_bf16 = 1e-4;  // dweight, dbias: float32 sums over rows of bfloat16-rounded values
  t.push_back(mixed);

  // Cross-entropy: a quarter of the targets ignored (-100); odd vocabularies; GPT-2's 50304.
  std::vector<OpCase> ce{{{{6, 5}, {6}}}, {{{2, 3, 8}, {2, 3}}}};
  for (auto [N, V] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {7, 257}, {33, 1000}, {64, 50304}, {1100, 300}, {9, 257}, {40, 50304}, {40, 5003}})
    ce.push_back({{{N, V}, {N}}, 0, kGpu});
  OpEntry xent{"cross_entropy",
               {normal_in(3.0), ids_in(0, -1, 0.25)},
               ce,
               [](auto& x, int64_t) { return nn::cross_entropy(x[0], x[1], -100); },
               [](auto& x, int64_t) {
                 const Tensor rows = ops::reshape(x[0], {-1, x[0].size(-1)}), targets = ops::reshape(x[1], {-1});
                 return std::vector<Tensor>{ops::cross_entropy(rows, targets, -100).lse};
               },
               kDefault | kHostIndex | kOutF32 | kRawF32};
  t.push_back(xent);

  // The LM head fused with the cross-entropy (nn/head_loss.h): h (..., D), weight (V, D), targets
  // with h's leading shape; arg = rows per chunk. Chunks that split N unevenly, chunks of one row
  // (some wholly ignored), one chunk larger than N; on the GPU up to a vocabulary of 50304. The
  // weight stays float32 beside bfloat16 h (the LM's master weights); the loss is float32.
  auto head = [](Shape h, int64_t V, int64_t chunk, unsigned where) {
    Shape rows(h.begin(), h.end() - 1);
    return OpCase{{h, {V, h.back()}, rows}, chunk, where};
  };
  OpEntry fused{
      "head_cross_entropy",
      {normal_in(), f32_in(normal_in(0.5)), ids_in(1, 0, 0.3)},
      {head({5, 4}, 7, 2, kCpu), head({2, 3, 4}, 6, 4, kCpu), head({4, 3}, 5, 1, kCpu), head({3, 4}, 5, 8, kCpu),
       head({1, 8}, 1, 1, kGpu), head({37, 64}, 257, 16, kGpu), head({130, 33}, 70, 1000, kGpu),
       head({2, 65, 64}, 5003, 64, kGpu), head({300, 96}, 1000, 7, kGpu), head({1000, 128}, 50304, 384, kGpu)},
      [](auto& x, int64_t chunk) { return nn::head_cross_entropy(x[0], x[1], x[2], -100, chunk); },
      {},
      kDefault | kHostIndex | kOutF32};
  fused.tol.raw_bf16 = 2e-2;  // the loss from bfloat16 logits against float32 ones
  fused.grad_tol.bf16 = fused.grad_tol.raw_bf16 = 3e-2;
  t.push_back(fused);

  // RoPE at position offset arg (the backward is the inverse rotation).
  std::vector<OpCase> rope{{{{1, 2, 3, 6}}, 2},
                           {{{2, 3, 5, 8}}, 7},
                           {{{1, 1, 1, 2}}, 0, kGpu},
                           {{{3, 4, 17, 64}}, 5, kGpu},
                           {{{2, 12, 257, 128}}, 1000, kGpu},
                           {{{2, 3, 9, 16}}, 3, kGpu}};
  t.push_back({"rope", {normal_in()}, rope, [](auto& x, int64_t pos) { return nn::rope(x[0], pos); }});
  t.push_back({"rope (base 50)", {normal_in()}, rope, [](auto& x, int64_t pos) { return nn::rope(x[0], pos, 50.0); }});
}

void add_indexing(std::vector<OpEntry>& t) {
  // index_select over dim arg (dim 0 = embedding lookup); the backward is index_add. The
  // forward is a copy: exact. {11, 96} with 4096 ids: many repeats of few ids (a long batch).
  std::vector<OpCase> cases{{{{3, 4}, {2, 2}}, 0}, {{{2, 5, 3}, {4}}, 1}, {{{2, 3, 5}, {3}}, 2}};
  for (int64_t C : {1, 13, 16, 771}) {
    cases.push_back({{{37, C}, {3, 3}}, 0, kGpu});
    cases.push_back({{{2, 37, C}, {9}}, 1, kGpu});
    cases.push_back({{{2, 37, C}, {3}}, 2, kGpu});
  }
  cases.push_back({{{11, 96}, {4096}}, 0, kGpu});
  OpEntry e{"index_select",
            {normal_in(), ids_in(0, kAxisFromArg)},
            cases,
            [](auto& x, int64_t dim) { return index_select(x[0], dim, x[1]); },
            {},
            kDefault | kHostIndex};
  e.tol = {0, 0, 0, 0};
  t.push_back(e);
  t.push_back({"cat",
               {normal_in(), normal_in(), normal_in()},
               {{{{2, 3, 4}, {2, 2, 4}, {2, 1, 4}}, 1},
                {{{1, 3}, {2, 3}, {1, 3}}, 0},
                {{{3, 5, 4}, {3, 2, 4}, {3, 7, 4}}, 1, kGpu},
                {{{3, 5, 40}, {3, 5, 2}, {3, 5, 1}}, 2, kGpu}},
               [](auto& x, int64_t dim) {
                 return cat({x[0], x[1], x[2]}, dim);
               }});
}

void add_views(std::vector<OpEntry>& t) {
  const std::vector<OpCase> c{{{{2, 3, 4}}}, {{{4, 6, 8}}, 0, kGpu}};
  t.push_back({"reshape", {normal_in()}, c, [](auto& x, int64_t) { return reshape(x[0], {x[0].size(0) * 3, -1}); }});
  t.push_back({"permute", {normal_in()}, c, [](auto& x, int64_t) { return permute(x[0], {2, 0, 1}); }});
  t.push_back({"narrow", {normal_in()}, c, [](auto& x, int64_t) { return narrow(x[0], 1, 1, 2); }});
  t.push_back({"expand", {normal_in()}, c, [](auto& x, int64_t) {
                 return expand(narrow(x[0], 1, 0, 1), {x[0].size(0), 5, x[0].size(2)});
               }});
  t.push_back({"split", {normal_in()}, c, [](auto& x, int64_t) {
                 auto parts = split(x[0], 2, {1, x[0].size(2) - 1});
                 return mul(parts[0], narrow(parts[1], 2, 0, 1));
               }});
}

void add_attention(std::vector<OpEntry>& t) {
  // q (B, H, Tq, dh), k, v (B, Hkv, Tk, dh); arg = q_offset; scale 1/sqrt(dh).
  auto c = [](int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t dh, int64_t off, unsigned where) {
    return OpCase{{{B, H, Tq, dh}, {B, Hkv, Tk, dh}, {B, Hkv, Tk, dh}}, off, where};
  };
  const std::vector<OpCase> cases{
      c(2, 2, 2, 5, 5, 3, 0, kCpu),         // MHA
      c(1, 4, 2, 4, 4, 3, 0, kCpu),         // GQA
      c(2, 3, 1, 4, 4, 2, 0, kCpu),         // MQA
      c(1, 4, 2, 3, 5, 3, 2, kCpu),         // queries at the end of a cache
      c(1, 2, 2, 3, 6, 3, 1, kCpu),         // keys past the last query get zero gradients
      c(1, 2, 1, 70, 70, 2, 0, kCpu),       // two key blocks
      c(2, 3, 3, 70, 70, 64, 0, kGpu),      // MHA, T not a multiple of 64
      c(1, 4, 2, 200, 200, 64, 0, kGpu),    // GQA 4/2
      c(3, 4, 1, 70, 70, 16, 0, kGpu),      // GQA 4/1, dh 16, odd batch
      c(2, 4, 2, 1, 37, 64, 36, kGpu),      // decoding: one query against a cache
      c(1, 2, 1, 5, 100, 32, 95, kGpu),     // a few queries at the end of the cache
      c(1, 2, 2, 40, 100, 64, 30, kGpu),    // queries in the middle: later keys get zero gradients
      c(1, 1, 1, 1, 1, 64, 0, kGpu),        // T = 1
      c(1, 2, 1, 130, 130, 128, 0, kGpu),   // dh 128
      c(2, 2, 2, 33, 33, 20, 0, kGpu),      // dh not a multiple of 8
      c(1, 3, 1, 50, 50, 6, 0, kGpu),       // dh not a multiple of 4: dq summed in a padded layout
      c(1, 2, 2, 40, 70, 17, 30, kGpu),     // odd dh
      c(2, 12, 12, 300, 300, 64, 0, kGpu),  // larger; the backward launches 24 kv heads in two groups
      c(1, 2, 1, 3, 90, 128, 87, kGpu),
      c(1, 12, 4, 63, 63, 64, 0, kGpu),       // GQA 12/4, T = 63
      c(2, 12, 1, 65, 65, 128, 0, kGpu),      // GQA 12/1, T = 65, dh 128
      c(1, 12, 4, 1000, 1000, 128, 0, kGpu),  // T = 1000
      c(1, 4, 2, 1000, 1000, 64, 0, kGpu),
      c(1, 2, 2, 130, 300, 64, 170, kGpu),     // queries at the end of a cache, offset inside a tile
      c(1, 6, 2, 200, 333, 96, 133, kGpu),     // GQA 6/2, dh 96, 3 key blocks of 128 (the last partial)
      c(1, 2, 2, 40, 500, 64, 30, kGpu),       // key blocks after every query: no steps, zero dk, dv
      c(4, 48, 12, 200, 200, 64, 0, kGpu),     // 384 query tiles, more than SMs: the persistent
      c(2, 100, 25, 130, 150, 128, 20, kGpu),  // forward's blocks take several (400 at dh 128)
  };
  OpEntry e{
      "attention",
      {normal_in(), normal_in(), normal_in()},
      cases,
      [](auto& x, int64_t off) {
        return nn::causal_attention(x[0], x[1], x[2], off, 1.0 / std::sqrt(double(x[0].size(-1))));
      },
      [](auto& x, int64_t off) {
        return std::vector<Tensor>{ops::attention(x[0], x[1], x[2], off, 1.0 / std::sqrt(double(x[0].size(-1)))).lse};
      },
      kDefault | kRef64 | kRawF32};
  e.tol.raw_bf16 = 2e-2;
  e.grad_tol.bf16 = 3e-2;
  t.push_back(e);

  // RoPE inside the node (nn/attention.cpp's training forward): q, k rotated first, their
  // gradients rotated back by the attention backward (on CUDA bf16, in its epilogues). Every
  // case with an even head dim; base 500 so that the rotation varies across short rows.
  std::vector<OpCase> even;
  for (const OpCase& oc : cases)
    if (oc.shapes[0][3] % 2 == 0) even.push_back(oc);
  OpEntry r{"attention (rope inside)",
            {normal_in(), normal_in(), normal_in()},
            even,
            [](auto& x, int64_t off) {
              return nn::causal_attention(x[0], x[1], x[2], off, 1.0 / std::sqrt(double(x[0].size(-1))), 500.0);
            },
            {},
            kDefault | kRef64};
  r.grad_tol.bf16 = 3e-2;
  t.push_back(r);
}

void add_feedback(std::vector<OpEntry>& t) {
  // q, k, f (B, T, D); gamma (B, T) near gamma_max. Compared with the float64 CPU solve; with
  // TF32 products (or bfloat16 inputs) within 3e-2.
  std::vector<OpCase> cases;
  auto c = [](int64_t B, int64_t T, int64_t D, unsigned where) {
    return OpCase{{{B, T, D}, {B, T, D}, {B, T}, {B, T, D}}, 0, where};
  };
  for (int64_t T : {1, 2, 9}) cases.push_back(c(2, T, 3, kCpu));
  cases.push_back(c(1, 64, 4, kCpu));
  cases.push_back(c(1, 130, 4, kCpu));
  // GPU: T around the 64-row solve block, T = 1000 across several panels when the panel size
  // is forced small (tests/cuda/test_ops.cpp), and T = 4097: 65 blocks, the last of one row.
  const std::vector<std::array<int64_t, 3>> gpu{{1, 1, 8},    {2, 5, 8},     {1, 63, 16},   {2, 64, 33},
                                                {1, 65, 16},  {3, 130, 70},  {2, 200, 40},  {1, 300, 96},
                                                {2, 130, 24}, {1, 1000, 16}, {2, 1000, 40}, {1, 4097, 16}};
  for (auto [B, T, D] : gpu) cases.push_back(c(B, T, D, kGpu));
  OpEntry e{"feedback_solve",
            {normal_in(), normal_in(), uniform_in(0.989, 0.999), normal_in()},
            cases,
            [](auto& x, int64_t) { return layer::feedback_solve(x[0], x[1], x[2], x[3]); },
            [](auto& x, int64_t) {
              auto r = layer::feedback_solve_forward(x[0], x[1], x[2], x[3]);
              return std::vector<Tensor>{r.lse, r.ctx};  // what the backward keeps, besides s
            },
            kDefault | kRef64 | kTf32 | kRawF32};
  e.tol = {1e-4, 3e-2, 1e-12, 3e-2, 3e-2};
  // bf16 gradients within 6e-2: dlogits is rounded to bf16 as flash attention rounds dS, and
  // dq_t = sum_s dlogits[t,s] k_s / sqrt(D) sums terms whose row adds up to about zero (the
  // softmax), so their 2^-9 rounding shows at ~5% of max |dq| at T = 1000 with gamma near 1
  // (measured 0.046 on the H200; TF32 dlogits gave < 0.03). docs/sessa.md, step S8'.
  e.grad_tol = {3e-4, 6e-2, 1e-11, 3e-2, 3e-2};
  e.gradcheck.max_checks_per_input = 40;
  t.push_back(e);
  // The gate (S4): gamma = gamma_max tanh(z + b), z (B, T), b 0-d (float32 beside bfloat16 z,
  // as the model keeps it); z wide enough that tanh saturates for some elements.
  OpEntry gate{"gate (S4)",
               {normal_in(2.0), f32_in(normal_in())},
               {{{{2, 5}, {}}}, {{{1, 1}, {}}}, {{{3, 700}, {}}, 0, kGpu}, {{{16, 1024}, {}}, 0, kGpu}},
               [](auto& x, int64_t) { return layer::gate(x[0], x[1], 0.999); },
               {},
               kDefault | kDeterministic};
  gate.grad_tol.f32 = gate.grad_tol.raw_bf16 = 1e-4;  // db: a float32 sum over up to 16384 terms
  t.push_back(gate);
  // gamma near 0.5: the other regime of the solve, on the CPU.
  OpEntry half{"feedback_solve (gamma near 0.5)",
               {normal_in(), normal_in(), uniform_in(0.49, 0.5), normal_in()},
               {c(2, 1, 3, kCpu), c(2, 2, 3, kCpu), c(2, 9, 3, kCpu)},
               e.call,
               e.raw,
               kGradcheck | kStrided | kBroadcast};
  t.push_back(half);
  // gamma near 0: the solve is nearly s = f, the softmax gradient nearly vanishes.
  std::vector<OpCase> small;
  for (int64_t T : {1, 63, 64, 65}) small.push_back(c(1, T, 4, kBoth));
  for (int64_t T : {1000, 4097}) small.push_back(c(1, T, 16, kGpu));
  OpEntry zero{"feedback_solve (gamma near 0)",
               {normal_in(), normal_in(), uniform_in(0.0, 0.01), normal_in()},
               small,
               e.call,
               e.raw,
               e.flags};
  zero.tol = e.tol;
  zero.grad_tol = e.grad_tol;
  zero.gradcheck.max_checks_per_input = 40;
  t.push_back(zero);
}

void add_mamba(std::vector<OpEntry>& t) {
  // causal_conv1d: x (B, T, C), w (C, K), bias (C). T < K, K = 1, K + 1 > 8 taps, long T.
  std::vector<OpCase> conv{{{{2, 1, 3}, {3, 4}, {3}}}, {{{2, 5, 3}, {3, 4}, {3}}}};
  for (auto [B, T, C, K] : std::vector<std::array<int64_t, 4>>{{3, 7, 37, 4},
                                                               {1, 1, 5, 4},
                                                               {5, 2, 3, 4},
                                                               {3, 7, 37, 1},
                                                               {2, 33, 19, 9},
                                                               {2, 300, 70, 4},
                                                               {4, 512, 200, 4},
                                                               {1, 1, 37, 4},
                                                               {2, 65, 33, 1}})
    conv.push_back({{{B, T, C}, {C, K}, {C}}, 0, kGpu});
  OpEntry ce{"causal_conv1d",
             {normal_in(), normal_in(0.5), normal_in()},
             conv,
             [](auto& x, int64_t) { return nn::causal_conv1d(x[0], x[1], x[2]); },
             {},
             kDefault | kDeterministic};
  ce.tol = ce.grad_tol = {2e-5, 3e-2, 1e-10};
  t.push_back(ce);

  // selective_scan: u (B, T, Di), delta (B, T, Di) ~ softplus outputs, A (Di, N) = -exp(.),
  // Bm, Cm (B, T, N), D (Di). State sizes padded by the kernel (1, 4, 5, 16, 32, 64), long scans.
  auto c = [](int64_t B, int64_t T, int64_t Di, int64_t N, unsigned where) {
    return OpCase{{{B, T, Di}, {B, T, Di}, {Di, N}, {B, T, N}, {B, T, N}, {Di}}, 0, where};
  };
  std::vector<OpCase> scan{c(2, 6, 3, 4, kCpu), c(1, 1, 2, 3, kCpu)};
  for (auto [B, T, Di, N] : std::vector<std::array<int64_t, 4>>{{3, 1, 37, 16},
                                                                {3, 7, 37, 16},
                                                                {2, 300, 70, 16},
                                                                {3, 300, 45, 4},
                                                                {3, 7, 37, 5},
                                                                {1, 20, 33, 1},
                                                                {2, 50, 40, 32},
                                                                {2, 40, 33, 64},
                                                                {2, 1000, 256, 16},
                                                                {3, 33, 37, 16},
                                                                {2, 20, 35, 5}})
    scan.push_back(c(B, T, Di, N, kGpu));
  const std::vector<InputSpec> scan_in{normal_in(), uniform_in(0.01, 1.0), uniform_in(-4.0, -0.1),
                                       normal_in(), normal_in(),           normal_in()};
  OpEntry se{"selective_scan",
             scan_in,
             scan,
             [](auto& x, int64_t) { return nn::selective_scan(x[0], x[1], x[2], x[3], x[4], x[5]); },
             {},
             kDefault | kDeterministic};
  se.tol = se.grad_tol = {2e-5, 3e-2, 1e-10};
  t.push_back(se);
  // Through softplus / -exp, as the mixer calls it.
  t.push_back({"selective_scan (softplus, -exp)",
               {normal_in(), normal_in(), normal_in(0.5), normal_in(), normal_in(), normal_in()},
               {c(2, 6, 3, 4, kCpu)},
               [](auto& x, int64_t) { return nn::selective_scan(x[0], softplus(x[1]), -exp(x[2]), x[3], x[4], x[5]); },
               {},
               kGradcheck});
  // delta = softplus(dt) inside the node (the mixer's call): dt's gradient from the scan's
  // backward, ungated and gated by SiLU(z) (input 6).
  std::vector<OpCase> sp_cases{c(2, 6, 3, 4, kCpu)}, sp_gated;
  for (auto [B, T, Di, N] : std::vector<std::array<int64_t, 4>>{{3, 1, 37, 16}, {2, 300, 70, 16}, {2, 65, 40, 32}})
    sp_cases.push_back(c(B, T, Di, N, kGpu));
  for (OpCase oc : sp_cases) {
    oc.shapes.push_back(oc.shapes[0]);
    sp_gated.push_back(oc);
  }
  const std::vector<InputSpec> sp_in{normal_in(), normal_in(), uniform_in(-4.0, -0.1),
                                     normal_in(), normal_in(), normal_in()};
  std::vector<InputSpec> sp_gated_in = sp_in;
  sp_gated_in.push_back(normal_in());
  OpEntry ss{"selective_scan (softplus of dt)",
             sp_in,
             sp_cases,
             [](auto& x, int64_t) { return nn::selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], {}, true); },
             {},
             kDefault | kDeterministic};
  ss.tol = ss.grad_tol = {2e-5, 3e-2, 1e-10};
  t.push_back(ss);
  OpEntry sg{"selective_scan (softplus of dt, gated)",
             sp_gated_in,
             sp_gated,
             [](auto& x, int64_t) { return nn::selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], true); },
             {},
             kDefault | kDeterministic};
  sg.tol = sg.grad_tol = {2e-5, 3e-2, 1e-10};
  t.push_back(sg);
}

struct Family {
  const char* name;
  void (*add)(std::vector<OpEntry>&);
};
const Family kFamilies[] = {
    {"elementwise", add_elementwise}, {"reductions", add_reductions}, {"softmax", add_softmax},
    {"matmul", add_matmul},           {"linear", add_linear},         {"rowops", add_rowops},
    {"indexing", add_indexing},       {"views", add_views},           {"attention", add_attention},
    {"feedback", add_feedback},       {"mamba", add_mamba},
};

std::vector<OpEntry> build() {
  std::vector<OpEntry> t;
  for (const Family& f : kFamilies) {
    const size_t first = t.size();
    f.add(t);
    for (size_t i = first; i < t.size(); ++i) t[i].family = f.name;
  }
  return t;
}

// ---- placing inputs --------------------------------------------------------------------------

bool is_index(const InputSpec& s) { return s.fill == Fill::Index; }

// A tensor with x's values whose storage is laid out as `layout` asks (x float, contiguous).
Tensor laid_out(const Tensor& x, Layout layout) {
  const Shape& s = x.shape();
  switch (layout) {
    case Layout::Contiguous:
    case Layout::Broadcast:
      return x;
    case Layout::Padded: {  // rows of size(-1) + 3, starting one element in
      if (x.dim() == 0) return x;
      Shape big = s;
      big.back() += 3;
      Tensor buf = zeros(big, x.options());
      Tensor v = ops::narrow(buf, -1, 1, s.back());
      ops::copy_(v, x);
      return v;
    }
    case Layout::Strided: {  // every stride doubled
      Shape big = s;
      big.push_back(2);
      Tensor buf = zeros(big, x.options());
      Tensor v = ops::squeeze(ops::narrow(buf, -1, 0, 1), -1);
      ops::copy_(v, x);
      return v;
    }
    case Layout::Transposed: {  // 2-D: stored transposed; 3-D and more: dims 1 and 2 swapped
      if (x.dim() < 2) return x;
      const int64_t d0 = x.dim() == 2 ? 0 : 1, d1 = d0 + 1;
      return ops::transpose(ops::contiguous(ops::transpose(x, d0, d1)), d0, d1);
    }
  }
  return x;
}

bool broadcastable(const InputSpec& s, const Tensor& x) { return !is_index(s) && x.dim() >= 1 && x.size(0) > 1; }

}  // namespace

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = build();
  return table;
}

std::vector<std::string> op_families() {
  std::vector<std::string> names;
  for (const Family& f : kFamilies) names.push_back(f.name);
  return names;
}

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous:
      return "contiguous";
    case Layout::Padded:
      return "padded";
    case Layout::Strided:
      return "strided";
    case Layout::Transposed:
      return "transposed";
    case Layout::Broadcast:
      return "broadcast";
  }
  return "?";
}

std::vector<Tensor> draw_inputs(const OpEntry& e, const OpCase& c, uint64_t seed) {
  SESSA_CHECK(c.shapes.size() == e.inputs.size(), "op_table",
              e.name << ": a case has " << c.shapes.size() << " shapes for " << e.inputs.size() << " inputs");
  Generator gen(seed);
  std::vector<Tensor> out;
  for (size_t i = 0; i < e.inputs.size(); ++i) {
    const InputSpec& s = e.inputs[i];
    const Shape& shape = c.shapes[i];
    switch (s.fill) {
      case Fill::Normal:
        out.push_back(normal(shape, s.b, s.a, gen, {DType::F32}));
        break;
      case Fill::Uniform:
        out.push_back(uniform(shape, s.a, s.b, gen, {DType::F32}));
        break;
      case Fill::Masked: {
        Tensor x = normal(shape, 0.0, s.a, gen, {DType::F32});
        ops::fill_(ops::narrow(x, -1, 0, 3), -INFINITY);
        out.push_back(x);
        break;
      }
      case Fill::Index: {
        const Shape& of = c.shapes.at(size_t(s.of));
        int64_t axis = s.axis == kAxisFromArg ? c.arg : s.axis;
        if (axis < 0) axis += int64_t(of.size());
        const int64_t range = of.at(size_t(axis));
        const auto pick = uniform(shape, 0.0, double(range), gen, {DType::F64}).to_vector<double>();
        const auto drop = uniform(shape, 0.0, 1.0, gen, {DType::F64}).to_vector<double>();
        std::vector<int32_t> ids(pick.size());
        for (size_t j = 0; j < ids.size(); ++j)
          ids[j] = drop[j] < s.a ? -100 : int32_t(std::min<int64_t>(int64_t(pick[j]), range - 1));
        out.push_back(from_vector<int32_t>(ids, shape, {DType::I32}));
        break;
      }
    }
  }
  return out;
}

std::vector<Tensor> broadcast_values(const OpEntry& e, const std::vector<Tensor>& base) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < base.size(); ++i) {
    const Tensor& x = base[i];
    out.push_back(broadcastable(e.inputs[i], x) ? ops::contiguous(ops::expand(ops::narrow(x, 0, 0, 1), x.shape())) : x);
  }
  return out;
}

std::vector<Tensor> place_inputs(const OpEntry& e, const std::vector<Tensor>& base, const Placement& p) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < base.size(); ++i) {
    const InputSpec& s = e.inputs[i];
    if (is_index(s)) {
      out.push_back(base[i].to(p.index_device));
      continue;
    }
    const bool keep = s.keep_f32 && p.round_to == DType::BF16;
    const DType round_to = keep ? DType::F32 : p.round_to;
    const DType compute = keep && p.compute == DType::BF16 ? DType::F32 : p.compute;
    Tensor x = base[i].to(round_to).to(compute).to(p.device);
    if (x.identity() == base[i].identity()) x = ops::clone(x);  // a fresh leaf, not the caller's tensor
    if (p.layout == Layout::Broadcast && broadcastable(s, x))
      x = ops::expand(ops::contiguous(ops::narrow(x, 0, 0, 1)), x.shape());
    else
      x = laid_out(x, p.layout);
    if (s.grad) x.set_requires_grad();
    out.push_back(x);
  }
  return out;
}

OpResult run_op(const OpEntry& e, const OpCase& c, const std::vector<Tensor>& inputs, uint64_t seed, DType round_to,
                bool backward) {
  OpResult r;
  Tensor y = e.call(inputs, c.arg);
  r.outputs.push_back(y);
  if (e.raw) {
    autograd::NoGradGuard no_grad;
    for (const Tensor& t : e.raw(inputs, c.arg)) r.outputs.push_back(t);
  }
  if (!backward) return r;
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i) any = any || e.inputs[i].grad;
  if (!any || !y.requires_grad()) return r;
  Generator gen(seed);
  const Tensor up = normal(y.shape(), 0.0, 1.0, gen, {DType::F32}).to(round_to).to(y.dtype()).to(y.device());
  autograd::backward(y, up);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (e.inputs[i].grad) r.grads.push_back(inputs[i].grad());
  return r;
}

std::string case_name(const OpEntry& e, const OpCase& c) {
  std::ostringstream s;
  s << e.name;
  for (const Shape& sh : c.shapes) s << " " << sh;
  if (c.arg) s << " arg " << c.arg;
  return s.str();
}

}  // namespace sessa::test
