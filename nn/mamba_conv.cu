// CUDA causal depthwise conv1d of the Mamba mixer, optionally fused with SiLU (the math:
// nn/mamba_ops.h and .cpp); the selective scan is in nn/mamba_scan.cu.
//
// Forward: one thread per pack of P consecutive channels (b, t, c0 .. c0 + P - 1), 16
// bytes when C and the pointers allow (else one channel); c is the fastest index, so a
// warp reads 32 consecutive packs of a row, one 16-byte load per tap, and the weight is
// read tap-major, (K, C), so that a pack's tap j is one 16-byte load too (from the
// (C, K) layout a warp's weight loads touched 32 sectors each).
//
// Backward: one kernel. A thread owns a pack of channels (4 bf16 / float, 2 double, or one
// channel) and a run of rows of the flattened (B T, C) tensors, and walks the run in order
// keeping the last K conv inputs x and the last K pre-activation gradients in registers:
//   dpre[r] = dy[r] SiLU'(pre[r]) with pre[r] = bias + sum_j w[j] x[r - (K-1-j)] recomputed
//             from the window (so the forward saves nothing but its inputs), or dy[r];
//   dw[j] += dpre[r] x[r - (K-1-j)],  dbias += dpre[r]        (the run's partial sums);
//   dx[s]  = sum_j w[j] dpre[s + K-1-j]                       once dpre[s + K-1] is known,
//            or at the end of s's sequence (dpre past it is 0).
// So x and dy are read once (plus K - 1 rows either side of a run) and dx written once,
// instead of three kernels (dpre, dx, and a dw pass that read x K times in 2-byte loads:
// 2.06 ms of a 38.1 ms Mamba step at 16 x 1024; as one kernel 0.306 -> 0.126 ms per layer,
// docs/performance.md). A block's 8 runs add their sums in shared memory; the blocks'
// (K + 1, C) partials (the bias is "tap K") are summed in a fixed order by
// nn/mamba_partials.cuh, so dw and dbias are bitwise reproducible. The windows are indexed
// at compile time (the newest row last; taps of a kernel narrower than the window weighted
// 0): Mamba's K = 4 in packs, other K up to 16 one channel per thread.
#include <algorithm>
#include <initializer_list>

#include "nn/mamba_cuda.h"
#include "nn/mamba_ops.h"
#include "nn/mamba_partials.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

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

// Whether C and every pointer allow packs of V channels.
template <int V, class F>
bool channels_packed(int64_t C, std::initializer_list<const void*> ptrs) {
  bool ok = C % V == 0;
  for (const void* p : ptrs) ok = ok && pack_aligned<V>(static_cast<const F*>(p));
  return ok;
}

// ---- backward ------------------------------------------------------------------------

constexpr int64_t kTargetThreads = 128 << 10;          // about a thousand threads per SM
constexpr int64_t kMinRun = 16;                        // rows per run at least (each re-reads 2 (K - 1))
constexpr int kPacksPerBlock = 32, kRunsPerBlock = 8;  // block (32, 8): a warp per run

struct ConvBackwardParams {
  const void *dy, *x, *wt, *bias;  // (rows, C), (rows, C), (K, C), (C) or null without SiLU
  void* dx;                        // (rows, C)
  void* partial;                   // (grid.y, K + 1, C) in the arithmetic type
  int64_t rows, run;               // rows = B T; rows [z run, (z + 1) run) are run z's
  int T, C, K, packs, runs;        // packs = C / P
};

