// GPU parity for the basic ops: copies and casts between every dtype pair (strided,
// broadcast, cat), fills, binary ops with broadcasting, affine, add_, every unary op and
// its backward, sums (rows, columns, split reductions, permuted dims), amax/argmax,
// softmax/log-softmax forward and backward, index_select/index_add and the AdamW step
// with sum_of_squares. The CPU result is the reference: float32 inputs, rounded to
// bfloat16 first when the GPU runs in bfloat16, or float64 for float64 runs.
#include <cmath>
#include <string>

#include "tests/cuda/parity.h"

namespace sessa::test {
namespace {

constexpr DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F64};
constexpr DType kAllTypes[] = {DType::F32, DType::BF16, DType::F64, DType::I32, DType::U16};

Tensor host(const Tensor& t) { return t.to(Device::cpu()); }

// The CPU reference input for a GPU run in `dtype`: the same values, in a dtype the CPU computes in.
Tensor ref_input(const Tensor& x, DType dtype) {
  return dtype == DType::F64 ? x.to(DType::F64) : x.to(dtype).to(DType::F32);
}
Tensor gpu_input(const Tensor& x, DType dtype) { return x.to(dtype).to(gpu()); }

void check(const Tensor& gpu_result, const Tensor& cpu_ref, DType dtype, const std::string& what) {
  CHECK(gpu_result.is_cuda());
  CHECK(gpu_result.dtype() == dtype);
  check_close(host(gpu_result), cpu_ref, dtype, what.c_str());
}

void check_exact(const Tensor& gpu_result, const Tensor& cpu_ref, const std::string& what) {
  REQUIRE_MESSAGE(gpu_result.shape() == cpu_ref.shape(), what);
  CHECK_MESSAGE(gpu_result.dtype() == cpu_ref.dtype(), what);
  CHECK_MESSAGE(host(gpu_result).to_vector<double>() == cpu_ref.to_vector<double>(), what);
}

// A GPU result as a CPU reference input: the same values, in float32 (float64 for float64).
Tensor as_ref(const Tensor& gpu_result) {
  Tensor h = host(gpu_result);
  return h.dtype() == DType::F64 ? h : h.to(DType::F32);
}

std::string name(DType t) { return dtype_name(t); }

TEST_CASE("cuda copy_: every dtype pair, strided and broadcast sources, strided destinations") {
  Generator gen(11);
  const Tensor base = uniform({37, 19}, 0.0, 300.0, gen);  // casts to int/uint16 stay in range
  for (DType src_t : kAllTypes)
    for (DType dst_t : kAllTypes) {
      const std::string what = name(src_t) + " -> " + name(dst_t);
      const Tensor src_c = base.to(src_t), src_g = src_c.to(gpu());
      // transposed source into a fresh tensor
      Tensor ref = Tensor::empty({19, 37}, {dst_t});
      ops::copy_(ref, ops::transpose(src_c, 0, 1));
      Tensor out = Tensor::empty({19, 37}, {dst_t, gpu()});
      ops::copy_(out, ops::transpose(src_g, 0, 1));
      check_exact(out, ref, what + " transposed");
      // a broadcast row into a column-sliced view of a larger tensor
      Tensor big_c = zeros({37, 30}, {dst_t}), big_g = zeros({37, 30}, {dst_t, gpu()});
      ops::copy_(ops::narrow(big_c, 1, 5, 19), ops::narrow(src_c, 0, 3, 1));
      ops::copy_(ops::narrow(big_g, 1, 5, 19), ops::narrow(src_g, 0, 3, 1));
      check_exact(big_g, big_c, what + " broadcast into a view");
      // plain contiguous copy (a memcpy when the dtypes agree)
      check_exact(ops::cast(src_g, dst_t), ops::cast(src_c, dst_t), what + " contiguous");
    }
  // a 0-d source broadcast everywhere
  Tensor out = Tensor::empty({3, 4}, {DType::F32, gpu()});
  ops::copy_(out, scalar(2.5, {DType::F64, gpu()}));
  check_exact(out, full({3, 4}, 2.5), "0-d broadcast");
  // large, awkward size; same-device clone
  const Tensor large = cpu_randn({1000003}, gen);
  check_exact(ops::clone(large.to(gpu())), large, "large clone");
}

TEST_CASE("cuda fill_ and cat") {
  for (DType t : kAllTypes) {
    for (double value : {0.0, 3.0, -1.75}) {
      if (t == DType::U16 && value < 0) continue;
      Tensor cpu_x = zeros({5, 9}, {t}), gpu_x = zeros({5, 9}, {t, gpu()});
      ops::fill_(ops::narrow(cpu_x, 1, 2, 4), value);
      ops::fill_(ops::narrow(gpu_x, 1, 2, 4), value);
      check_exact(gpu_x, cpu_x, name(t) + " fill of a strided view with " + std::to_string(value));
      check_exact(full({7, 3}, value, {t, gpu()}), full({7, 3}, value, {t}), name(t) + " full");
    }
  }
  Generator gen(12);
  const Tensor a = cpu_randn({3, 5, 4}, gen), b = cpu_randn({3, 2, 4}, gen), c = cpu_randn({3, 7, 4}, gen);
  for (DType t : kFloatTypes) {
    Tensor ref = ops::cat({ref_input(a, t), ref_input(b, t), ref_input(c, t)}, 1);
    check(ops::cat({gpu_input(a, t), gpu_input(b, t), gpu_input(c, t)}, 1), ref, t, name(t) + " cat dim 1");
    Tensor ref0 = ops::cat({ops::transpose(ref_input(a, t), 0, 2), ops::transpose(ref_input(b, t), 0, 2)}, 1);
    Tensor out0 = ops::cat({ops::transpose(gpu_input(a, t), 0, 2), ops::transpose(gpu_input(b, t), 0, 2)}, 1);
    check(out0, ref0, t, name(t) + " cat of transposed views");
  }
}

TEST_CASE("cuda binary ops with broadcasting and strided operands, affine, add_") {
  Generator gen(21);
  struct Case {
    Shape a, b;
    bool transpose_a;
  };
  const Case cases[] = {{{1}, {1}, false},           {{17, 33}, {17, 33}, false},   {{4, 1, 5}, {3, 1}, false},
                        {{6, 129, 7}, {7}, false},   {{33, 17}, {17, 1}, true},     {{2, 3, 1, 5}, {3, 4, 1}, false},
                        {{1031, 517}, {517}, false}, {{517, 1031}, {1031, 1}, true}};
  for (DType t : kFloatTypes)
    for (const Case& c : cases) {
      const Tensor a = cpu_randn(c.a, gen), b = uniform(c.b, 0.5, 2.0, gen);  // away from 0 for div
      auto view = [&](const Tensor& x) { return c.transpose_a ? ops::transpose(x, 0, 1) : x; };
      const Tensor ac = view(ref_input(a, t)), bc = ref_input(b, t);
      const Tensor ag = view(gpu_input(a, t)), bg = gpu_input(b, t);
      const std::string what = name(t) + " a" + std::to_string(c.a.size()) + "d " + std::to_string(a.numel());
      for (ops::Binary op : {ops::Binary::Add, ops::Binary::Sub, ops::Binary::Mul, ops::Binary::Div}) {
        check(ops::binary(op, ag, bg), ops::binary(op, ac, bc), t, what + " binary " + std::to_string(int(op)));
        check(ops::binary(op, bg, ag), ops::binary(op, bc, ac), t, what + " binary swapped " + std::to_string(int(op)));
      }
      check(ops::affine(ag, -1.5, 0.25), ops::affine(ac, -1.5, 0.25), t, what + " affine");
      // dst (a view) += alpha * src broadcast
      Tensor dc = ops::clone(ref_input(a, t)), dg = gpu_input(a, t);
      Shape bs = ops::binary(ops::Binary::Add, ac, bc).shape();
      if (bs == ac.shape()) {
        ops::add_(view(dc), bc, 0.75);
        ops::add_(view(dg), bg, 0.75);
        check(dg, dc, t, what + " add_");
      }
    }
}

TEST_CASE("cuda unary ops and their backward, contiguous and strided") {
  Generator gen(31);
  for (int k = 0; k <= int(ops::Unary::Softplus); ++k) {
    const ops::Unary op = ops::Unary(k);
    const bool positive = op == ops::Unary::Log || op == ops::Unary::Sqrt;
    for (const Shape& shape : {Shape{1}, Shape{7, 13}, Shape{3, 1001}, Shape{257, 1029}}) {
      // wide values so softplus crosses its threshold of 20 and the saturating ops saturate
      const double scale = op == ops::Unary::Exp ? 2.0 : 8.0;
      const Tensor x = positive ? uniform(shape, 0.05, 4.0, gen) : ops::affine(cpu_randn(shape, gen), scale, 0.0);
      const Tensor dy = cpu_randn(shape, gen);
      for (DType t : kFloatTypes)
        for (bool strided : {false, true}) {
          auto view = [&](const Tensor& v) { return strided ? ops::transpose(v, 0, -1) : v; };
          const std::string what = std::string(ops::unary_name(op)) + " " + name(t) + " " + std::to_string(x.numel()) +
                                   (strided ? " strided" : "");
          const Tensor xc = view(ref_input(x, t)), dyc = view(ref_input(dy, t));
          const Tensor xg = view(gpu_input(x, t)), dyg = view(gpu_input(dy, t));
          check(ops::unary(op, xg), ops::unary(op, xc), t, what);
          check(ops::unary_backward(op, xg, dyg), ops::unary_backward(op, xc, dyc), t, what + " backward");
        }
    }
  }
}

TEST_CASE("cuda sum, mean, sum_to: rows, columns, split and permuted reductions") {
  Generator gen(41);
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
    bool keepdim;
  };
  const Case cases[] = {
      {{5, 7}, {1}, false},         {{5, 7}, {0}, false},       {{3, 4, 5}, {1}, true},
      {{3, 4, 5}, {0, 1}, false},   {{3, 4, 5}, {0, 2}, false}, {{3, 4, 5}, {0, 1, 2}, false},
      {{3, 1, 4, 5}, {0, 2}, true}, {{4099, 77}, {0}, false},   {{300001}, {0}, false},
      {{2, 4099, 33}, {1}, false},  {{1, 1}, {0, 1}, false},    {{3, 0, 4}, {1}, false},
      {{64, 2048}, {1}, false},     {{6, 5, 4}, {}, false},
  };
  for (DType t : kFloatTypes)
    for (const Case& c : cases) {
      const Tensor x = cpu_randn(c.shape, gen);
      const std::string what =
          name(t) + " sum " + std::to_string(x.numel()) + " over " + std::to_string(c.dims.size()) + " dims";
      check(ops::sum(gpu_input(x, t), c.dims, c.keepdim), ops::sum(ref_input(x, t), c.dims, c.keepdim), t, what);
      if (x.dim() >= 2) {  // the same reduction of a transposed (non-contiguous) view
        auto tv = [](const Tensor& v) { return ops::transpose(v, 0, -1); };
        check(ops::sum(tv(gpu_input(x, t)), c.dims, c.keepdim), ops::sum(tv(ref_input(x, t)), c.dims, c.keepdim), t,
              what + " transposed");
      }
      if (x.numel() > 0)
        check(ops::mean(gpu_input(x, t), c.dims, c.keepdim), ops::mean(ref_input(x, t), c.dims, c.keepdim), t,
              what + " mean");
    }
  const Tensor g = cpu_randn({4, 3, 5}, gen);
  for (DType t : kFloatTypes) {
    check(ops::sum_to(gpu_input(g, t), {3, 1}), ops::sum_to(ref_input(g, t), {3, 1}), t, name(t) + " sum_to");
    check(ops::sum_all(gpu_input(g, t)), ops::sum_all(ref_input(g, t)), t, name(t) + " sum_all");
  }
}

