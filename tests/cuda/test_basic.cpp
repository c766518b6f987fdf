// GPU parity for the basic ops the op table (tests/op_table.cpp, driven by test_ops.cpp)
// cannot express: copies and casts between every dtype pair (strided, broadcast), fills,
// the contiguous kernel at every alignment and tail length, the in-place add_, sum_to, amax/argmax, index_select of
// integer tensors and its range check, index_add_ into an existing sum, the AdamW step with sum_of_squares, and the
// ordering of the priority lane (tensor/cuda/lane.h) against the main lane. Elementwise, unary, reductions, softmax,
// cat and index_select/index_add of floats are table entries. The CPU result is the
// reference: float32 inputs, rounded to bfloat16 first when the GPU runs in bfloat16, or
// float64 for float64 runs.
#include <cmath>
#include <cstring>
#include <string>

#include "tensor/cuda/runtime.h"
#include "tests/cuda/parity.h"

namespace sessa::test {
namespace {

constexpr DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F64};
constexpr DType kAllTypes[] = {DType::F32, DType::BF16, DType::F64, DType::I32, DType::U16};

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

TEST_CASE("cuda fill_ of strided views and full") {
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
}

TEST_CASE("cuda add_ into a strided view with a broadcast source") {
  Generator gen(21);
  struct Case {
    Shape a, b;
    bool transpose_a;
  };
  const Case cases[] = {{{1}, {1}, false},         {{17, 33}, {17, 33}, false}, {{6, 129, 7}, {7}, false},
                        {{33, 17}, {17, 1}, true}, {{1031, 517}, {517}, false}, {{517, 1031}, {1031, 1}, true}};
  for (DType t : kFloatTypes)
    for (const Case& c : cases) {
      const Tensor a = cpu_randn(c.a, gen), b = cpu_randn(c.b, gen);
      auto view = [&](const Tensor& x) { return c.transpose_a ? ops::transpose(x, 0, 1) : x; };
      const std::string what = name(t) + " add_ " + std::to_string(a.numel()) + (c.transpose_a ? " transposed" : "");
      // dst (a view) += alpha * src broadcast
      Tensor dc = ops::clone(ref_input(a, t)), dg = gpu_input(a, t);
      ops::add_(view(dc), ref_input(b, t), 0.75);
      ops::add_(view(dg), gpu_input(b, t), 0.75);
      check(dg, dc, t, what);
    }
}

// The contiguous kernel moves packs of 16 bytes when every pointer is 16-byte aligned and
// one element at a time otherwise, with the n % pack elements past the last pack done one
// by one: contiguous views at every offset 0..8 of a buffer, of lengths around a pack and
// a block's worth, through a binary op, a unary op and its backward, a cast and the
// in-place add_ into a view of a poisoned buffer (the poison around it must survive).
TEST_CASE("cuda contiguous elementwise at every alignment and tail length") {
  Generator gen(23);
  const int64_t lengths[] = {1, 7, 8, 9, 4095, 8193, 100003};
  for (DType t : kFloatTypes)
    for (int64_t n : lengths)
      for (int64_t offset : {0, 1, 3, 4, 8}) {
        const std::string what = name(t) + " n " + std::to_string(n) + " at offset " + std::to_string(offset);
        const Tensor a = cpu_randn({n + 16}, gen), b = cpu_randn({n + 16}, gen);
        auto view_c = [&](const Tensor& x) { return ops::narrow(ref_input(x, t), 0, offset, n); };
        auto view_g = [&](const Tensor& x) { return ops::narrow(gpu_input(x, t), 0, offset, n); };
        check(ops::binary(ops::Binary::Mul, view_g(a), view_g(b)), ops::binary(ops::Binary::Mul, view_c(a), view_c(b)),
              t, what + " mul");
        check(ops::unary(ops::Unary::Gelu, view_g(a)), ops::unary(ops::Unary::Gelu, view_c(a)), t, what + " gelu");
        check(ops::unary_backward(ops::Unary::Gelu, view_g(a), view_g(b)),
              ops::unary_backward(ops::Unary::Gelu, view_c(a), view_c(b)), t, what + " gelu backward");
        const DType other = t == DType::F32 ? DType::BF16 : DType::F32;
        check_exact(ops::cast(view_g(a), other), ops::cast(view_c(a), other), what + " cast");
        Tensor dc = full({n + 16}, 777.0, {ref_input(a, t).dtype()}), dg = full({n + 16}, 777.0, {t, gpu()});
        ops::add_(ops::narrow(dc, 0, 8 - offset, n), view_c(b), -0.5);
        ops::add_(ops::narrow(dg, 0, 8 - offset, n), view_g(b), -0.5);
        check(dg, dc, t, what + " add_ into a poisoned buffer");
      }
}

// Gradient accumulation across dtypes (autograd::cast hands a float32 parameter its bfloat16
// gradient): dst += alpha src in dst's arithmetic type, contiguous (packed kernel) and into a
// transposed view with a broadcast source (strided kernel).
TEST_CASE("cuda add_ of a source in another float dtype") {
  Generator gen(29);
  const std::pair<DType, DType> pairs[] = {
      {DType::F32, DType::BF16}, {DType::F64, DType::F32}, {DType::BF16, DType::F32}};
  for (auto [dt, st] : pairs) {
    const std::string what = name(st) + " into " + name(dt);
    const Tensor a = cpu_randn({37, 1031}, gen), b = cpu_randn({37, 1031}, gen), row = cpu_randn({37}, gen);
    Tensor dc = ops::clone(ref_input(a, dt)), dg = gpu_input(a, dt);
    ops::add_(dc, ref_input(b, st), 0.5);
    ops::add_(dg, gpu_input(b, st), 0.5);
    check(dg, dc, dt, what + " contiguous");
    ops::add_(ops::transpose(dc, 0, 1), ref_input(row, st), -1.0);
    ops::add_(ops::transpose(dg, 0, 1), gpu_input(row, st), -1.0);
    check(dg, dc, dt, what + " transposed view, broadcast source");
  }
}

TEST_CASE("cuda sum_to") {
  Generator gen(41);
  const Tensor g = cpu_randn({4, 3, 5}, gen);
  for (DType t : kFloatTypes)
    for (const Shape& to : {Shape{3, 1}, Shape{1, 5}, Shape{4, 3, 1}})
      check(ops::sum_to(gpu_input(g, t), to), ops::sum_to(ref_input(g, t), to), t, name(t) + " sum_to");
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

TEST_CASE("cuda index_select of integer tensors, host and device ids; out-of-range ids") {
  Generator gen(71);
  const std::vector<int32_t> id_values{3, 0, 36, 3, 17, 5, 5, 36, 1};
  const Tensor ids = from_vector<int32_t>(id_values, {3, 3}, {DType::I32});
  for (int64_t C : {1, 13, 16, 768 + 3})
    for (DType t : {DType::I32, DType::U16}) {
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
}

// index_add_ into a sum that already holds values (an embedding's .grad): bfloat16 and float32
// gradients into float32, float64 into float64, host and device ids, many repeats of a few
// ids, the middle dim; the sum keeps its storage. A sum in the wrong dtype is refused.
TEST_CASE("cuda index_add_ adds into an existing sum like the CPU") {
  Generator gen(72);
  const std::vector<int32_t> id_values{3, 0, 36, 3, 17, 5, 5, 36, 1, 3, 3, 3};
  const Tensor ids = from_vector<int32_t>(id_values, {3, 4}, {DType::I32});
  for (DType t : kFloatTypes)
    for (int64_t C : {1, 13, 768 + 3}) {
      const DType acc = accumulation_dtype(t);
      const std::string what = name(t) + " C=" + std::to_string(C);
      const Tensor start = uniform({37, C}, -1.0, 1.0, gen).to(acc), grad = normal({3, 4, C}, 0, 1, gen);
      Tensor ref = ops::clone(start);
      ops::index_add_(ref, 0, ids, ref_input(grad, t).to(acc));
      for (bool device_ids : {false, true}) {
        const Tensor sum = start.to(gpu()), storage = sum;
        ops::index_add_(sum, 0, device_ids ? ids.to(gpu()) : ids, gpu_input(grad, t));
        CHECK(sum.same(storage));
        check_close(host(sum), ref, acc, (what + (device_ids ? " device ids" : " host ids")).c_str());
      }
      const Tensor start3 = uniform({2, 37, C}, -1.0, 1.0, gen).to(acc), grad3 = normal({2, 12, C}, 0, 1, gen);
      Tensor ref3 = ops::clone(start3);
      const Tensor flat_ids = ops::reshape(ids, {12});
      ops::index_add_(ref3, 1, flat_ids, ref_input(grad3, t).to(acc));
      const Tensor sum3 = start3.to(gpu());
      ops::index_add_(sum3, 1, flat_ids, gpu_input(grad3, t));
      check_close(host(sum3), ref3, acc, (what + " middle dim").c_str());
    }
  check_error(
      [&] {
        ops::index_add_(zeros({37, 4}, {DType::BF16, gpu()}), 0, ids, zeros({3, 4, 4}, {DType::BF16, gpu()}));
      },
      {"index_add", "float32"});
}

// add_ with its alpha a 0-d tensor read on the device (the fused head's backward): float32
// and bfloat16 sources into float32, a float64 alpha converted, broadcasting.
TEST_CASE("cuda add_ with a device alpha matches the CPU") {
  Generator gen(82);
  for (DType st : {DType::F32, DType::BF16}) {
    const Tensor dst = cpu_randn({37, 65}, gen), src = cpu_randn({37, 65}, gen).to(st), row = cpu_randn({65}, gen);
    for (DType at : {DType::F32, DType::F64}) {
      Tensor ref = ops::clone(dst), got = dst.to(gpu());
      ops::add_(ref, src.to(DType::F32), -0.75);
      ops::add_(got, src.to(gpu()), scalar(-0.75, {at, gpu()}));
      check(got, ref, DType::F32, name(st) + " into float32, alpha " + name(at));
      ops::add_(ref, row, 2.0);
      ops::add_(got, row.to(gpu()), scalar(2.0, {at, gpu()}));
      check(got, ref, DType::F32, "a broadcast row");
    }
  }
  check_error(
      [&] {
        ops::add_(zeros({3}, {DType::F32, gpu()}), zeros({3}, {DType::F32, gpu()}), scalar(1.0));
      },
      {"add_", "alpha must be one float element on the device"});
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
          const ops::AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.1, step, step == 2 ? 0.25 : 1.0};  // a clipped step
          ops::adamw_step_(pc, g.to(gt).to(pt), mc, vc, h);
          ops::adamw_step_(pg, g.to(gt).to(gpu()), mg, vg, h);
        }
        check(pg, pc, pt, what + " param");
        check(mg, mc, pt, what + " m");
        check(vg, vc, pt, what + " v");
      }
  // Slices one element into their buffers: no 16-byte packs (the element-wise path).
  {
    auto tail = [](const Tensor& t) { return ops::narrow(t, 0, 1, t.numel() - 1); };
    Tensor pc = cpu_randn({1001}, gen), mc = ops::affine(cpu_randn({1001}, gen), 0.1, 0);
    Tensor vc = uniform({1001}, 0.0, 0.01, gen, {DType::F32}), g = cpu_randn({1001}, gen);
    Tensor pg = pc.to(gpu()), mg = mc.to(gpu()), vg = vc.to(gpu());
    const ops::AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.1, 1, 1.0};
    ops::adamw_step_(tail(pc), tail(g), tail(mc), tail(vc), h);
    ops::adamw_step_(tail(pg), tail(g.to(gpu())), tail(mg), tail(vg), h);
    check(pg, pc, DType::F32, "unaligned slices: param");
    check(vg, vc, DType::F32, "unaligned slices: v");
    const double ref = ops::sum_of_squares(tail(g)).item(), got = ops::sum_of_squares(tail(g.to(gpu()))).item();
    CHECK_MESSAGE(std::abs(got - ref) <= 1e-9 * ref, "unaligned sum_of_squares " << got << " vs " << ref);
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

// The float whose four bytes are all `byte` (what cudaMemset leaves).
float from_bytes(unsigned char byte) {
  unsigned char b[4] = {byte, byte, byte, byte};
  float f;
  std::memcpy(&f, b, 4);
  return f;
}

// Eight fills of 256 MB on the priority lane (about a millisecond of work), the last one
// with `byte`, so that main-lane work not ordered after them would read the earlier value.
void fill_on_priority_lane(const Tensor& t, unsigned char byte) {
  const cudaStream_t lane = cuda::stream(t.device().index, cuda::Lane::priority);
  for (int i = 0; i < 8; ++i)
    REQUIRE(cudaMemsetAsync(t.raw_data(), i == 7 ? byte : 0, size_t(t.numel()) * sizeof(float), lane) == cudaSuccess);
}

void check_tail(const Tensor& t, float expect, const char* what) {
  const Tensor tail = host(ops::narrow(t, 0, t.numel() - 4, 4));
  for (double v : tail.to_vector<double>()) CHECK_MESSAGE(v == double(expect), what << ": " << v);
}

TEST_CASE("cuda lanes: LaneEvent and LaneFork order the priority lane's work before the main lane's") {
  const int dev = gpu().index;
  const Tensor t = Tensor::empty({int64_t(64) << 20}, {DType::F32, gpu()});
  ops::fill_(t, 1.0);  // main lane; the fork makes the priority lane wait for it
  {
    const cuda::LaneFork fork(dev);
    cuda::LaneEvent filled(dev);
    fill_on_priority_lane(t, 0x41);
    filled.record(cuda::Lane::priority);
    filled.wait(cuda::Lane::main);
    check_tail(t, from_bytes(0x41), "after LaneEvent::wait");  // a main-lane copy
    fill_on_priority_lane(t, 0x42);
  }  // the join: the main lane waits for the second fill
  check_tail(t, from_bytes(0x42), "after the LaneFork ended");
}

}  // namespace
}  // namespace sessa::test