// The walk of pack c0 over the rows [r0, r1) (the file header): writes their dx and adds
// their dpre x and dpre into dw, db. Windows, the newest row last: xw[i] = x[r - (KMax-1-i)],
// dp[i] = dpre[r - (KMax-1-i)] after row r. Weights: wf[i] = w[i - (KMax-K)] pairs with xw
// (0 for i < KMax - K), so dw[i] is tap i - (KMax-K); w[KMax-1-i] pairs with dp (0 for
// KMax-1-i >= K), which with kExact (K = KMax) is wf[KMax-1-i] and else a second table wd.
template <int P, int KMax, bool kExact, class F, bool kSilu>
__device__ __forceinline__ void conv_bwd_walk(const ConvBackwardParams& p, int c0, int64_t r0, int64_t r1,
                                              acc_t<F> (&dw)[KMax][P], acc_t<F> (&db)[P]) {
  using Acc = acc_t<F>;
  const int C = p.C, K = kExact ? KMax : p.K, T = p.T;
  const F *dy = static_cast<const F*>(p.dy), *x = static_cast<const F*>(p.x), *wt = static_cast<const F*>(p.wt);
  F* dx = static_cast<F*>(p.dx);

  constexpr int kWd = kExact ? 1 : KMax;
  Acc wf[KMax][P], wd[kWd][P], bias[P], xw[KMax][P] = {}, dp[KMax][P] = {};
#pragma unroll
  for (int i = 0; i < KMax; ++i) {
    const int jf = i - (KMax - K);
    const Pack<F, P> f = load_pack<P>(wt, int64_t(max(jf, 0)) * C + c0);
#pragma unroll
    for (int e = 0; e < P; ++e) wf[i][e] = jf >= 0 ? load(&f.v[e]) : Acc(0);
    if (!kExact) {
      const int jd = KMax - 1 - i;
      const Pack<F, P> d = load_pack<P>(wt, int64_t(min(jd, K - 1)) * C + c0);
#pragma unroll
      for (int e = 0; e < P; ++e) wd[i % kWd][e] = jd < K ? load(&d.v[e]) : Acc(0);
    }
  }
  auto w_dx = [&](int i, int e) { return kExact ? wf[KMax - 1 - i][e] : wd[i % kWd][e]; };
  if (kSilu) {
    const Pack<F, P> b = load_pack<P>(static_cast<const F*>(p.bias), c0);
#pragma unroll
    for (int e = 0; e < P; ++e) bias[e] = load(&b.v[e]);
  }
  auto emit_dx = [&](int64_t s) {  // dx[s] from the dpre window (dp[KMax - 1] = dpre[s + K - 1])
    Pack<F, P> out;
#pragma unroll
    for (int e = 0; e < P; ++e) {
      Acc v = 0;
#pragma unroll
      for (int i = 0; i < KMax; ++i) v += w_dx(i, e) * dp[i][e];
      store(&out.v[e], v);
    }
    store_pack(dx, s * C + c0, out);
  };
  auto shift_in = [](Acc(&win)[KMax][P], const Acc(&v)[P]) {
#pragma unroll
    for (int i = 0; i < KMax - 1; ++i)
#pragma unroll
      for (int e = 0; e < P; ++e) win[i][e] = win[i + 1][e];
#pragma unroll
    for (int e = 0; e < P; ++e) win[KMax - 1][e] = v[e];
  };

  // The K - 1 inputs before the run (within its first row's sequence) fill the window.
  for (int64_t r = max(r0 - r0 % T, r0 - (K - 1)); r < r0; ++r) {
    const Pack<F, P> xv = load_pack<P>(x, r * C + c0);
    Acc v[P];
#pragma unroll
    for (int e = 0; e < P; ++e) v[e] = load(&xv.v[e]);
    shift_in(xw, v);
  }
  const int64_t r_end = min(p.rows, r1 + K - 1);  // rows past the run: dpre for its last dx only
  Pack<F, P> x_next = load_pack<P>(x, r0 * C + c0), dy_next = load_pack<P>(dy, r0 * C + c0);  // (r0 < rows)
  int t = int(r0 % T);
  for (int64_t r = r0; r < r_end; ++r, t = t + 1 == T ? 0 : t + 1) {
    if (t == 0) {
      if (r >= r1) break;  // a new sequence: nothing of it reaches the run's dx
#pragma unroll
      for (int i = 0; i < KMax; ++i)
#pragma unroll
        for (int e = 0; e < P; ++e) xw[i][e] = 0, dp[i][e] = 0;
    }
    const Pack<F, P> xv = x_next, gv = dy_next;  // row r; row r + 1's loads go out now
    if (r + 1 < r_end) x_next = load_pack<P>(x, (r + 1) * C + c0), dy_next = load_pack<P>(dy, (r + 1) * C + c0);
    Acc v[P], dpre[P];
#pragma unroll
    for (int e = 0; e < P; ++e) v[e] = load(&xv.v[e]);
    shift_in(xw, v);
#pragma unroll
    for (int e = 0; e < P; ++e) {
      dpre[e] = load(&gv.v[e]);
      if (kSilu) {
        Acc pre = bias[e];
#pragma unroll
        for (int i = 0; i < KMax; ++i) pre += wf[i][e] * xw[i][e];
        const Acc sg = conv_sigmoid(pre);
        dpre[e] *= sg * (Acc(1) + pre * (Acc(1) - sg));
      }
    }
    if (r < r1)
#pragma unroll
      for (int e = 0; e < P; ++e) {
        db[e] += dpre[e];
#pragma unroll
        for (int i = 0; i < KMax; ++i) dw[i][e] += dpre[e] * xw[i][e];
      }
    shift_in(dp, dpre);
    if (t >= K - 1 && r - (K - 1) >= r0) emit_dx(r - (K - 1));  // (s < r1: r < r1 + K - 1)
    if (t == T - 1) {  // the sequence ends: its last K - 1 rows' dx see zeros past it
      const Acc zero[P] = {};
#pragma unroll
      for (int k = 1; k < KMax; ++k) {
        if (k >= K) break;
        shift_in(dp, zero);
        const int64_t s = r + k - (K - 1);
        if (s >= r0 && s < r1 && s >= r - t) emit_dx(s);
      }
    }
  }
}

