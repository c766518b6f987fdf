// Helpers shared by every CUDA kernel file: typed data pointers, dtype dispatch
// (float32, bfloat16, float64), the compute dtype, float conversions, launch sizes,
// strided indexing, warp and block reductions. Scalar math (exp, log, ..., the unary-op
// table) is in tensor/scalar_math.h, shared with the CPU. Every kernel runs on
// cuda::stream(device) and is followed by SESSA_CUDA_LAUNCH_CHECK.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/dispatch.h"
#include "tensor/scalar_math.h"
#include "tensor/tensor.h"

namespace sessa::cuda {

using bf16_t = __nv_bfloat16;

// t's data as a T* (device memory; no dtype check: the caller dispatched on t's dtype).
template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// Calls f(T{}) with T = float, __nv_bfloat16 or double for a floating dtype. Any dtype:
// sessa::dispatch_dtype<bf16_t> (tensor/dispatch.h).
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  return dispatch_float_dtype<bf16_t>(t, op, "cuda", std::forward<F>(f));
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
// Its dtype is accumulation_dtype(t) (tensor/dtype.h): statistics (softmax and LayerNorm
// stats, log-sum-exp, losses) and partial sums are kept in it.

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

// V consecutive elements moved as one access of V sizeof(T) bytes (V a power of two; 16
// bytes is the widest access). Pointers used as Pack<T, V>* must be that aligned.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
// Elements of the widest dtype among Ts in one 16-byte pack.
template <class... Ts>
constexpr int kPackOf = int(16 / std::max({sizeof(Ts)...}));
// Whether p may be read as Pack<T, V>*.
template <int V, class T>
inline bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * V) == 0;
}
// The pack of V elements starting at element i of p (i a multiple of V, p pack-aligned).
template <int V, class T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p, int64_t i) {
  return *reinterpret_cast<const Pack<T, V>*>(p + i);
}
template <int V, class T>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p + i) = v;
}
// A kernel's pack width as a template argument, chosen once per launch: f(integral_constant
// <int, V>) when `packed` (the sizes divide and every pointer is pack_aligned), else
// f(integral_constant<int, kFallback>).
template <int V, int kFallback = 1, class F>
void with_pack(bool packed, F&& f) {
  if (packed)
    f(std::integral_constant<int, V>{});
  else
    f(std::integral_constant<int, kFallback>{});
}

// ---- launch sizes ------------------------------------------------------------------

constexpr int kThreads = 256;
// Blocks of `threads` (or tiles of that many items) covering n items; at least 1.
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return unsigned(std::max<int64_t>(1, (n + threads - 1) / threads));
}

// Grid for a grid-stride loop over n items: blocks_for(n), capped at kMaxGridStrideBlocks.
constexpr unsigned kMaxGridStrideBlocks = 1u << 16;
inline unsigned grid_stride_blocks(int64_t n) { return std::min(blocks_for(n), kMaxGridStrideBlocks); }

// Lets `kernel` launch with `bytes` of dynamic shared memory: above the default 48 KiB a
// kernel must opt in (cudaFuncAttributeMaxDynamicSharedMemorySize); up to it, nothing to do.
template <class Kernel>
void allow_dynamic_smem(Kernel* kernel, size_t bytes, const char* op) {
  if (bytes > 48 * 1024)
    SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
}

// Threads for one block per row of `len` elements: a power of two from 32 to 256, growing
// while a thread would get more than 4 elements (softmax, row sums, amax/argmax).
inline int row_threads_pow2(int64_t len) {
  int t = 32;
  while (t < 256 && int64_t(t) * 4 < len) t *= 2;
  return t;
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

// ---- fast exponentials -----------------------------------------------------------------

// 2^x as one MUFU.EX2 (ex2.approx.ftz: relative error ~2^-22, subnormal results flushed to
// zero, where exp2f adds the range handling for them). For softmax probabilities and
// scan decays, whose values below 2^-126 make no difference. The double overload is exact.
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double exp2_fast(double x) { return exp2(x); }

// ---- reductions ------------------------------------------------------------------

// Sum (max) over each aligned group of W lanes (W a power of two, at most 32), lane
// distance halving from W / 2 to 1; every lane of the group gets the result.
template <int W = 32, class A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int W = 32, class A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = W / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The dot product of rows a and b of n elements by one warp (lane = threadIdx.x % 32)
// in the compute type; every lane gets it.
template <class T, class U>
__device__ __forceinline__ acc_t<T> warp_dot(const T* a, const U* b, int n) {
  acc_t<T> sum = 0;
  for (int i = threadIdx.x % 32; i < n; i += 32) sum += load(a + i) * load(b + i);
  return warp_sum(sum);
}

// Stores each warp's value v (lane 0's) in partial[warp] for the whole block to read.
// Starts with a barrier, so partial may be reused.
template <class A>
__device__ __forceinline__ void store_warp_partials(A v, A* partial) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
}

// Sum (max) over a thread block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. The warps' results are combined in warp order.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A partial[32];
  store_warp_partials(warp_sum(v), partial);
  A total = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) total += partial[w];
  return total;
}
template <class A>
__device__ A block_max(A v) {
  __shared__ A partial[32];
  store_warp_partials(warp_max(v), partial);
  A m = partial[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) m = max(m, partial[w]);
  return m;
}

}  // namespace sessa::cuda
