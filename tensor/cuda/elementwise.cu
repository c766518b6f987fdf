// Elementwise kernels: copies and casts, fills, binary arithmetic with broadcasting,
// affine maps, in-place accumulation, and unary math with its derivative.
//
// Plan: each op is a small functor from K stored input values to the stored output
// value (Map: the output pointer, K input pointers, the op), applied elementwise over
// K + 1 strided tensors that share one (broadcast) shape. Before launching, the host
// simplifies the shape: size-1 dims are dropped and neighbouring dims that are nested in
// every tensor merge, so contiguous operands become one dim and a bias broadcast over
// (B, T, C) becomes (B*T, C). The grid-stride kernel turns a linear index into offsets
// with one division per remaining dim (none for the outermost), in 32-bit arithmetic
// whenever every index and offset fits; when every operand is contiguous in the output's
// shape, a simpler kernel moves 16-byte packs and keeps several in flight per thread.
// Same-dtype contiguous copies are a cudaMemcpyAsync; zero fills of contiguous tensors
// are a cudaMemsetAsync.
// Arithmetic is in float (double for double); bfloat16 is only the storage.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

// ---- launching over strided tensors -------------------------------------------------

template <int N>
struct Strided {
  Shape shape;
  std::array<Shape, N> strides;
};

// Drops size-1 dims and merges each dim into the previous (outer) one when the pair
// is nested in every tensor: stride[outer] == stride[inner] * size[inner].
template <int N>
Strided<N> simplify(const Shape& shape, const std::array<Shape, N>& strides) {
  Strided<N> s;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool nested = !s.shape.empty();
    for (int k = 0; k < N && nested; ++k) nested = s.strides[k].back() == strides[k][d] * shape[d];
    if (nested) {
      s.shape.back() *= shape[d];
      for (int k = 0; k < N; ++k) s.strides[k].back() = strides[k][d];
    } else {
      s.shape.push_back(shape[d]);
      for (int k = 0; k < N; ++k) s.strides[k].push_back(strides[k][d]);
    }
  }
  return s;
}

// out = op(in[0], ..., in[K - 1]) elementwise: the output and K input pointers of one
// storage dtype each (D out, S in; the ops below say what they compute). The op receives
// the inputs' stored values and returns the stored output value; an op with kInPlace
// (accumulation) also receives the output's current value first: op(out, in).
template <class D, class S, int K, class Op>
struct Map {
  D* out;
  const S* in[K > 0 ? K : 1];
  Op op;
};
template <class Op>
consteval bool in_place() {  // reads Op::kInPlace (a mere `requires` check leaves it "never referenced")
  if constexpr (requires { Op::kInPlace; })
    return Op::kInPlace;
  else
    return false;
}
template <class Op>
constexpr bool kInPlace = in_place<Op>();

template <class D, class S, int K, class Op>
__device__ __forceinline__ D apply(const Map<D, S, K, Op>& m, D current, const S (&v)[K > 0 ? K : 1]) {
  if constexpr (kInPlace<Op>)
    return m.op(current, v);
  else
    return m.op(v);
}

// Over N = K + 1 strided tensors (tensor 0 the output): one element per thread and step of
// a grid-stride loop, offsets from the linear index by one division per dim but the first.
template <class I, class D, class S, int K, class Op>
__global__ void __launch_bounds__(kThreads) strided_kernel(I n, StridedIndexer<K + 1> ix, Map<D, S, K, Op> m) {
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += I(gridDim.x) * blockDim.x) {
    I off[K + 1];
    I rest = i;
    for (int k = 0; k <= K; ++k) off[k] = 0;
    for (int d = ix.ndim - 1; d > 0; --d) {
      const I size = I(ix.shape[d]);
      const I c = rest % size;
      rest /= size;
      for (int k = 0; k <= K; ++k) off[k] += c * I(ix.strides[k][d]);
    }
    if (ix.ndim > 0)
      for (int k = 0; k <= K; ++k) off[k] += rest * I(ix.strides[k][0]);
    S v[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) v[k] = m.in[k][off[k + 1]];
    m.out[off[0]] = apply(m, kInPlace<Op> ? m.out[off[0]] : D{}, v);
  }
}