// Block (32 packs, 8 runs) of grid (packs / 32, runs / 8): each thread walks its (pack, run),
// then the block adds its 8 runs' dw and db in shared memory, in order, and writes one
// partial per (tap, channel). Double precision keeps one block per SM (its 16-tap windows
// would spill at two).
template <int P, int KMax, bool kExact, class F, bool kSilu>
__global__ void __launch_bounds__(kPacksPerBlock* kRunsPerBlock, sizeof(F) == 8 ? 1 : 2)
    conv_bwd_kernel(ConvBackwardParams p) {
  using Acc = acc_t<F>;
  constexpr int kItems = (KMax + 1) * kPacksPerBlock * P;  // (window slot or bias, pack, channel)
  __shared__ Acc red[kRunsPerBlock][kItems];
  const int q = blockIdx.x * kPacksPerBlock + threadIdx.x, z = blockIdx.y * kRunsPerBlock + threadIdx.y;
  Acc dw[KMax][P] = {}, db[P] = {};
  if (q < p.packs && z < p.runs)
    conv_bwd_walk<P, KMax, kExact, F, kSilu>(p, q * P, z * p.run, min(p.rows, (z + 1) * p.run), dw, db);
#pragma unroll
  for (int i = 0; i <= KMax; ++i)
#pragma unroll
    for (int e = 0; e < P; ++e)
      red[threadIdx.y][(i * kPacksPerBlock + threadIdx.x) * P + e] = i < KMax ? dw[i][e] : db[e];
  __syncthreads();
  const int C = p.C, K = kExact ? KMax : p.K;
  Acc* partial = static_cast<Acc*>(p.partial) + int64_t(blockIdx.y) * (K + 1) * C;
  for (int item = threadIdx.y * kPacksPerBlock + threadIdx.x; item < kItems; item += kPacksPerBlock * kRunsPerBlock) {
    const int i = item / (kPacksPerBlock * P), c = blockIdx.x * kPacksPerBlock * P + item % (kPacksPerBlock * P);
    const int j = i == KMax ? K : i - (KMax - K);  // window slot i is tap j (slot KMax the bias, row K)
    if (c >= C || j < 0) continue;
    Acc sum = 0;
    for (int y = 0; y < kRunsPerBlock; ++y) sum += red[y][item];
    partial[int64_t(j) * C + c] = sum;
  }
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
    with_pack<kPackOf<F>>(channels_packed<kPackOf<F>, F>(C, {x.raw_data(), bias.raw_data(), y.raw_data()}),
                          [&](auto pack) {
                            constexpr int P = decltype(pack)::value;
                            auto kernel = silu ? conv_fwd_kernel<P, F, true> : conv_fwd_kernel<P, F, false>;
                            kernel<<<blocks_for(n / P), kThreads, 0, st>>>(
                                ptr<F>(x), ptr<F>(wt), ptr<F>(bias), ptr<F>(y), int(n / P), int(T), int(C), int(K));
                          });
  });
  SESSA_CUDA_LAUNCH_CHECK("causal_conv1d");
  return y;
}

