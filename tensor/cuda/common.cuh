// Helpers shared by every CUDA kernel file: dtype dispatch (float32, bfloat16,
// float64), float conversions, launch sizes, strided indexing, block reductions.
// Every kernel runs on cuda::stream(device) and is followed by SESSA_CUDA_LAUNCH_CHECK.
#pragma once
#include <cuda_bf16.h>

#include <array>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/tensor.h"

namespace sessa::cuda {

using bf16_t = __nv_bfloat16;

// Calls f(T{}) with T = float, __nv_bfloat16 or double for a floating dtype.
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32:
      return f(float{});
    case DType::BF16:
      return f(bf16_t{});
    case DType::F64:
      return f(double{});
    default:
      SESSA_FAIL(op, "unsupported dtype " << dtype_name(t) << " on cuda");
  }
}

// Arithmetic happens in float (double for double); storage may be bfloat16.
template <class T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <class T>
using acc_t = typename Acc<T>::type;

template <class T>
__device__ __forceinline__ acc_t<T> load(const T* p) {
  return acc_t<T>(*p);
}
template <>
__device__ __forceinline__ float load(const bf16_t* p) {
  return __bfloat162float(*p);
}
template <class T>
__device__ __forceinline__ void store(T* p, acc_t<T> v) {
  *p = T(v);
}
template <>
__device__ __forceinline__ void store(bf16_t* p, float v) {
  *p = __float2bfloat16(v);
}

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return unsigned(std::max<int64_t>(1, (n + threads - 1) / threads));
}

// Maps a linear index over `shape` to element offsets in N strided tensors
// (strides already broadcast to `shape`). Passed to kernels by value.
constexpr int kMaxDims = 8;
template <int N>
struct StridedIndexer {
  int ndim = 0;
  int64_t shape[kMaxDims];
  int64_t strides[N][kMaxDims];

  StridedIndexer(const Shape& s, const std::array<Shape, N>& st) {
    SESSA_CHECK(s.size() <= size_t(kMaxDims), "cuda", "tensors of more than " << kMaxDims << " dims are not supported");
    ndim = int(s.size());
    for (int d = 0; d < ndim; ++d) {
      shape[d] = s[size_t(d)];
      for (int k = 0; k < N; ++k) strides[k][d] = st[size_t(k)][size_t(d)];
    }
  }
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      int64_t c = i % shape[d];
      i /= shape[d];
      for (int k = 0; k < N; ++k) off[k] += c * strides[k][d];
    }
  }
};

// Sum over a thread block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) total += partial[w];
  return total;
}

template <class A>
__device__ A block_max(A v) {
  __shared__ A partial[32];
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A m = partial[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) m = max(m, partial[w]);
  return m;
}

}  // namespace sessa::cuda