// When every tensor is contiguous with the output's shape (offset = index): a thread
// owns kPacks packs of V elements a block's stride apart (every access of a warp
// coalesced), reads all of them before it writes any (kPacks loads per input in flight),
// then the n % V elements past the last whole pack are done one by one. V = 16 bytes'
// worth of the wider dtype when every pointer is that aligned, else 1: bfloat16 moves in
// 16-byte accesses, 8 elements each (2-byte accesses left the bandwidth-bound ops at a
// third of the copy bandwidth on the H200, docs/performance.md 2026-12-01, second session).
template <int V>
constexpr int kPacks = V == 1 ? 8 : 4;
template <int V, class D, class S, int K, class Op>
__global__ void __launch_bounds__(kThreads) contiguous_kernel(int64_t n, Map<D, S, K, Op> m) {
  const int64_t packs = n / V, base = int64_t(blockIdx.x) * kPacks<V> * blockDim.x + threadIdx.x;
  Pack<S, V> x[kPacks<V>][K > 0 ? K : 1];
  Pack<D, V> y[kPacks<V>];  // (read only by in-place ops)
#pragma unroll
  for (int j = 0; j < kPacks<V>; ++j) {
    const int64_t p = base + j * blockDim.x;
    if (p < packs) {
#pragma unroll
      for (int k = 0; k < K; ++k) x[j][k] = load_pack<V>(m.in[k], p * V);
      if constexpr (kInPlace<Op>) y[j] = load_pack<V>(m.out, p * V);
    }
  }
#pragma unroll
  for (int j = 0; j < kPacks<V>; ++j) {
    const int64_t p = base + j * blockDim.x;
    if (p >= packs) continue;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      S v[K > 0 ? K : 1];
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = x[j][k].v[e];
      y[j].v[e] = apply(m, y[j].v[e], v);
    }
    store_pack(m.out, p * V, y[j]);
  }
  if (V > 1 && blockIdx.x == 0 && threadIdx.x < n % V) {  // the tail
    const int64_t i = packs * V + threadIdx.x;
    S v[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) v[k] = m.in[k][i];
    m.out[i] = apply(m, kInPlace<Op> ? m.out[i] : D{}, v);
  }
}

// Runs m over `shape`, with strides[k] the (broadcast) strides of tensor k (0: the output).
template <class D, class S, int K, class Op>
void launch(const char* op, Device device, const Shape& shape, const std::array<Shape, K + 1>& strides,
            const Map<D, S, K, Op>& m) {
  const int64_t n = numel(shape);
  if (n == 0) return;
  const Strided<K + 1> s = simplify<K + 1>(shape, strides);
  cudaStream_t st = stream(device.index);
  bool dense = s.shape.size() <= 1;
  for (int k = 0; k <= K && !s.shape.empty(); ++k) dense = dense && s.strides[k][0] == 1;
  if (dense) {
    constexpr int kV = kPackOf<D, S>;
    bool packed = pack_aligned<kV>(m.out);
    for (int k = 0; k < K; ++k) packed = packed && pack_aligned<kV>(m.in[k]);
    with_pack<kV>(packed, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      contiguous_kernel<V><<<blocks_for(n / V, kThreads * kPacks<V>), kThreads, 0, st>>>(n, m);
    });
    SESSA_CUDA_LAUNCH_CHECK(op);
    return;
  }
  bool fits32 = n <= INT32_MAX;
  for (int k = 0; k <= K; ++k) {
    int64_t last = 0;  // offset of the last element (strides are never negative)
    for (size_t d = 0; d < s.shape.size(); ++d) last += (s.shape[d] - 1) * s.strides[k][d];
    fits32 = fits32 && last <= INT32_MAX;
  }
  const StridedIndexer<K + 1> ix(s.shape, s.strides);
  const unsigned blocks = grid_stride_blocks(n);
  if (fits32)
    strided_kernel<uint32_t><<<blocks, kThreads, 0, st>>>(uint32_t(n), ix, m);
  else
    strided_kernel<int64_t><<<blocks, kThreads, 0, st>>>(n, ix, m);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// ---- dtypes -------------------------------------------------------------------------------

// The CPU's conversions (tensor/cpu/loops.h): bfloat16 goes through float, with
// round-to-nearest-even; everything else is a C++ conversion.
template <class To, class From>
__device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<To, From>)
    return v;
  else if constexpr (std::is_same_v<From, bf16_t>)
    return To(__bfloat162float(v));
  else if constexpr (std::is_same_v<To, bf16_t>)
    return __float2bfloat16(float(v));
  else
    return To(v);
}

// ---- ops ----------------------------------------------------------------------------------
// Each maps the stored input values v[0 .. K-1] to the stored output value.

