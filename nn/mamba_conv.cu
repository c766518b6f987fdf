// CUDA causal depthwise conv1d of the Mamba mixer, optionally fused with SiLU (the math:
// nn/mamba_ops.h and .cpp); the selective scan is in nn/mamba_scan.cu.
//
// Forward: one thread per output element (b, t, c); c is the fastest index, so a
// warp reads 32 consecutive channels of a row. Backward with SiLU: one elementwise
// kernel recomputes the pre-activation and turns dy into dpre = dy * SiLU'(pre) (so the
// forward saves nothing but its inputs). Backward: dx the same way (gathering dy
// from the K rows that read x[b, s, c]); dw and dbias (the bias is "tap K") reduce over
// the B*T rows: a thread owns one channel and up to kTaps taps over a contiguous run of
// rows, a block sums its 8 runs in shared memory and writes one partial per (split,
// tap, channel); nn/mamba_partials.cuh sums the splits in a fixed order, so the result
// is bitwise reproducible.
#include <algorithm>

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

// The conv at element i = (b, t, c) of a contiguous (B, T, C) tensor, before any activation.
template <class F>
__device__ __forceinline__ acc_t<F> conv_at(const F* __restrict__ x, const F* __restrict__ w,
                                            const F* __restrict__ bias, int64_t i, int T, int C, int K) {
  const int c = int(i % C), t = int(i / C % T);
  acc_t<F> acc = load(bias + c);
  for (int j = max(0, K - 1 - t); j < K; ++j)
    acc += load(w + int64_t(c) * K + j) * load(x + i - int64_t(K - 1 - j) * C);
  return acc;
}

template <class F, bool kSilu>
__global__ void conv_fwd_kernel(const F* __restrict__ x, const F* __restrict__ w, const F* __restrict__ bias,
                                F* __restrict__ y, int64_t n, int T, int C, int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const acc_t<F> v = conv_at(x, w, bias, i, T, C, K);
  store(y + i, kSilu ? v * conv_sigmoid(v) : v);
}

// With SiLU: dpre = dy * SiLU'(pre), pre recomputed; the conv backward then runs on dpre.
template <class F>
__global__ void conv_silu_grad_kernel(const F* __restrict__ dy, const F* __restrict__ x, const F* __restrict__ w,
                                      const F* __restrict__ bias, F* __restrict__ dpre, int64_t n, int T, int C,
                                      int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  using Acc = acc_t<F>;
  const Acc v = conv_at(x, w, bias, i, T, C, K), s = conv_sigmoid(v);
  store(dpre + i, load(dy + i) * (s * (Acc(1) + v * (Acc(1) - s))));
}

template <class F>
__global__ void conv_dx_kernel(const F* __restrict__ dy, const F* __restrict__ w, F* __restrict__ dx, int64_t n, int T,
                               int C, int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int c = int(i % C), s = int(i / C % T);
  acc_t<F> acc = 0;
  for (int j = max(0, s + K - T); j < K; ++j)
    acc += load(w + int64_t(c) * K + j) * load(dy + i + int64_t(K - 1 - j) * C);
  store(dx + i, acc);
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
  Tensor x = ops::contiguous(x_in), w = ops::contiguous(w_in), bias = ops::contiguous(bias_in);
  const int64_t T = x.size(1), C = x.size(2), K = w.size(1), n = x.numel();
  check_sizes("causal_conv1d", 1, n);
  Tensor y = Tensor::empty(x.shape(), x.options());
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using F = decltype(tag);
    auto kernel = silu ? conv_fwd_kernel<F, true> : conv_fwd_kernel<F, false>;
    kernel<<<blocks_for(n), kThreads, 0, st>>>(ptr<F>(x), ptr<F>(w), ptr<F>(bias), ptr<F>(y), n, int(T), int(C),
                                               int(K));
  });
  SESSA_CUDA_LAUNCH_CHECK("causal_conv1d");
  return y;
}

nn::Conv1dGrads causal_conv1d_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in,
                                       const Tensor& bias_in, bool silu) {
  const char* op = "causal_conv1d_backward";
  Tensor dy = ops::contiguous(dy_in), x = ops::contiguous(x_in), w = ops::contiguous(w_in);
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
      conv_silu_grad_kernel<F><<<blocks_for(n), kThreads, 0, st>>>(ptr<F>(dy), ptr<F>(x), ptr<F>(w), ptr<F>(bias),
                                                                   ptr<F>(dpre), n, int(T), int(C), int(K));
      SESSA_CUDA_LAUNCH_CHECK(op);
      dy = dpre;
    }
    conv_dx_kernel<F>
        <<<blocks_for(n), kThreads, 0, st>>>(ptr<F>(dy), ptr<F>(w), ptr<F>(g.dx), n, int(T), int(C), int(K));
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
