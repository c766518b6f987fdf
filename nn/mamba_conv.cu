// CUDA causal depthwise conv1d of the Mamba mixer, optionally fused with SiLU (the math:
// nn/mamba_ops.h and .cpp); the selective scan is in nn/mamba_scan.cu.
//
// Forward: one thread per pack of P consecutive channels (b, t, c0 .. c0 + P - 1), 16
// bytes when C and the pointers allow (else one channel); c is the fastest index, so a
// warp reads 32 consecutive packs of a row, one 16-byte load per tap, and the weight is
// read tap-major, (K, C), so that a pack's tap j is one 16-byte load too (from the
// (C, K) layout a warp's weight loads touched 32 sectors each). Backward with
// SiLU: one kernel of the same shape recomputes the pre-activation and turns dy into
// dpre = dy * SiLU'(pre) (so the forward saves nothing but its inputs). Backward: dx
// the same way (gathering dy from the K rows that read x[b, s, c]); dw and dbias (the bias is "tap K") reduce over
// the B*T rows: a thread owns one channel and up to kTaps taps over a contiguous run of
// rows, a block sums its 8 runs in shared memory and writes one partial per (split,
// tap, channel); nn/mamba_partials.cuh sums the splits in a fixed order, so the result
// is bitwise reproducible.
#include <algorithm>
#include <initializer_list>

#include "nn/mamba_cuda.h"
#include "nn/mamba_partials.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kWarp = 32;

// ---- causal conv1d -------------------------------------------------------------------

// sigmoid(v) and SiLU'(v) = s (1 + v (1 - s)), in the arithmetic type.
__device__ __forceinline__ float conv_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ double conv_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

// Pack q of P channels of a contiguous (B, T, C) tensor (C % P == 0): its first element
// i0 = q P, channel c0 and time t (32-bit: sizes are checked below 2^31).
struct ConvPack {
  int i0, c0, t;
  template <int P>
  __device__ __forceinline__ static ConvPack at(int q, int T, int C) {
    const int i0 = q * P;
    return {i0, i0 % C, i0 / C % T};
  }
};
// P values in the arithmetic type, stored as the pack at element i of p.
template <int P, class F>
__device__ __forceinline__ void store_acc_pack(F* p, int64_t i, const acc_t<F> (&v)[P]) {
  Pack<F, P> out;
#pragma unroll
  for (int e = 0; e < P; ++e) store(&out.v[e], v[e]);
  store_pack(p, i, out);
}

// The conv at pack c of a contiguous (B, T, C) tensor, before any activation: acc[e] for
// channel c0 + e. wt is the weight tap-major, (K, C).
template <int P, class F>
__device__ __forceinline__ void conv_at(const F* __restrict__ x, const F* __restrict__ wt, const F* __restrict__ bias,
                                        ConvPack c, int C, int K, acc_t<F> (&acc)[P]) {
  const Pack<F, P> b = load_pack<P>(bias, c.c0);
#pragma unroll
  for (int e = 0; e < P; ++e) acc[e] = load(&b.v[e]);
  for (int j = max(0, K - 1 - c.t); j < K; ++j) {
    const Pack<F, P> xv = load_pack<P>(x, c.i0 - int64_t(K - 1 - j) * C), wv = load_pack<P>(wt, int64_t(j) * C + c.c0);
#pragma unroll
    for (int e = 0; e < P; ++e) acc[e] += load(&wv.v[e]) * load(&xv.v[e]);
  }
}

template <int P, class F, bool kSilu>
__global__ void conv_fwd_kernel(const F* __restrict__ x, const F* __restrict__ wt, const F* __restrict__ bias,
                                F* __restrict__ y, int packs, int T, int C, int K) {
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= packs) return;
  const ConvPack c = ConvPack::at<P>(q, T, C);
  acc_t<F> v[P];
  conv_at<P>(x, wt, bias, c, C, K, v);
  if (kSilu)
#pragma unroll
    for (int e = 0; e < P; ++e) v[e] *= conv_sigmoid(v[e]);
  store_acc_pack<P>(y, c.i0, v);
}

