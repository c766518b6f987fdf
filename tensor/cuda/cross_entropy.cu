// Mean cross-entropy of logits (N, V) against int32 targets (N) on CUDA.
//
// Forward, one block per row r with target t != ignore_index, in one pass over the row:
// each thread reads packs of P elements (16 bytes when V and the pointers allow, else 1)
// and keeps a running max m and sum s of exp(x - m) over them (s rescaled when a pack
// raises m: one extra exp per pack, not per element); the block merges them into the
// row max M and
//   lse_r = M + log sum_threads s * exp(m - M),   loss_r = lse_r - x_{r,t}.
// A second, single-block kernel sums loss_r in a fixed order (deterministic) and divides
// by the count of non-ignored targets (the host's count, or counted there; not for
// LossReduction::Sum). inverse_target_count counts in one block too. Ignored rows
// skip the row and store lse = loss = 0. A target outside [0, V) gives a NaN row loss
// instead of reading out of bounds.
// Backward: a one-block kernel computes g = dloss / count on the device (no host sync);
// then per row dx_j = g * (exp(x_j - lse) - [j == t]), and 0 on ignored rows.
// Loss and gradient in one pass (cross_entropy_and_grad_, what the chunked LM head runs):
// per row, the forward's statistics while the row is copied into shared memory, then the
// gradient from there, written over the logits: one read and one write of the (N, V)
// logits instead of the two kernels' two reads and a write.
// lse, the row losses and the loss are float32 (float64 for float64 logits); exp(x - c) for a
// row's shift c is 2^(x log2 e - c log2 e) in float32 (ShiftedExp: one fma and exp2, within a
// few 1e-6 relative of expf), since the two exponentials per logit are most of the work.
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/rowops.h"

namespace sessa::cuda {

namespace {

// exp(x - c) for a fixed shift c (the running max, the row's lse): in float32 as
// 2^(x log2 e - c log2 e), one fma and the GPU's exp2 (2 ulp), instead of expf's longer
// range reduction, twice per logit; float64 as exp(x - c).
template <class A>
struct ShiftedExp {
  A c;
  __device__ A operator()(A x) const { return math::exp(x - c); }
};
template <>
struct ShiftedExp<float> {
  float c2;  // c log2 e
  __device__ explicit ShiftedExp(float c) : c2(c * float(math::kLog2e)) {}
  __device__ float operator()(float x) const { return exp2f(fmaf(x, float(math::kLog2e), -c2)); }
};

// The running max m and sum s of exp(x - m) over a pack (s rescaled when the pack raises m:
// one extra exp per pack, not per element; s = 0 while m = -inf).
template <int P, class T>
__device__ __forceinline__ void absorb_pack(const Pack<T, P>& pack, acc_t<T>& m, acc_t<T>& s) {
  using A = acc_t<T>;
  A v[P], pm = m;
#pragma unroll
  for (int e = 0; e < P; ++e) v[e] = load(&pack.v[e]), pm = max(pm, v[e]);
  if (pm != m) s *= ShiftedExp<A>{pm}(m), m = pm;
  const ShiftedExp<A> exp_m{m};
#pragma unroll
  for (int e = 0; e < P; ++e) s += exp_m(v[e]);
}

// dx for a pack of logits starting at column j0: g (exp(x - lse) - [j == t]).
template <int P, class T>
__device__ __forceinline__ Pack<T, P> gradient_pack(const Pack<T, P>& in, const ShiftedExp<acc_t<T>>& exp_lse,
                                                    acc_t<T> g, int64_t j0, int64_t t) {
  using A = acc_t<T>;
  const int target = t >= j0 && t < j0 + P ? int(t - j0) : -1;  // the target's place in the pack
  Pack<T, P> out;
#pragma unroll
  for (int e = 0; e < P; ++e) store(&out.v[e], g * (exp_lse(load(&in.v[e])) - A(e == target)));
  return out;
}

template <int P, class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ x, const int32_t* __restrict__ targets,
                                             acc_t<T>* __restrict__ lse, acc_t<T>* __restrict__ row_loss, int64_t V,
                                             int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x, t = targets[r];
  if (t == ignore_index) {
    if (threadIdx.x == 0) lse[r] = 0, row_loss[r] = 0;
    return;
  }
  const T* xr = x + r * V;
  A m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < V / P; k += blockDim.x) absorb_pack(load_pack<P>(xr, k * P), m, s);
  const A row_max = block_max(m);
  const A total = block_sum(s * ShiftedExp<A>{row_max}(m));  // a thread without elements adds 0 * 0
  if (threadIdx.x == 0) {
    const A l = row_max + math::log(total);
    lse[r] = l;
    row_loss[r] = (t >= 0 && t < V) ? l - load(xr + t) : A(NAN);
  }
}