TEST_CASE("cuda amax and argmax") {
  Generator gen(51);
  for (DType t : kFloatTypes)
    for (const Shape& shape : {Shape{1, 1}, Shape{6, 1001}, Shape{5, 7, 9}, Shape{2, 50001}})
      for (int64_t dim = 0; dim < int64_t(shape.size()); ++dim)
        for (bool keepdim : {false, true}) {
          const Tensor x = cpu_randn(shape, gen);
          const std::string what = name(t) + " " + std::to_string(x.numel()) + " dim " + std::to_string(dim);
          check(ops::amax(gpu_input(x, t), dim, keepdim), ops::amax(ref_input(x, t), dim, keepdim), t, what + " amax");
          // bfloat16 has many ties: both devices must pick the first maximum
          check_exact(ops::argmax(gpu_input(x, t), dim, keepdim), ops::argmax(ref_input(x, t), dim, keepdim),
                      what + " argmax");
        }
  // a strided input, reduced over its last dim
  const Tensor x = cpu_randn({33, 17}, gen);
  check_exact(ops::argmax(ops::transpose(x.to(gpu()), 0, 1), -1), ops::argmax(ops::transpose(x, 0, 1), -1),
              "argmax strided");
}

TEST_CASE("cuda softmax and log_softmax, forward and backward") {
  Generator gen(61);
  for (const Shape& shape :
       {Shape{1, 1}, Shape{5, 7}, Shape{1, 129}, Shape{3, 4, 1000}, Shape{3, 33001}, Shape{2049, 64}})
    for (DType t : kFloatTypes)
      for (bool masked : {false, true}) {
        if (masked && shape.back() <= 3) continue;
        Tensor x = ops::affine(cpu_randn(shape, gen), 3.0, 0.0);
        if (masked) ops::fill_(ops::narrow(x, -1, 0, 3), -INFINITY);  // leading -inf entries
        const Tensor dy = cpu_randn(shape, gen);
        const std::string what = name(t) + " " + std::to_string(x.numel()) + (masked ? " masked" : "");
        const Tensor xc = ref_input(x, t), xg = gpu_input(x, t);
        const Tensor sc = ops::softmax(xc), sg = ops::softmax(xg);
        const Tensor lc = ops::log_softmax(xc), lg = ops::log_softmax(xg);
        check(sg, sc, t, what + " softmax");
        // -inf entries would make the relative error meaningless: compare the finite part
        const int64_t len = x.size(-1), skip = masked ? 3 : 0;
        check(ops::narrow(lg, -1, skip, len - skip), ops::narrow(lc, -1, skip, len - skip), t, what + " log_softmax");
        // backward from the same (rounded) outputs on both devices
        const Tensor dyc = ref_input(dy, t), dyg = gpu_input(dy, t);
        check(ops::softmax_backward(sg, dyg), ops::softmax_backward(as_ref(sg), dyc), t, what + " softmax_backward");
        if (!masked)  // log_softmax is -inf on masked entries, where its backward is not used
          check(ops::log_softmax_backward(lg, dyg), ops::log_softmax_backward(as_ref(lg), dyc), t,
                what + " log_softmax_backward");
      }
  // a strided input (softmax over the original first dim)
  const Tensor x = cpu_randn({40, 3}, gen);
  check(ops::softmax(ops::transpose(x.to(gpu()), 0, 1)), ops::softmax(ops::transpose(x, 0, 1)), DType::F32,
        "softmax strided");
}