nn::Conv1dGrads causal_conv1d_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in,
                                       const Tensor& bias_in, bool silu) {
  const char* op = "causal_conv1d_backward";
  const Tensor dy = ops::contiguous(dy_in), x = ops::contiguous(x_in), w = ops::contiguous(w_in);
  const Tensor wt = ops::contiguous(ops::transpose(w, 0, 1));  // (K, C)
  const Tensor bias = silu ? ops::contiguous(bias_in) : Tensor{};
  const int64_t T = x.size(1), C = x.size(2), K = w.size(1), n = x.numel(), rows = n / std::max<int64_t>(C, 1);
  check_sizes(op, 1, n);
  SESSA_CHECK(K <= int(nn::kMaxConvTaps), op,
              "the CUDA backward takes kernel sizes up to " << int(nn::kMaxConvTaps) << ", got " << K << " (weight "
                                                            << w.shape() << ")");
  nn::Conv1dGrads g{Tensor::empty(x.shape(), x.options()), Tensor::empty(w.shape(), x.options()),
                    Tensor::empty({C}, x.options())};
  if (n == 0) return g;
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    constexpr int kPack = sizeof(F) == 8 ? 2 : 4;  // registers: 5 windows of K x P values
    const bool packed = channels_packed<kPack, F>(C, {dy.raw_data(), x.raw_data(), wt.raw_data(), g.dx.raw_data()}) &&
                        (!silu || pack_aligned<kPack>(ptr<F>(bias)));
    auto launch = [&](auto kernel, int P) {
      // Runs of at least kMinRun rows, about kTargetThreads threads in all.
      const int64_t packs = C / P;
      const int64_t runs = std::clamp<int64_t>((kTargetThreads + packs - 1) / packs, 1, (rows + kMinRun - 1) / kMinRun);
      const int64_t run = (rows + runs - 1) / runs, used = (rows + run - 1) / run;
      const dim3 grid(unsigned((packs + kPacksPerBlock - 1) / kPacksPerBlock),
                      unsigned((used + kRunsPerBlock - 1) / kRunsPerBlock));
      Tensor partial = Tensor::empty({int64_t(grid.y), K + 1, C}, {accumulation_dtype(x.dtype()), x.device()});
      const ConvBackwardParams p{.dy = dy.raw_data(),
                                 .x = x.raw_data(),
                                 .wt = wt.raw_data(),
                                 .bias = silu ? bias.raw_data() : nullptr,
                                 .dx = g.dx.raw_data(),
                                 .partial = partial.raw_data(),
                                 .rows = rows,
                                 .run = run,
                                 .T = int(T),
                                 .C = int(C),
                                 .K = int(K),
                                 .packs = int(packs),
                                 .runs = int(used)};
      kernel<<<grid, dim3(kPacksPerBlock, kRunsPerBlock), 0, st>>>(p);
      SESSA_CUDA_LAUNCH_CHECK(op);
      sum_split_partials<F>(ptr<acc_t<F>>(partial), ptr<F>(g.dw), ptr<F>(g.dbias), int(grid.y), int(C), int(K), st, op);
    };
    auto run_with = [&](auto silu_tag) {  // Mamba's kernel size 4 in packs; the rest one channel per thread
      constexpr bool kSilu = decltype(silu_tag)::value;
      if (K == 4 && packed)
        launch(conv_bwd_kernel<kPack, 4, true, F, kSilu>, kPack);
      else if (K == 4)
        launch(conv_bwd_kernel<1, 4, true, F, kSilu>, 1);
      else if (K < 4)
        launch(conv_bwd_kernel<1, 4, false, F, kSilu>, 1);
      else
        launch(conv_bwd_kernel<1, int(nn::kMaxConvTaps), false, F, kSilu>, 1);
    };
    if (silu)
      run_with(std::true_type{});
    else
      run_with(std::false_type{});
  });
  return g;
}

}  // namespace sessa::cuda
