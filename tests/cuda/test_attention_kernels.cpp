// The bfloat16 tensor-core attention kernels (tensor/cuda/attention_wgmma.cuh forward,
// attention_wgmma_backward.cuh backward) on shapes small enough for compute-sanitizer
// memcheck and racecheck, each against the float64 CPU op: partial query and key tiles,
// GQA, queries at the end of a cache (the mask inside a tile), head dims padded to the tile
// width, (B, T, H, dh) projections entering as permuted views (the strided path, no copy),
// and the backward with RoPE inside (even head dims). The op table (tests/op_table.cpp,
// "attention") covers the larger and awkward shapes.
#include <cmath>

#include "tests/cuda/parity.h"

using namespace sessa;
using namespace sessa::test;

namespace {

// q (B, H, Tq, dh), k, v (B, Hkv, Tk, dh); `permuted` stores them as (B, T, heads, dh).
void check_attention_kernels(int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t dh, bool permuted,
                             uint64_t seed) {
  CAPTURE(B);
  CAPTURE(H);
  CAPTURE(Hkv);
  CAPTURE(Tq);
  CAPTURE(Tk);
  CAPTURE(dh);
  CAPTURE(permuted);
  Generator gen(seed);
  // Stored (B, heads, T, dh), or (B, T, heads, dh) and viewed as (B, heads, T, dh).
  auto make = [&](int64_t heads, int64_t T) {
    return cpu_randn(permuted ? Shape{B, T, heads, dh} : Shape{B, heads, T, dh}, gen).to(DType::BF16);
  };
  auto view = [&](const Tensor& t) { return permuted ? ops::permute(t, {0, 2, 1, 3}) : t; };
  const Tensor q = make(H, Tq), k = make(Hkv, Tk), v = make(Hkv, Tk), dout = make(H, Tq);
  const int64_t q_offset = Tk - Tq;
  const double scale = 1.0 / std::sqrt(double(dh));
  auto f64 = [&](const Tensor& t) { return view(t).to(DType::F64); };
  const ops::AttentionOut ref = ops::attention(f64(q), f64(k), f64(v), q_offset, scale);
  const ops::AttentionGrads ref_g =
      ops::attention_backward(f64(dout), f64(q), f64(k), f64(v), ref.out, ref.lse, q_offset, scale);

  auto dev = [&](const Tensor& t) { return view(t.to(gpu())); };
  const Tensor qd = dev(q), kd = dev(k), vd = dev(v);
  CHECK(qd.is_contiguous() == !permuted);
  const ops::AttentionOut got = ops::attention(qd, kd, vd, q_offset, scale);
  const ops::AttentionGrads got_g = ops::attention_backward(dev(dout), qd, kd, vd, got.out, got.lse, q_offset, scale);
  check_close(host(got.out), ref.out, DType::BF16, "out");
  check_close(host(got.lse), ref.lse, DType::F32, "lse");
  check_close(host(got_g.dq), ref_g.dq, DType::BF16, "dq");
  check_close(host(got_g.dk), ref_g.dk, DType::BF16, "dk");
  check_close(host(got_g.dv), ref_g.dv, DType::BF16, "dv");
  if (dh % 2 == 0) {  // RoPE inside the op: dq rotated back in the scaling pass, dk by rope
    const double base = 10000.0;
    const ops::AttentionGrads ref_r =
        ops::attention_backward(f64(dout), f64(q), f64(k), f64(v), ref.out, ref.lse, q_offset, scale, base);
    const ops::AttentionGrads got_r =
        ops::attention_backward(dev(dout), qd, kd, vd, got.out, got.lse, q_offset, scale, base);
    check_close(host(got_r.dq), ref_r.dq, DType::BF16, "dq, rope inside");
    check_close(host(got_r.dk), ref_r.dk, DType::BF16, "dk, rope inside");
    check_close(host(got_r.dv), ref_r.dv, DType::BF16, "dv, rope inside");
  }
}

}  // namespace

TEST_CASE("cuda attention bf16 sanitizer-sized: partial tiles, GQA, cache offsets, padded head dims, permuted views") {
  check_attention_kernels(1, 4, 2, 70, 70, 64, false, 1);  // a partial query tile; two key tiles, one partial
  check_attention_kernels(2, 2, 1, 33, 130, 64, true, 2);  // queries at the end of a cache, permuted views
  check_attention_kernels(1, 3, 3, 40, 40, 128, true, 3);  // dh 128
  check_attention_kernels(1, 2, 2, 20, 50, 40, false, 4);  // dh 40 padded to 64, offset inside a tile
  check_attention_kernels(1, 2, 1, 1, 1, 64, false, 5);    // T = 1
  check_attention_kernels(1, 2, 2, 17, 17, 20, true, 6);   // dh not a multiple of 8: padded copies, scalar loads
  // The backward's 128-key blocks (dh 64: 4 warps of 32 keys; dh 128: 8 warps of 16) and 32-query steps:
  check_attention_kernels(1, 6, 2, 200, 333, 64, true, 7);    // GQA 3 per kv head; 3 key blocks, the last partial;
                                                              // offset 133 inside a warp's keys, not 16-aligned
  check_attention_kernels(1, 2, 1, 129, 129, 128, false, 8);  // dh 128: a key block of one key, partial query step
  check_attention_kernels(1, 2, 2, 64, 200, 96, true, 9);     // dh 96 (vectorized, padded to 128): dq parts past dh
  check_attention_kernels(1, 4, 2, 1, 300, 64, false, 10);    // one query against 3 key blocks
  check_attention_kernels(1, 2, 1, 33, 40, 6, true, 11);      // dh 6: dq summed padded, RoPE's rotation after
  // More query tiles than SMs: the persistent forward's blocks take several each (Q buffers
  // and barrier phases reused across tiles).
  check_attention_kernels(1, 400, 100, 9, 20, 64, false, 12);
  check_attention_kernels(1, 300, 300, 5, 5, 128, true, 13);
}
