// Elementwise kernels: copies and casts, fills, binary arithmetic with broadcasting,
// affine maps, in-place accumulation, and unary math with its derivative.
//
// Plan: each op is a small functor applied at the element offsets of N strided
// tensors that share one (broadcast) shape. Before launching, the host simplifies
// the shape: size-1 dims are dropped and neighbouring dims that are nested in every
// tensor merge, so contiguous operands become one dim and a bias broadcast over
// (B, T, C) becomes (B*T, C). The grid-stride kernel turns a linear index into
// offsets with one division per remaining dim (none for the outermost), in 32-bit
// arithmetic whenever every index and offset fits; when every operand is contiguous in
// the output's shape a simpler kernel keeps several loads in flight per thread. Same-dtype
// contiguous copies are a cudaMemcpyAsync; zero fills of contiguous tensors are a
// cudaMemsetAsync.
// Arithmetic is in float (double for double); bfloat16 is only the storage.
#include <climits>
#include <cmath>
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

// out[off[0]] = f.value(off) for every linear index i < n, off[k] = element offset of i in
// tensor k (tensor 0 is the output).
template <class I, int N, class F>
__global__ void __launch_bounds__(kThreads) strided_kernel(I n, StridedIndexer<N> ix, F f) {
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += I(gridDim.x) * blockDim.x) {
    I off[N];
    I rest = i;
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ix.ndim - 1; d > 0; --d) {
      const I size = I(ix.shape[d]);
      const I c = rest % size;
      rest /= size;
      for (int k = 0; k < N; ++k) off[k] += c * I(ix.strides[k][d]);
    }
    if (ix.ndim > 0)
      for (int k = 0; k < N; ++k) off[k] += rest * I(ix.strides[k][0]);
    f.out[off[0]] = f.value(off);
  }
}

// The same when every tensor is contiguous with the output's shape (offset = index): each
// thread reads kUnroll elements (a block's stride apart, so every read is coalesced)
// before it writes any, which keeps kUnroll loads in flight per thread; one element per
// thread left the bandwidth-bound ops at a third of the memory bandwidth.
constexpr int kUnroll = 8;
template <int N, class F>
__global__ void __launch_bounds__(kThreads) contiguous_kernel(int64_t n, F f) {
  const int64_t base = int64_t(blockIdx.x) * kUnroll * blockDim.x + threadIdx.x;
  decltype(f.value(static_cast<const int64_t*>(nullptr))) v[kUnroll];
#pragma unroll
  for (int j = 0; j < kUnroll; ++j) {
    int64_t off[N];
    for (int k = 0; k < N; ++k) off[k] = base + j * blockDim.x;
    if (off[0] < n) v[j] = f.value(off);
  }
#pragma unroll
  for (int j = 0; j < kUnroll; ++j)
    if (base + j * blockDim.x < n) f.out[base + j * blockDim.x] = v[j];
}