// Number of targets that are not ignore_index (every thread gets it); host_count when known.
__device__ int64_t counted_targets(const int32_t* targets, int64_t N, int64_t ignore_index, int64_t host_count) {
  if (host_count >= 0) return host_count;
  long long c = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) c += targets[i] != ignore_index;
  return block_sum(c);
}

// loss = the mean of the row losses, or (sum) their sum, or (sum and add) loss + their sum.
template <class A>
__global__ void cross_entropy_mean_kernel(const A* __restrict__ row_loss, const int32_t* __restrict__ targets,
                                          int64_t N, int64_t ignore_index, int64_t host_count, bool sum, bool add,
                                          A* __restrict__ loss) {
  A s = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s += row_loss[i];
  s = block_sum(s);
  if (sum) {
    if (threadIdx.x == 0) *loss = add ? *loss + s : s;
    return;
  }
  const int64_t count = counted_targets(targets, N, ignore_index, host_count);
  if (threadIdx.x == 0) *loss = count > 0 ? s / A(count) : A(0);
}

template <class A>
__global__ void inverse_target_count_kernel(const int32_t* __restrict__ targets, int64_t N, int64_t ignore_index,
                                            A* __restrict__ out) {
  const int64_t count = counted_targets(targets, N, ignore_index, -1);
  if (threadIdx.x == 0) *out = count > 0 ? A(1) / A(count) : A(0);
}

template <class D, class A>
__global__ void cross_entropy_scale_kernel(const D* __restrict__ dloss, const int32_t* __restrict__ targets, int64_t N,
                                           int64_t ignore_index, int64_t host_count, A* __restrict__ scale) {
  const int64_t count = counted_targets(targets, N, ignore_index, host_count);
  if (threadIdx.x == 0) *scale = count > 0 ? A(load(dloss)) / A(count) : A(0);
}

// dx in packs of P, like the forward.
template <int P, class T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ x, const int32_t* __restrict__ targets,
                                              const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ scale,
                                              T* __restrict__ dx, int64_t V, int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x, t = targets[r];
  const T* xr = x + r * V;
  T* dr = dx + r * V;
  const bool ignored = t == ignore_index;
  const A l = ignored ? A(0) : lse[r], g = ignored ? A(0) : *scale;
  const ShiftedExp<A> exp_lse{l};
  for (int64_t k = threadIdx.x; k < V / P; k += blockDim.x) {
    Pack<T, P> out;
    if (ignored) {
#pragma unroll
      for (int e = 0; e < P; ++e) store(&out.v[e], A(0));
    } else {
      out = gradient_pack(load_pack<P>(xr, k * P), exp_lse, g, k * P, t);
    }
    store_pack(dr, k * P, out);
  }
}