// A value in storage dtype T from its arithmetic dtype.
template <class T>
__device__ __forceinline__ T to_storage(acc_t<T> v) {
  if constexpr (std::is_same_v<T, bf16_t>)
    return __float2bfloat16(v);
  else
    return T(v);
}
template <class T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return load(&v);
}

template <class D, class S>
struct CopyOp {  // K = 1
  __device__ D operator()(const S (&v)[1]) const { return convert<D>(v[0]); }
};

template <class T>
struct FillOp {  // K = 0
  double fill;
  __device__ T operator()(const T (&)[1]) const { return convert<T>(fill); }
};

template <ops::Binary op, class T>
struct BinaryOp {  // K = 2: a, b
  __device__ T operator()(const T (&v)[2]) const {
    const acc_t<T> u = to_acc(v[0]), w = to_acc(v[1]);
    if constexpr (op == ops::Binary::Add)
      return to_storage<T>(u + w);
    else if constexpr (op == ops::Binary::Sub)
      return to_storage<T>(u - w);
    else if constexpr (op == ops::Binary::Mul)
      return to_storage<T>(u * w);
    else
      return to_storage<T>(u / w);
  }
};

// K = 1: x (op) s, or s (op) x when kScalarFirst, with s the one element at `scalar` (read on
// the device; the threads' loads of it hit one cached line): a binary op with a one-element
// operand (a 0-d scale such as the loss's gradient) as a map over the other in packs, with
// BinaryOp's arithmetic, so the values are those of the broadcasting path.
template <ops::Binary op, class T, bool kScalarFirst>
struct ScalarBinaryOp {
  const T* scalar;
  __device__ T operator()(const T (&v)[1]) const {
    const T s = *scalar, pair[2] = {kScalarFirst ? s : v[0], kScalarFirst ? v[0] : s};
    return BinaryOp<op, T>{}(pair);
  }
};

template <class T>
struct AffineOp {  // K = 1: alpha x + beta
  acc_t<T> alpha, beta;
  __device__ T operator()(const T (&v)[1]) const { return to_storage<T>(alpha * to_acc(v[0]) + beta); }
};

// K = 1, in place: dst + alpha src, src of any float dtype, in dst's arithmetic type; with
// kOnDevice, alpha times the one value at `scale` (a 0-d tensor on the device, no host read).
template <class D, class S, bool kOnDevice = false>
struct AccumulateOp {
  static constexpr bool kInPlace = true;
  acc_t<D> alpha;
  const acc_t<D>* scale;
  __device__ D operator()(D dst, const S (&v)[1]) const {
    const acc_t<D> a = kOnDevice ? alpha * *scale : alpha;
    return to_storage<D>(to_acc(dst) + a * acc_t<D>(to_acc(v[0])));
  }
};

// ---- unary math: the table of tensor/scalar_math.h, shared with the CPU ---------------------

template <ops::Unary op, class T>
struct UnaryOp {  // K = 1: x
  __device__ T operator()(const T (&v)[1]) const { return to_storage<T>(math::unary_value<op>(to_acc(v[0]))); }
};

template <ops::Unary op, class T>
struct UnaryBackwardOp {  // K = 2: x, dy -> dy f'(x)
  __device__ T operator()(const T (&v)[2]) const {
    return to_storage<T>(to_acc(v[1]) * math::unary_derivative<op>(to_acc(v[0])));
  }
};

// The gradients of y = a * b over n contiguous elements: da = dy b, db = dy a, each product in
// the arithmetic type and rounded once, as BinaryOp<Mul> does; packs as contiguous_kernel.
template <int V, class T>
__global__ void __launch_bounds__(kThreads)
    mul_grads_kernel(int64_t n, const T* __restrict__ dy, const T* __restrict__ a, const T* __restrict__ b,
                     T* __restrict__ da, T* __restrict__ db) {
  const int64_t packs = n / V, base = int64_t(blockIdx.x) * kPacks<V> * blockDim.x + threadIdx.x;
  Pack<T, V> pg[kPacks<V>], pa[kPacks<V>], pb[kPacks<V>];
#pragma unroll
  for (int j = 0; j < kPacks<V>; ++j) {
    const int64_t p = base + j * blockDim.x;
    if (p < packs) pg[j] = load_pack<V>(dy, p * V), pa[j] = load_pack<V>(a, p * V), pb[j] = load_pack<V>(b, p * V);
  }
#pragma unroll
  for (int j = 0; j < kPacks<V>; ++j) {
    const int64_t p = base + j * blockDim.x;
    if (p >= packs) continue;
    Pack<T, V> ga, gb;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const acc_t<T> g = to_acc(pg[j].v[e]);
      ga.v[e] = to_storage<T>(g * to_acc(pb[j].v[e])), gb.v[e] = to_storage<T>(g * to_acc(pa[j].v[e]));
    }
    store_pack(da, p * V, ga), store_pack(db, p * V, gb);
  }
  if (V > 1 && blockIdx.x == 0 && threadIdx.x < n % V) {  // the tail
    const int64_t i = packs * V + threadIdx.x;
    const acc_t<T> g = to_acc(dy[i]);
    da[i] = to_storage<T>(g * to_acc(b[i])), db[i] = to_storage<T>(g * to_acc(a[i]));
  }
}