// Runs f over `shape`, with strides[k] the (broadcast) strides of tensor k.
template <int N, class F>
void launch(const char* op, Device device, const Shape& shape, const std::array<Shape, N>& strides, const F& f) {
  const int64_t n = numel(shape);
  if (n == 0) return;
  const Strided<N> s = simplify<N>(shape, strides);
  cudaStream_t st = stream(device.index);
  bool dense = s.shape.size() <= 1;
  for (int k = 0; k < N && !s.shape.empty(); ++k) dense = dense && s.strides[k][0] == 1;
  if (dense) {
    contiguous_kernel<N><<<blocks_for(n, kThreads * kUnroll), kThreads, 0, st>>>(n, f);
    SESSA_CUDA_LAUNCH_CHECK(op);
    return;
  }
  bool fits32 = n <= INT32_MAX;
  for (int k = 0; k < N; ++k) {
    int64_t last = 0;  // offset of the last element (strides are never negative)
    for (size_t d = 0; d < s.shape.size(); ++d) last += (s.shape[d] - 1) * s.strides[k][d];
    fits32 = fits32 && last <= INT32_MAX;
  }
  const StridedIndexer<N> ix(s.shape, s.strides);
  const unsigned blocks = grid_stride_blocks(n);
  if (fits32)
    strided_kernel<uint32_t, N><<<blocks, kThreads, 0, st>>>(uint32_t(n), ix, f);
  else
    strided_kernel<int64_t, N><<<blocks, kThreads, 0, st>>>(n, ix, f);
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

// ---- functors -----------------------------------------------------------------------------
// Each has the output pointer `out` and value(off): the output element at off[0] computed
// from the inputs at off[1..] (AddFn also reads out[off[0]]); the kernels store it.

// A value in storage dtype T from its arithmetic dtype.
template <class T>
__device__ __forceinline__ T to_storage(acc_t<T> v) {
  if constexpr (std::is_same_v<T, bf16_t>)
    return __float2bfloat16(v);
  else
    return T(v);
}

template <class D, class S>
struct CopyFn {
  D* out;
  const S* src;
  template <class I>
  __device__ D value(const I* off) const {
    return convert<D>(src[off[1]]);
  }
};

template <class T>
struct FillFn {
  T* out;
  double fill;
  template <class I>
  __device__ T value(const I*) const {
    return convert<T>(fill);
  }
};

template <ops::Binary op, class T>
struct BinaryFn {
  T* out;
  const T *a, *b;
  template <class I>
  __device__ T value(const I* off) const {
    const acc_t<T> u = load(a + off[1]), w = load(b + off[2]);
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

template <class T>
struct AffineFn {
  T* out;
  const T* x;
  acc_t<T> alpha, beta;
  template <class I>
  __device__ T value(const I* off) const {
    return to_storage<T>(alpha * load(x + off[1]) + beta);
  }
};

template <class T>
struct AddFn {
  T* out;
  const T* src;
  acc_t<T> alpha;
  template <class I>
  __device__ T value(const I* off) const {
    return to_storage<T>(load(out + off[0]) + alpha * load(src + off[1]));
  }
};

// ---- unary math: the table of tensor/scalar_math.h, shared with the CPU ---------------------

template <ops::Unary op, class T>
struct UnaryFn {
  T* out;
  const T* x;
  template <class I>
  __device__ T value(const I* off) const {
    return to_storage<T>(math::unary_value<op>(load(x + off[1])));
  }
};

template <ops::Unary op, class T>
struct UnaryBackwardFn {
  T* out;
  const T *x, *dy;
  template <class I>
  __device__ T value(const I* off) const {
    return to_storage<T>(load(dy + off[2]) * math::unary_derivative<op>(load(x + off[1])));
  }
};

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
      launch<2>("copy_", dst.device(), dst.shape(), {dst.strides(), src_strides},
                CopyFn<D, S>{ptr<D>(dst), ptr<const S>(src)});
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
    launch<1>("fill_", x.device(), x.shape(), {x.strides()}, FillFn<T>{ptr<T>(x), value});
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
    switch (op) {
      case ops::Binary::Add:
        launch<3>(name, out.device(), out_shape, strides, BinaryFn<ops::Binary::Add, T>{y, pa, pb});
        break;
      case ops::Binary::Sub:
        launch<3>(name, out.device(), out_shape, strides, BinaryFn<ops::Binary::Sub, T>{y, pa, pb});
        break;
      case ops::Binary::Mul:
        launch<3>(name, out.device(), out_shape, strides, BinaryFn<ops::Binary::Mul, T>{y, pa, pb});
        break;
      case ops::Binary::Div:
        launch<3>(name, out.device(), out_shape, strides, BinaryFn<ops::Binary::Div, T>{y, pa, pb});
        break;
    }
  });
  return out;
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  Tensor out = empty_like(x);
  dispatch_float(x.dtype(), "affine", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    launch<2>("affine", x.device(), x.shape(), {out.strides(), x.strides()},
              AffineFn<T>{ptr<T>(out), ptr<const T>(x), A(alpha), A(beta)});
  });
  return out;
}

void add_(const Tensor& dst, const Tensor& src, double alpha) {
  dispatch_float(dst.dtype(), "add_", [&](auto tag) {
    using T = decltype(tag);
    launch<2>("add_", dst.device(), dst.shape(),
              {dst.strides(), broadcast_strides(src.shape(), src.strides(), dst.shape())},
              AddFn<T>{ptr<T>(dst), ptr<const T>(src), acc_t<T>(alpha)});
  });
}

Tensor unary(ops::Unary op, const Tensor& x) {
  Tensor out = empty_like(x);
  dispatch_float(x.dtype(), ops::unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    math::dispatch_unary(op, [&](auto op_tag) {
      launch<2>(ops::unary_name(op), x.device(), x.shape(), {out.strides(), x.strides()},
                UnaryFn<decltype(op_tag)::value, T>{ptr<T>(out), ptr<const T>(x)});
    });
  });
  return out;
}

Tensor unary_backward(ops::Unary op, const Tensor& x, const Tensor& dy) {
  Tensor dx = empty_like(x);
  dispatch_float(x.dtype(), ops::unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    math::dispatch_unary(op, [&](auto op_tag) {
      launch<3>(ops::unary_name(op), x.device(), x.shape(), {dx.strides(), x.strides(), dy.strides()},
                UnaryBackwardFn<decltype(op_tag)::value, T>{ptr<T>(dx), ptr<const T>(x), ptr<const T>(dy)});
    });
  });
  return dx;
}

}  // namespace sessa::cuda