// dx = scale (softmax(x) - onehot(t)) written over x, row_loss = lse - x_t, per row. The
// first sweep copies the row's first `cached` packs into shared memory (kCacheBytes: all of a
// bfloat16 row of GPT-2's 50304) and the second reads them from there; the rest of a longer
// row is read from memory again. Two blocks per SM (each thread reads back only what it
// stored itself, so the cache needs no barrier of its own).
constexpr int kFusedThreads = 512, kBatch = 4;
constexpr size_t kCacheBytes = 104 * 1024;
template <int P, class T>
__global__ void __launch_bounds__(kFusedThreads, 2)
    cross_entropy_and_grad_kernel(T* x, const int32_t* __restrict__ targets, const acc_t<T>* __restrict__ scale,
                                  acc_t<T>* __restrict__ row_loss, int64_t V, int64_t ignore_index, int64_t cached) {
  using A = acc_t<T>;
  extern __shared__ uint4 cache_raw[];
  auto* cache = reinterpret_cast<Pack<T, P>*>(cache_raw);
  const int64_t r = blockIdx.x, t = targets[r], packs = V / P;
  T* xr = x + r * V;
  if (t == ignore_index) {
    Pack<T, P> zero;
#pragma unroll
    for (int e = 0; e < P; ++e) store(&zero.v[e], A(0));
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) store_pack(xr, k * P, zero);
    if (threadIdx.x == 0) row_loss[r] = 0;
    return;
  }
  const A target_logit = t >= 0 && t < V ? load(xr + t) : A(NAN);  // read before the second sweep writes
  // First sweep: the running max m and sum s of exp(x - m), as in the forward kernel, over
  // batches of kBatch packs per thread whose loads are all issued before any is used (with
  // two blocks per SM, one load in flight per thread would leave the memory system idle).
  A m = -INFINITY, s = 0;
  for (int64_t k0 = threadIdx.x; k0 < packs; k0 += kBatch * blockDim.x) {
    Pack<T, P> batch[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (k0 + b * blockDim.x < packs) batch[b] = load_pack<P>(xr, (k0 + b * blockDim.x) * P);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t k = k0 + b * blockDim.x;
      if (k >= packs) break;
      if (k < cached) cache[k] = batch[b];
      absorb_pack(batch[b], m, s);
    }
  }
  const A row_max = block_max(m);
  const A lse = row_max + math::log(block_sum(s * ShiftedExp<A>{row_max}(m)));
  if (threadIdx.x == 0) row_loss[r] = lse - target_logit;
  // Second sweep: the gradient, over the logits.
  const A g = *scale;
  const ShiftedExp<A> exp_lse{lse};
#pragma unroll 4
  for (int64_t k = threadIdx.x; k < packs; k += blockDim.x)
    store_pack(xr, k * P, gradient_pack(k < cached ? cache[k] : load_pack<P>(xr, k * P), exp_lse, g, k * P, t));
}

constexpr int kReduceThreads = 1024;

}  // namespace

ops::CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets_in, int64_t ignore_index, int64_t count,
                                   ops::LossReduction reduction) {
  Tensor x = ops::contiguous(logits), targets = ops::contiguous(targets_in.to(logits.device()));
  const int64_t N = x.size(0), V = x.size(1);
  const TensorOptions sopt{accumulation_dtype(x.dtype()), x.device()};
  ops::CrossEntropyOut res{Tensor::empty(Shape{}, sopt), Tensor::empty({N}, sopt), count};
  Tensor row_loss = Tensor::empty({N}, sopt);
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (N > 0) {
      constexpr int P = kPackOf<T>;
      with_pack<P>(V % P == 0 && pack_aligned<P>(ptr<T>(x)), [&](auto pack) {
        cross_entropy_forward_kernel<decltype(pack)::value><<<unsigned(N), kThreads, 0, st>>>(
            ptr<T>(x), ptr<int32_t>(targets), ptr<A>(res.lse), ptr<A>(row_loss), V, ignore_index);
      });
      SESSA_CUDA_LAUNCH_CHECK("cross_entropy");
    }
    cross_entropy_mean_kernel<A><<<1, kReduceThreads, 0, st>>>(ptr<A>(row_loss), ptr<int32_t>(targets), N, ignore_index,
                                                               count, reduction == ops::LossReduction::Sum, false,
                                                               ptr<A>(res.loss));
    SESSA_CUDA_LAUNCH_CHECK("cross_entropy");
  });
  return res;
}