TEST_CASE("cuda index_select and index_add, host and device ids") {
  Generator gen(71);
  const std::vector<int32_t> id_values{3, 0, 36, 3, 17, 5, 5, 36, 1};
  const Tensor ids = from_vector<int32_t>(id_values, {3, 3}, {DType::I32});
  for (int64_t C : {1, 13, 16, 768 + 3})
    for (DType t : kAllTypes) {
      const Tensor w = uniform({37, C}, 0.0, 100.0, gen);
      const Tensor wc = w.to(t), wg = wc.to(gpu());
      const std::string what = name(t) + " C=" + std::to_string(C);
      check_exact(ops::index_select(wg, 0, ids), ops::index_select(wc, 0, ids), what + " rows, host ids");
      check_exact(ops::index_select(wg, 0, ids.to(gpu())), ops::index_select(wc, 0, ids), what + " rows, device ids");
      const Tensor x3 = uniform({2, 37, C}, 0.0, 100.0, gen).to(t);
      check_exact(ops::index_select(x3.to(gpu()), 1, ids), ops::index_select(x3, 1, ids), what + " middle dim");
      const Tensor cols = from_vector<int32_t>({0, int32_t(C - 1), 0}, {3}, {DType::I32});
      check_exact(ops::index_select(x3.to(gpu()), -1, cols.to(gpu())), ops::index_select(x3, -1, cols),
                  what + " last dim");
    }
  check_error(
      [&] {
        ops::index_select(zeros({4, 2}, {DType::F32, gpu()}), 0, from_vector<int32_t>({4}, {1}, {DType::I32}));
      },
      {"index_select", "out of range"});

  for (DType t : kFloatTypes)
    for (int64_t C : {1, 13, 771}) {
      const std::string what = name(t) + " index_add C=" + std::to_string(C);
      const Tensor g = cpu_randn({3, 3, C}, gen);  // grad of index_select(w (37, C), 0, ids (3, 3))
      check(ops::index_add({37, C}, 0, ids.to(gpu()), gpu_input(g, t)),
            ops::index_add({37, C}, 0, ids, ref_input(g, t)), t, what);
      const Tensor g3 = cpu_randn({2, 9, C}, gen);  // dim 1 of (2, 37, C)
      const Tensor flat = ops::reshape(ids, {9});
      check(ops::index_add({2, 37, C}, 1, flat, gpu_input(g3, t)),
            ops::index_add({2, 37, C}, 1, flat, ref_input(g3, t)), t, what + " middle dim");
    }
  // many repeats of few ids (the embedding backward of a long batch)
  std::vector<int32_t> many(4096);
  for (size_t i = 0; i < many.size(); ++i) many[i] = int32_t((i * 7) % 11);
  const Tensor many_ids = from_vector<int32_t>(many, {4096}, {DType::I32});
  const Tensor gm = cpu_randn({4096, 96}, gen);
  for (DType t : kFloatTypes)
    check(ops::index_add({11, 96}, 0, many_ids.to(gpu()), gpu_input(gm, t)),
          ops::index_add({11, 96}, 0, many_ids, ref_input(gm, t)), t, name(t) + " index_add with repeats");
}