const char* binary_name(ops::Binary op) {
  return op == ops::Binary::Add ? "add" : op == ops::Binary::Sub ? "sub" : op == ops::Binary::Mul ? "mul" : "div";
}

}  // namespace

// ---- host entry points -----------------------------------------------------------------------

void copy_(const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous() && dst.numel() == src.numel()) {
    if (dst.raw_data() != src.raw_data() && dst.numel() > 0)
      SESSA_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(dst.numel()) * dtype_size(dst.dtype()),
                                       cudaMemcpyDeviceToDevice, stream(dst.device().index)),
                       "copy_");
    return;
  }
  const Shape src_strides = broadcast_strides(src.shape(), src.strides(), dst.shape());
  dispatch_dtype<bf16_t>(dst.dtype(), [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_dtype<bf16_t>(src.dtype(), [&](auto src_tag) {
      using S = decltype(src_tag);
      launch("copy_", dst.device(), dst.shape(), {dst.strides(), src_strides},
             Map<D, S, 1, CopyOp<D, S>>{ptr<D>(dst), {ptr<const S>(src)}, {}});
    });
  });
}

void fill_(const Tensor& x, double value) {
  if (value == 0.0 && !std::signbit(value) && x.is_contiguous()) {  // all-zero bits in every dtype
    if (x.numel() > 0)
      SESSA_CUDA_CHECK(
          cudaMemsetAsync(x.raw_data(), 0, size_t(x.numel()) * dtype_size(x.dtype()), stream(x.device().index)),
          "fill_");
    return;
  }
  dispatch_dtype<bf16_t>(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    launch("fill_", x.device(), x.shape(), {x.strides()}, Map<T, T, 0, FillOp<T>>{ptr<T>(x), {}, {value}});
  });
}

Tensor binary(ops::Binary op, const Tensor& a, const Tensor& b, const Shape& out_shape) {
  const char* name = binary_name(op);
  Tensor out = Tensor::empty(out_shape, a.options());
  const std::array<Shape, 3> strides{out.strides(), broadcast_strides(a.shape(), a.strides(), out_shape),
                                     broadcast_strides(b.shape(), b.strides(), out_shape)};
  dispatch_float(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    T* y = ptr<T>(out);
    const T *pa = ptr<const T>(a), *pb = ptr<const T>(b);
    auto run = [&](auto op_tag) {
      constexpr ops::Binary kOp = decltype(op_tag)::value;
      // One operand a single element beside a contiguous one of the output's shape: the
      // broadcasting path would index every element of the output; this is a dense map.
      if (b.numel() == 1 && a.is_contiguous() && a.shape() == out_shape) {
        launch(name, out.device(), out_shape, {out.strides(), a.strides()},
               Map<T, T, 1, ScalarBinaryOp<kOp, T, false>>{y, {pa}, {pb}});
      } else if (a.numel() == 1 && b.is_contiguous() && b.shape() == out_shape) {
        launch(name, out.device(), out_shape, {out.strides(), b.strides()},
               Map<T, T, 1, ScalarBinaryOp<kOp, T, true>>{y, {pb}, {pa}});
      } else {
        launch(name, out.device(), out_shape, strides, Map<T, T, 2, BinaryOp<kOp, T>>{y, {pa, pb}, {}});
      }
    };
    switch (op) {
      case ops::Binary::Add:
        run(std::integral_constant<ops::Binary, ops::Binary::Add>{});
        break;
      case ops::Binary::Sub:
        run(std::integral_constant<ops::Binary, ops::Binary::Sub>{});
        break;
      case ops::Binary::Mul:
        run(std::integral_constant<ops::Binary, ops::Binary::Mul>{});
        break;
      case ops::Binary::Div:
        run(std::integral_constant<ops::Binary, ops::Binary::Div>{});
        break;
    }
  });
  return out;
}

