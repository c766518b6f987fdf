// Rotary position embedding on CUDA for x: (B, H, T, dh), dh even (see tensor/ops/rope.cpp),
// contiguous or token-major (tensor/cuda/heads_layout.h); y comes out in x's layout.
// A first kernel tabulates cos/sin (T, dh/2) of theta = (pos_offset + t) * base^(-2i/dh),
// computed in double and stored as float (double for float64); the tables of the last
// (device, positions, dh, base, dtype) asked for are kept, so a training step tabulates once
// instead of at every rope call (q, k and both their backwards: four per attention layer).
// inverse negates sin.
// Then one thread per pack of P / 2 pairs (x[2i], x[2i+1]) of a row (16 bytes of x when
// dh / 2 and the pointers allow, else one pair; in memory order; a row's position is
// row / heads_inner % T, heads_inner = H when token-major, else 1) reads the table:
//   y[2i] = x[2i] cos - x[2i+1] sin,   y[2i+1] = x[2i] sin + x[2i+1] cos.
#include <mutex>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/heads_layout.h"
#include "tensor/cuda/rowops.h"

namespace sessa::cuda {

namespace {

template <class A>
__global__ void rope_table_kernel(A* __restrict__ cs, A* __restrict__ sn, int64_t T, int64_t half, int64_t pos_offset,
                                  double base) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= T * half) return;
  const int64_t t = k / half, i = k % half;
  const double theta = double(pos_offset + t) * pow(base, -2.0 * double(i) / double(2 * half));
  double s, c;
  sincos(theta, &s, &c);
  cs[k] = A(c), sn[k] = A(s);
}

}  // namespace

// The kept tensors are only read after they are made: later kernels on the stream see them.
RopeTables rope_tables(Device dev, int64_t T, int64_t half, int64_t pos_offset, double base, DType dtype) {
  const cudaStream_t st = stream(dev.index);
  static std::mutex mu;
  static RopeTables last;
  std::lock_guard lock(mu);
  if (last.device == dev.index && last.T == T && last.half == half && last.pos_offset == pos_offset &&
      last.base == base && last.dtype == dtype)
    return last;
  const TensorOptions topt{dtype, dev};
  RopeTables fresh{
      dev.index, T, half, pos_offset, base, dtype, Tensor::empty({T, half}, topt), Tensor::empty({T, half}, topt)};
  dispatch_float(dtype, "rope", [&](auto tag) {
    using A = decltype(tag);
    rope_table_kernel<A>
        <<<blocks_for(T * half), kThreads, 0, st>>>(ptr<A>(fresh.cs), ptr<A>(fresh.sn), T, half, pos_offset, base);
  });
  SESSA_CUDA_LAUNCH_CHECK("rope");
  last = fresh;
  return fresh;
}

namespace {

// sign = -1 applies the inverse rotation (sin negated).
template <int P, class T>
__global__ void rope_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ cs, const acc_t<T>* __restrict__ sn,
                            acc_t<T> sign, T* __restrict__ y, int64_t packs, int64_t T_len, int64_t half,
                            int64_t heads_inner) {
  using A = acc_t<T>;
  constexpr int kPairs = P / 2;
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // pack index over all rows
  if (k >= packs) return;
  const int64_t pair = k * kPairs;                                             // its first pair
  const int64_t j = (pair / half / heads_inner % T_len) * half + pair % half;  // table entry (t, i)
  Pack<T, P> in;  // (one pair: element by element, any alignment)
  if constexpr (P == 2)
    in.v[0] = x[2 * k], in.v[1] = x[2 * k + 1];
  else
    in = load_pack<P>(x, k * P);
  const Pack<A, kPairs> c = load_pack<kPairs>(cs, j), s = load_pack<kPairs>(sn, j);
  Pack<T, P> out;
#pragma unroll
  for (int q = 0; q < kPairs; ++q) {
    const A x0 = load(&in.v[2 * q]), x1 = load(&in.v[2 * q + 1]);
    const A sq = sign * s.v[q];
    store(&out.v[2 * q], x0 * c.v[q] - x1 * sq);
    store(&out.v[2 * q + 1], x0 * sq + x1 * c.v[q]);
  }
  if constexpr (P == 2)
    y[2 * k] = out.v[0], y[2 * k + 1] = out.v[1];
  else
    store_pack(y, k * P, out);
}

}  // namespace

Tensor rope(const Tensor& x_in, int64_t pos_offset, double base, bool inverse) {
  const bool tm = token_major(x_in);
  const Tensor x = tm ? x_in : ops::contiguous(x_in);
  const int64_t T = x.size(2), half = x.size(3) / 2, pairs = x.numel() / 2, heads_inner = tm ? x.size(1) : 1;
  Tensor y = empty_heads_like(x, x.dtype());
  if (pairs == 0) return y;
  cudaStream_t st = stream(x.device().index);
  const RopeTables tables = rope_tables(x.device(), T, half, pos_offset, base, accumulation_dtype(x.dtype()));
  dispatch_float(x.dtype(), "rope", [&](auto tag) {
    using TT = decltype(tag);
    using A = acc_t<TT>;
    constexpr int P = kPackOf<TT>;  // (the tables are fresh allocations: aligned)
    auto run = [&](auto pack) {
      constexpr int kP = decltype(pack)::value;
      const int64_t packs = pairs / (kP / 2);
      rope_kernel<kP><<<blocks_for(packs), kThreads, 0, st>>>(ptr<TT>(x), ptr<A>(tables.cs), ptr<A>(tables.sn),
                                                              A(inverse ? -1 : 1), ptr<TT>(y), packs, T, half,
                                                              heads_inner);
    };
    with_pack<P, 2>(half % (P / 2) == 0 && pack_aligned<P>(ptr<TT>(x)) && pack_aligned<P>(ptr<TT>(y)), run);
    SESSA_CUDA_LAUNCH_CHECK("rope");
  });
  return y;
}

}  // namespace sessa::cuda