Tensor inverse_target_count(const Tensor& targets_in, int64_t ignore_index, DType dtype) {
  const Tensor targets = ops::contiguous(targets_in);
  Tensor out = Tensor::empty(Shape{}, {dtype, targets.device()});
  cudaStream_t st = stream(targets.device().index);
  const int64_t N = targets.numel();
  if (dtype == DType::F64)  // float32 or float64 (checked in tensor/ops/cross_entropy.cpp)
    inverse_target_count_kernel<double>
        <<<1, kReduceThreads, 0, st>>>(ptr<int32_t>(targets), N, ignore_index, ptr<double>(out));
  else
    inverse_target_count_kernel<float>
        <<<1, kReduceThreads, 0, st>>>(ptr<int32_t>(targets), N, ignore_index, ptr<float>(out));
  SESSA_CUDA_LAUNCH_CHECK("inverse_target_count");
  return out;
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets_in, const Tensor& lse_in,
                              int64_t ignore_index, int64_t count) {
  const char* op = "cross_entropy_backward";
  SESSA_CHECK(lse_in.device() == logits.device(), op,
              "lse " << lse_in.str() << " is not on the device of " << logits.str());
  Tensor x = ops::contiguous(logits), targets = ops::contiguous(targets_in.to(logits.device()));
  Tensor lse = ops::contiguous(lse_in), d = dloss.to(logits.device());
  const int64_t N = x.size(0), V = x.size(1);
  Tensor dx = Tensor::empty(x.shape(), x.options());
  if (dx.numel() == 0) return dx;
  const int64_t host_count = count;
  Tensor scale = Tensor::empty(Shape{}, {accumulation_dtype(x.dtype()), x.device()});
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_float(d.dtype(), op, [&](auto dtag) {
      using D = decltype(dtag);
      cross_entropy_scale_kernel<D, A>
          <<<1, kReduceThreads, 0, st>>>(ptr<D>(d), ptr<int32_t>(targets), N, ignore_index, host_count, ptr<A>(scale));
      SESSA_CUDA_LAUNCH_CHECK(op);
    });
    constexpr int P = kPackOf<T>;
    with_pack<P>(V % P == 0 && pack_aligned<P>(ptr<T>(x)) && pack_aligned<P>(ptr<T>(dx)), [&](auto pack) {
      cross_entropy_backward_kernel<decltype(pack)::value><<<unsigned(N), kThreads, 0, st>>>(
          ptr<T>(x), ptr<int32_t>(targets), ptr<A>(lse), ptr<A>(scale), ptr<T>(dx), V, ignore_index);
    });
    SESSA_CUDA_LAUNCH_CHECK(op);
  });
  return dx;
}

void cross_entropy_and_grad_(const Tensor& logits, const Tensor& targets_in, int64_t ignore_index, const Tensor& scale,
                             const Tensor& loss_sum) {
  const char* op = "cross_entropy_and_grad_";
  const Tensor targets = ops::contiguous(targets_in.to(logits.device()));
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor row_loss = Tensor::empty({N}, loss_sum.options());
  cudaStream_t st = stream(logits.device().index);
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (N > 0) {
      constexpr int P = kPackOf<T>;
      with_pack<P>(V % P == 0 && pack_aligned<P>(ptr<T>(logits)), [&](auto pack) {
        constexpr int W = decltype(pack)::value;
        const int64_t cached = std::min<int64_t>(V / W, kCacheBytes / sizeof(Pack<T, W>));
        const size_t smem = size_t(cached) * sizeof(Pack<T, W>);
        auto kernel = cross_entropy_and_grad_kernel<W, T>;
        allow_dynamic_smem(kernel, smem, op);
        kernel<<<unsigned(N), kFusedThreads, smem, st>>>(ptr<T>(logits), ptr<int32_t>(targets), ptr<A>(scale),
                                                         ptr<A>(row_loss), V, ignore_index, cached);
      });
      SESSA_CUDA_LAUNCH_CHECK(op);
    }
    cross_entropy_mean_kernel<A><<<1, kReduceThreads, 0, st>>>(ptr<A>(row_loss), ptr<int32_t>(targets), N, ignore_index,
                                                               -1, true, true, ptr<A>(loss_sum));
    SESSA_CUDA_LAUNCH_CHECK(op);
  });
}

}  // namespace sessa::cuda