// With SiLU: dpre = dy * SiLU'(pre), pre recomputed; the conv backward then runs on dpre.
template <int P, class F>
__global__ void conv_silu_grad_kernel(const F* __restrict__ dy, const F* __restrict__ x, const F* __restrict__ wt,
                                      const F* __restrict__ bias, F* __restrict__ dpre, int packs, int T, int C,
                                      int K) {
  using Acc = acc_t<F>;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= packs) return;
  const ConvPack c = ConvPack::at<P>(q, T, C);
  Acc v[P];
  conv_at<P>(x, wt, bias, c, C, K, v);
  const Pack<F, P> g = load_pack<P>(dy, c.i0);
#pragma unroll
  for (int e = 0; e < P; ++e) {
    const Acc s = conv_sigmoid(v[e]);
    v[e] = load(&g.v[e]) * (s * (Acc(1) + v[e] * (Acc(1) - s)));
  }
  store_acc_pack<P>(dpre, c.i0, v);
}

template <int P, class F>
__global__ void conv_dx_kernel(const F* __restrict__ dy, const F* __restrict__ wt, F* __restrict__ dx, int packs, int T,
                               int C, int K) {
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= packs) return;
  const ConvPack c = ConvPack::at<P>(q, T, C);  // c.t: the time s that x[b, s, c] sits at
  acc_t<F> acc[P] = {};
  for (int j = max(0, c.t + K - T); j < K; ++j) {
    const Pack<F, P> g = load_pack<P>(dy, c.i0 + int64_t(K - 1 - j) * C), wv = load_pack<P>(wt, int64_t(j) * C + c.c0);
#pragma unroll
    for (int e = 0; e < P; ++e) acc[e] += load(&wv.v[e]) * load(&g.v[e]);
  }
  store_acc_pack<P>(dx, c.i0, acc);
}

// Whether C and every pointer allow packs of kPackOf<F> channels.
template <class F>
bool channels_packed(int64_t C, std::initializer_list<const void*> ptrs) {
  bool ok = C % kPackOf<F> == 0;
  for (const void* p : ptrs) ok = ok && pack_aligned<kPackOf<F>>(static_cast<const F*>(p));
  return ok;
}

constexpr int kTaps = 8;     // taps per thread in the dw/dbias reduction (= blockDim.y)
constexpr int kRowRuns = 8;  // runs of rows per block (blockDim.y)

// grid (channel blocks, tap groups, splits), block (32, 8). partial: (splits, K + 1, C).
template <class F>
__global__ void conv_dw_partial_kernel(const F* __restrict__ dy, const F* __restrict__ x,
                                       acc_t<F>* __restrict__ partial, int64_t rows, int64_t run, int T, int C, int K) {
  using Acc = acc_t<F>;
  __shared__ Acc red[kRowRuns][kTaps][kWarp];
  const int c = blockIdx.x * kWarp + threadIdx.x, j0 = blockIdx.y * kTaps;
  const int64_t r0 = (int64_t(blockIdx.z) * kRowRuns + threadIdx.y) * run, r1 = min(rows, r0 + run);
  Acc acc[kTaps] = {};
  if (c < C && r0 < r1) {
    int t = int(r0 % T);
    for (int64_t r = r0; r < r1; ++r, t = t + 1 == T ? 0 : t + 1) {
      const Acc g = load(dy + r * C + c);
#pragma unroll
      for (int jj = 0; jj < kTaps; ++jj) {
        const int j = j0 + jj, back = K - 1 - j;  // tap j reads x at t - back
        if (j < K && t >= back)
          acc[jj] += g * load(x + (r - back) * C + c);
        else if (j == K)
          acc[jj] += g;
      }
    }
  }
#pragma unroll
  for (int jj = 0; jj < kTaps; ++jj) red[threadIdx.y][jj][threadIdx.x] = acc[jj];
  __syncthreads();
  const int j = j0 + threadIdx.y;  // this thread now sums tap j over the block's runs
  if (c >= C || j > K) return;
  Acc s = 0;
  for (int k = 0; k < kRowRuns; ++k) s += red[k][threadIdx.y][threadIdx.x];
  partial[(int64_t(blockIdx.z) * (K + 1) + j) * C + c] = s;
}

void check_sizes(const char* op, int64_t B, int64_t rows_x_width) {
  SESSA_CHECK(B <= 65535 && rows_x_width < (int64_t(1) << 31), op,
              "sizes too large for the cuda kernels (batch at most 65535, B*T*channels below 2^31)");
}

}  // namespace