ops::MulGrads mul_grads(const Tensor& dy, const Tensor& a, const Tensor& b) {
  const Shape& shape = a.shape();
  ops::MulGrads g{Tensor::empty(shape, a.options()), Tensor::empty(shape, b.options())};
  const int64_t n = a.numel();
  if (n == 0) return g;
  dispatch_float(a.dtype(), "mul_grads", [&](auto tag) {
    using T = decltype(tag);
    const T *pg = ptr<const T>(dy), *pa = ptr<const T>(a), *pb = ptr<const T>(b);
    T *da = ptr<T>(g.da), *db = ptr<T>(g.db);
    constexpr int kV = kPackOf<T>;
    const bool packed = pack_aligned<kV>(pg) && pack_aligned<kV>(pa) && pack_aligned<kV>(pb) &&
                        pack_aligned<kV>(static_cast<const T*>(da)) && pack_aligned<kV>(static_cast<const T*>(db));
    with_pack<kV>(packed, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      mul_grads_kernel<V>
          <<<blocks_for(n / V, kThreads * kPacks<V>), kThreads, 0, stream(a.device().index)>>>(n, pg, pa, pb, da, db);
    });
    SESSA_CUDA_LAUNCH_CHECK("mul_grads");
  });
  return g;
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  Tensor out = empty_like(x);
  dispatch_float(x.dtype(), "affine", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    launch("affine", x.device(), x.shape(), {out.strides(), x.strides()},
           Map<T, T, 1, AffineOp<T>>{ptr<T>(out), {ptr<const T>(x)}, {A(alpha), A(beta)}});
  });
  return out;
}

void add_(const Tensor& dst, const Tensor& src, double alpha) {
  dispatch_float(dst.dtype(), "add_", [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_float(src.dtype(), "add_", [&](auto src_tag) {
      using S = decltype(src_tag);
      launch("add_", dst.device(), dst.shape(),
             {dst.strides(), broadcast_strides(src.shape(), src.strides(), dst.shape())},
             Map<D, S, 1, AccumulateOp<D, S>>{ptr<D>(dst), {ptr<const S>(src)}, {acc_t<D>(alpha), nullptr}});
    });
  });
}

void add_(const Tensor& dst, const Tensor& src, const Tensor& alpha) {
  const Tensor scale =
      alpha.dtype() == accumulation_dtype(dst.dtype()) ? alpha : ops::cast(alpha, accumulation_dtype(dst.dtype()));
  dispatch_float(dst.dtype(), "add_", [&](auto dst_tag) {
    using D = decltype(dst_tag);
    using A = acc_t<D>;
    dispatch_float(src.dtype(), "add_", [&](auto src_tag) {
      using S = decltype(src_tag);
      launch("add_", dst.device(), dst.shape(),
             {dst.strides(), broadcast_strides(src.shape(), src.strides(), dst.shape())},
             Map<D, S, 1, AccumulateOp<D, S, true>>{ptr<D>(dst), {ptr<const S>(src)}, {A(1), ptr<const A>(scale)}});
    });
  });
}

Tensor unary(ops::Unary op, const Tensor& x) {
  Tensor out = empty_like(x);
  dispatch_float(x.dtype(), ops::unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    math::dispatch_unary(op, [&](auto op_tag) {
      using Op = UnaryOp<decltype(op_tag)::value, T>;
      launch(ops::unary_name(op), x.device(), x.shape(), {out.strides(), x.strides()},
             Map<T, T, 1, Op>{ptr<T>(out), {ptr<const T>(x)}, {}});
    });
  });
  return out;
}

Tensor unary_backward(ops::Unary op, const Tensor& x, const Tensor& dy) {
  Tensor dx = empty_like(x);
  dispatch_float(x.dtype(), ops::unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    math::dispatch_unary(op, [&](auto op_tag) {
      using Op = UnaryBackwardOp<decltype(op_tag)::value, T>;
      launch(ops::unary_name(op), x.device(), x.shape(), {dx.strides(), x.strides(), dy.strides()},
             Map<T, T, 2, Op>{ptr<T>(dx), {ptr<const T>(x), ptr<const T>(dy)}, {}});
    });
  });
  return dx;
}

}  // namespace sessa::cuda