TEST_CASE("cuda adamw_step_ (float32, bfloat16 gradients, float64) and sum_of_squares") {
  Generator gen(81);
  for (const Shape& shape : {Shape{1}, Shape{1000003}, Shape{37, 5}})
    for (DType pt : {DType::F32, DType::F64})
      for (DType gt : {pt, DType::BF16}) {
        const std::string what = name(pt) + " param, " + name(gt) + " grad, " + std::to_string(numel(shape));
        Tensor pc = cpu_randn(shape, gen).to(pt), mc = ops::affine(cpu_randn(shape, gen), 0.1, 0).to(pt);
        Tensor vc = uniform(shape, 0.0, 0.01, gen, {pt});
        Tensor pg = pc.to(gpu()), mg = mc.to(gpu()), vg = vc.to(gpu());
        for (int64_t step = 1; step <= 3; ++step) {
          const Tensor g = cpu_randn(shape, gen);
          const ops::AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.1, step};
          ops::adamw_step_(pc, g.to(gt).to(pt), mc, vc, h);
          ops::adamw_step_(pg, g.to(gt).to(gpu()), mg, vg, h);
        }
        check(pg, pc, pt, what + " param");
        check(mg, mc, pt, what + " m");
        check(vg, vc, pt, what + " v");
      }
  for (DType t : kFloatTypes)
    for (const Shape& shape : {Shape{1}, Shape{3, 5}, Shape{1000003}, Shape{513, 1025}}) {
      const Tensor x = cpu_randn(shape, gen);
      const double ref = ops::sum_of_squares(ref_input(x, t)).item();
      const double got = ops::sum_of_squares(gpu_input(x, t)).item();
      CHECK_MESSAGE(std::abs(got - ref) <= 1e-9 * ref, name(t) << " sum_of_squares " << got << " vs " << ref);
      if (x.dim() == 2) {
        const double strided = ops::sum_of_squares(ops::transpose(gpu_input(x, t), 0, 1)).item();
        CHECK_MESSAGE(std::abs(strided - ref) <= 1e-9 * ref, name(t) << " strided sum_of_squares");
      }
    }
}

}  // namespace
}  // namespace sessa::test