Tensor causal_conv1d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, bool silu) {
  Tensor x = ops::contiguous(x_in), bias = ops::contiguous(bias_in);
  const Tensor wt = ops::contiguous(ops::transpose(w_in, 0, 1));  // (K, C)
  const int64_t T = x.size(1), C = x.size(2), K = wt.size(0), n = x.numel();
  check_sizes("causal_conv1d", 1, n);
  Tensor y = Tensor::empty(x.shape(), x.options());
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using F = decltype(tag);
    with_pack<kPackOf<F>>(channels_packed<F>(C, {x.raw_data(), bias.raw_data(), y.raw_data()}), [&](auto pack) {
      constexpr int P = decltype(pack)::value;
      auto kernel = silu ? conv_fwd_kernel<P, F, true> : conv_fwd_kernel<P, F, false>;
      kernel<<<blocks_for(n / P), kThreads, 0, st>>>(ptr<F>(x), ptr<F>(wt), ptr<F>(bias), ptr<F>(y), int(n / P), int(T),
                                                     int(C), int(K));
    });
  });
  SESSA_CUDA_LAUNCH_CHECK("causal_conv1d");
  return y;
}

nn::Conv1dGrads causal_conv1d_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in,
                                       const Tensor& bias_in, bool silu) {
  const char* op = "causal_conv1d_backward";
  Tensor dy = ops::contiguous(dy_in), x = ops::contiguous(x_in), w = ops::contiguous(w_in);
  const Tensor wt = ops::contiguous(ops::transpose(w, 0, 1));  // (K, C)
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1), n = x.numel(), rows = B * T;
  check_sizes(op, 1, n);
  nn::Conv1dGrads g{Tensor::empty(x.shape(), x.options()), Tensor::empty(w.shape(), x.options()),
                    Tensor::empty({C}, x.options())};
  // Splits of the row range: about 512 blocks in all, runs of at least 32 rows.
  const int64_t cblocks = std::max<int64_t>(1, (C + kWarp - 1) / kWarp), tgroups = (K + 1 + kTaps - 1) / kTaps;
  const int64_t max_splits = std::max<int64_t>(1, (rows + kRowRuns * 32 - 1) / (kRowRuns * 32));
  const int64_t splits = std::clamp<int64_t>(512 / (cblocks * tgroups), 1, max_splits);
  const int64_t run = std::max<int64_t>(1, (rows + splits * kRowRuns - 1) / (splits * kRowRuns));
  Tensor partial = Tensor::empty({splits, K + 1, C}, {acc_dtype(x.dtype()), x.device()});
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using Acc = acc_t<F>;
    if (silu) {  // dy becomes the gradient of the pre-activation
      Tensor bias = ops::contiguous(bias_in), dpre = Tensor::empty(x.shape(), x.options());
      const bool packed = channels_packed<F>(C, {dy.raw_data(), x.raw_data(), bias.raw_data(), dpre.raw_data()});
      with_pack<kPackOf<F>>(packed, [&](auto pack) {
        constexpr int P = decltype(pack)::value;
        conv_silu_grad_kernel<P, F><<<blocks_for(n / P), kThreads, 0, st>>>(
            ptr<F>(dy), ptr<F>(x), ptr<F>(wt), ptr<F>(bias), ptr<F>(dpre), int(n / P), int(T), int(C), int(K));
      });
      SESSA_CUDA_LAUNCH_CHECK(op);
      dy = dpre;
    }
    with_pack<kPackOf<F>>(channels_packed<F>(C, {dy.raw_data(), g.dx.raw_data()}), [&](auto pack) {
      constexpr int P = decltype(pack)::value;
      conv_dx_kernel<P, F><<<blocks_for(n / P), kThreads, 0, st>>>(ptr<F>(dy), ptr<F>(wt), ptr<F>(g.dx), int(n / P),
                                                                   int(T), int(C), int(K));
    });
    SESSA_CUDA_LAUNCH_CHECK(op);
    const dim3 grid{unsigned(cblocks), unsigned(tgroups), unsigned(splits)}, block{kWarp, kRowRuns};
    conv_dw_partial_kernel<F>
        <<<grid, block, 0, st>>>(ptr<F>(dy), ptr<F>(x), ptr<Acc>(partial), rows, run, int(T), int(C), int(K));
    SESSA_CUDA_LAUNCH_CHECK(op);
    sum_split_partials<F>(ptr<Acc>(partial), ptr<F>(g.dw), ptr<F>(g.dbias), int(splits), int(C), int(K), st, op);
  });
  return g;
}

}  // namespace sessa::cuda
