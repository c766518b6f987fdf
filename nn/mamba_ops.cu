// CUDA kernels of the Mamba ops; the math is documented in nn/mamba_ops.h and .cpp.
//
// causal_conv1d: one thread per output element (b, t, c); c is the fastest index, so a
// warp reads 32 consecutive channels of a row. Backward: dx the same way (gathering dy
// from the K rows that read x[b, s, c]); dw and dbias (the bias is "tap K") reduce over
// the B*T rows: a thread owns one channel and up to kTaps taps over a contiguous run of
// rows, a block sums its 8 runs in shared memory and writes one partial per (split,
// tap, channel); a second kernel sums the splits in a fixed order.
//
// selective_scan: one thread per (b, c) walks time with the N-vector state in registers
// (N rounded up to NM in {4, 8, 16, 32, 64}; padded states have A = 0, Bm = 0 and stay 0).
// A block is one warp of 32 channels of one batch row. Time goes in chunks of L steps:
// the warp first stages the chunk's u, delta (own column per lane) and Bm, Cm rows in
// shared memory, so all its global loads are in flight at once. The state is float
// (double for float64) whatever the storage.
//
// selective_scan_backward: the same thread per (b, c), one kernel, two sweeps.
//   1. Forward, writing the state before every chunk (checkpoints, float, global).
//   2. Chunks from last to first: reload the checkpoint, rerun the chunk keeping
//      h_{t-1} for each step in shared memory, then walk the chunk backwards with the
//      adjoint gh (e_{t+1} gh_{t+1}) in registers; du and ddelta are written directly.
// dA and dD accumulate in registers over t, then one partial per (b, c) goes out and a
// second kernel sums over b. dBm and dCm (sums over channels) are reduced across the
// warp each step with a shuffle reduce-scatter (32 values in 31 shuffles) and written as
// one partial per (channel block, b, t, n); a second kernel sums over channel blocks.
// Every sum has a fixed order, so results are bitwise reproducible. Scratch memory: the
// checkpoints (B * ceil(T / L) * N * Di floats, L = 16 for N = 16) and the dBm/dCm
// partials (ceil(Di / 32) * B * T * 2N floats).
#include <algorithm>
#include <type_traits>

#include "nn/mamba_cuda.h"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

// ---- causal conv1d -------------------------------------------------------------------

template <class F>
__global__ void conv_fwd_kernel(const F* __restrict__ x, const F* __restrict__ w, const F* __restrict__ bias,
                                F* __restrict__ y, int64_t n, int T, int C, int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int c = int(i % C), t = int(i / C % T);
  acc_t<F> acc = load(bias + c);
  for (int j = max(0, K - 1 - t); j < K; ++j)
    acc += load(w + int64_t(c) * K + j) * load(x + i - int64_t(K - 1 - j) * C);
  store(y + i, acc);
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

template <class F>
__global__ void conv_dw_finalize_kernel(const acc_t<F>* __restrict__ partial, F* __restrict__ dw, F* __restrict__ dbias,
                                        int splits, int C, int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (tap j, channel c)
  if (i >= int64_t(K + 1) * C) return;
  const int j = int(i / C), c = int(i % C);
  acc_t<F> s = 0;
  for (int z = 0; z < splits; ++z) s += partial[int64_t(z) * (K + 1) * C + i];
  store(j < K ? dw + int64_t(c) * K + j : dbias + c, s);
}

// ---- selective scan: shared pieces ---------------------------------------------------

__device__ __forceinline__ float fast_exp(float v) { return __expf(v); }
__device__ __forceinline__ double fast_exp(double v) { return exp(v); }

// Chunk lengths (time steps): forward stages Bm, Cm tiles of L*NM; backward also keeps
// the states of a chunk, L*NM per lane, so its L shrinks with NM (shared memory < 48 KiB).
template <class F, int NM>
constexpr int fwd_chunk() {
  return std::min(32, int(4096 / (NM * sizeof(acc_t<F>))));
}
template <class F, int NM>
constexpr int bwd_chunk() {
  return std::min(16, int(1024 / (NM * sizeof(acc_t<F>))));
}

// s[l][x] = p[l * stride + x] for l < len, x < width, else 0: rows of a tile into shared
// memory. The loop is unrolled, so the tile's loads can all be in flight at once.
template <int L, int W, class F>
__device__ __forceinline__ void stage(acc_t<F> (*s)[W], const F* __restrict__ p, int64_t stride, int len, int width) {
#pragma unroll
  for (int q = 0; q < (L * W + kWarp - 1) / kWarp; ++q) {
    const int k = q * kWarp + int(threadIdx.x), l = k / W, x = k % W;
    if (k < L * W) s[l][x] = l < len && x < width ? load(p + l * stride + x) : acc_t<F>(0);
  }
}

// Warp reduce-scatter of v[0..V) (V a power of two <= 32): lane l returns the warp-wide
// sum of v[l / (32 / V)]. Each step halves the values a lane holds (it keeps one half
// and adds its partner's copy of it), so V - 1 + log2(32 / V) shuffles instead of 5 V.
// Recursion on V keeps every index a constant, so v stays in registers. Destroys v.
template <int V, int Off = kWarp / 2, class Acc>
__device__ __forceinline__ Acc reduce_scatter(Acc* v) {
  if constexpr (V == 1) {
    Acc r = v[0];
#pragma unroll
    for (int off = Off; off >= 1; off /= 2) r += __shfl_xor_sync(kFull, r, off);
    return r;
  } else {
    const bool upper = threadIdx.x & Off;  // this lane keeps the upper half, its partner the lower
#pragma unroll
    for (int i = 0; i < V / 2; ++i) {
      const Acc lo = v[i], hi = v[i + V / 2];  // select values, not addresses
      v[i] = (upper ? hi : lo) + __shfl_xor_sync(kFull, upper ? lo : hi, Off);
    }
    return reduce_scatter<V / 2, Off / 2>(v);
  }
}

// ---- selective scan forward ----------------------------------------------------------

// grid (ceil(Di / 32), B), block 32: lane = channel.
template <class F, int NM>
__global__ void __launch_bounds__(kWarp)
    scan_fwd_kernel(const F* __restrict__ u, const F* __restrict__ delta, const F* __restrict__ A,
                    const F* __restrict__ Bm, const F* __restrict__ Cm, const F* __restrict__ Dk, F* __restrict__ y,
                    int T, int Di, int N) {
  using Acc = acc_t<F>;
  constexpr int L = fwd_chunk<F, NM>();
  __shared__ Acc sU[L][kWarp], sDt[L][kWarp], sB[L][NM], sC[L][NM];
  const int lane = threadIdx.x, c0 = blockIdx.x * kWarp, c = c0 + lane, b = blockIdx.y;
  const bool active = c < Di;
  Acc a[NM], h[NM];
#pragma unroll
  for (int n = 0; n < NM; ++n) {
    a[n] = active && n < N ? load(A + int64_t(c) * N + n) : Acc(0);
    h[n] = 0;
  }
  const Acc d = active ? load(Dk + c) : Acc(0);
  for (int t0 = 0; t0 < T; t0 += L) {
    const int len = min(L, T - t0);
    const int64_t row0 = int64_t(b) * T + t0;
    __syncthreads();  // the previous chunk is consumed
    stage<L, kWarp>(sU, u + row0 * Di + c0, Di, len, Di - c0);
    stage<L, kWarp>(sDt, delta + row0 * Di + c0, Di, len, Di - c0);
    stage<L, NM>(sB, Bm + row0 * N, N, len, N);
    stage<L, NM>(sC, Cm + row0 * N, N, len, N);
    __syncthreads();
    for (int l = 0; l < len; ++l) {
      const Acc ut = sU[l][lane], dt = sDt[l][lane], dtu = dt * ut;
      Acc acc = 0;
#pragma unroll
      for (int n = 0; n < NM; ++n) {
        h[n] = fast_exp(dt * a[n]) * h[n] + dtu * sB[l][n];
        acc += sC[l][n] * h[n];
      }
      if (active) store(y + (row0 + l) * Di + c, acc + d * ut);
    }
  }
}

// ---- selective scan backward ---------------------------------------------------------

// grid (ceil(Di / 32), B), block 32. ckpt: (B, chunks, N, Di); part_bc: (Di / 32 blocks,
// B * T, 2N) holding [dBm | dCm] of one channel block; part_ad: (B, N + 1, Di) holding
// [dA | dD] of one batch row.
template <class F, int NM>
__global__ void __launch_bounds__(kWarp)
    scan_bwd_kernel(const F* __restrict__ dy, const F* __restrict__ u, const F* __restrict__ delta,
                    const F* __restrict__ A, const F* __restrict__ Bm, const F* __restrict__ Cm,
                    const F* __restrict__ Dk, F* __restrict__ du, F* __restrict__ ddelta, acc_t<F>* __restrict__ ckpt,
                    acc_t<F>* __restrict__ part_bc, acc_t<F>* __restrict__ part_ad, int Bsz, int T, int Di, int N) {
  using Acc = acc_t<F>;
  constexpr int L = bwd_chunk<F, NM>();
  constexpr int G = NM < 16 ? NM : 16;  // states per reduce-scatter group: 2G values ([dBm | dCm])
  static_assert(sizeof(Acc) * (L * NM * kWarp + 3 * L * kWarp + 2 * L * NM) <= 48 * 1024);
  __shared__ Acc sH[L][NM][kWarp];  // h_{t-1} of each step of the chunk, per lane
  __shared__ Acc sU[L][kWarp], sDt[L][kWarp], sG[L][kWarp], sB[L][NM], sC[L][NM];
  const int lane = threadIdx.x, c0 = blockIdx.x * kWarp, c = c0 + lane, b = blockIdx.y;
  const bool active = c < Di;
  const int chunks = (T + L - 1) / L;
  Acc* ck = ckpt + int64_t(b) * chunks * N * Di + c;  // + (k * N + n) * Di
  Acc a[NM], h[NM];
#pragma unroll
  for (int n = 0; n < NM; ++n) {
    a[n] = active && n < N ? load(A + int64_t(c) * N + n) : Acc(0);
    h[n] = 0;
  }
  const Acc d = active ? load(Dk + c) : Acc(0);

  // Sweep 1: forward, checkpointing the state before each chunk (the last chunk's own
  // steps are not needed).
  for (int k = 0; k < chunks; ++k) {
#pragma unroll
    for (int n = 0; n < NM; ++n)
      if (active && n < N) ck[(int64_t(k) * N + n) * Di] = h[n];
    if (k + 1 == chunks) break;
    const int t0 = k * L, len = min(L, T - t0);
    const int64_t row0 = int64_t(b) * T + t0;
    __syncthreads();
    stage<L, kWarp>(sU, u + row0 * Di + c0, Di, len, Di - c0);
    stage<L, kWarp>(sDt, delta + row0 * Di + c0, Di, len, Di - c0);
    stage<L, NM>(sB, Bm + row0 * N, N, len, N);
    __syncthreads();
    for (int l = 0; l < len; ++l) {
      const Acc dt = sDt[l][lane], dtu = dt * sU[l][lane];
#pragma unroll
      for (int n = 0; n < NM; ++n) h[n] = fast_exp(dt * a[n]) * h[n] + dtu * sB[l][n];
    }
  }

  // Sweep 2: backward over chunks. gh[n] = e_{t+1} gh_{t+1} on entry to step t.
  Acc gh[NM] = {}, gA[NM] = {}, gD = 0;
  for (int k = chunks - 1; k >= 0; --k) {
    const int t0 = k * L, len = min(L, T - t0);
    const int64_t row0 = int64_t(b) * T + t0;
    __syncthreads();
    stage<L, kWarp>(sU, u + row0 * Di + c0, Di, len, Di - c0);
    stage<L, kWarp>(sDt, delta + row0 * Di + c0, Di, len, Di - c0);
    stage<L, kWarp>(sG, dy + row0 * Di + c0, Di, len, Di - c0);
    stage<L, NM>(sB, Bm + row0 * N, N, len, N);
    stage<L, NM>(sC, Cm + row0 * N, N, len, N);
#pragma unroll
    for (int n = 0; n < NM; ++n) h[n] = active && n < N ? ck[(int64_t(k) * N + n) * Di] : Acc(0);
    __syncthreads();
    for (int l = 0; l < len; ++l) {  // rerun the chunk, keeping h_{t-1}
      const Acc dt = sDt[l][lane], dtu = dt * sU[l][lane];
#pragma unroll
      for (int n = 0; n < NM; ++n) {
        sH[l][n][lane] = h[n];
        h[n] = fast_exp(dt * a[n]) * h[n] + dtu * sB[l][n];
      }
    }
    for (int l = len - 1; l >= 0; --l) {
      const Acc ut = sU[l][lane], dt = sDt[l][lane], gy = sG[l][lane], dtu = dt * ut;
      Acc gu = gy * d, gdt = 0;
      gD += gy * ut;
      Acc* out = part_bc + (int64_t(blockIdx.x) * Bsz * T + row0 + l) * 2 * N;
#pragma unroll
      for (int n0 = 0; n0 < NM; n0 += G) {
        Acc v[2 * G];  // [dBm | dCm] of states n0 .. n0+G-1, this lane's channel
#pragma unroll
        for (int q = 0; q < G; ++q) {
          const int n = n0 + q;
          const Acc e = fast_exp(dt * a[n]), hp = sH[l][n][lane], bn = sB[l][n];
          const Acc g = gh[n] + gy * sC[l][n], geh = g * e * hp;
          v[q] = g * dtu;
          v[G + q] = gy * (e * hp + dtu * bn);  // gy * h_t
          gA[n] += dt * geh;
          gdt += a[n] * geh + g * bn * ut;
          gu += g * dt * bn;
          gh[n] = g * e;
        }
        const Acc r = reduce_scatter<2 * G>(v);
        constexpr int rep = kWarp / (2 * G);  // lanes holding each sum
        const int idx = lane / rep, n = n0 + idx % G;
        if (lane % rep == 0 && n < N) out[(idx < G ? 0 : N) + n] = r;
      }
      if (active) {
        const int64_t i = (row0 + l) * Di + c;
        store(du + i, gu);
        store(ddelta + i, gdt);
      }
    }
  }
  if (!active) return;
  Acc* pad = part_ad + int64_t(b) * (N + 1) * Di + c;
#pragma unroll
  for (int n = 0; n < NM; ++n)
    if (n < N) pad[int64_t(n) * Di] = gA[n];
  pad[int64_t(N) * Di] = gD;
}

// dBm, dCm (B*T, N): sum the channel blocks' partials.
template <class F>
__global__ void scan_dbc_finalize_kernel(const acc_t<F>* __restrict__ part, F* __restrict__ dB, F* __restrict__ dC,
                                         int blocks, int64_t rows, int N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * N) return;
  int64_t p = i / N * 2 * N + i % N;
  acc_t<F> sb = 0, sc = 0;
  for (int k = 0; k < blocks; ++k, p += rows * 2 * N) sb += part[p], sc += part[p + N];
  store(dB + i, sb);
  store(dC + i, sc);
}

// dA (Di, N) and dD (Di): sum the batch rows' partials.
template <class F>
__global__ void scan_dad_finalize_kernel(const acc_t<F>* __restrict__ part, F* __restrict__ dA, F* __restrict__ dD,
                                         int Bsz, int Di, int N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (slot n, channel c)
  if (i >= int64_t(N + 1) * Di) return;
  const int n = int(i / Di), c = int(i % Di);
  acc_t<F> s = 0;
  for (int b = 0; b < Bsz; ++b) s += part[int64_t(b) * (N + 1) * Di + i];
  store(n < N ? dA + int64_t(c) * N + n : dD + c, s);
}

// Calls f(std::integral_constant<int, NM>) with NM the padded state size for N.
template <class Fn>
void dispatch_state(int64_t N, const char* op, Fn&& f) {
  if (N <= 4) return f(std::integral_constant<int, 4>{});
  if (N <= 8) return f(std::integral_constant<int, 8>{});
  if (N <= 16) return f(std::integral_constant<int, 16>{});
  if (N <= 32) return f(std::integral_constant<int, 32>{});
  if (N <= 64) return f(std::integral_constant<int, 64>{});
  SESSA_FAIL(op, "state size N = " << N << " is not supported on cuda (at most 64)");
}

void check_sizes(const char* op, int64_t B, int64_t rows_x_width) {
  SESSA_CHECK(B <= 65535 && rows_x_width < (int64_t(1) << 31), op,
              "sizes too large for the cuda kernels (batch at most 65535, B*T*channels below 2^31)");
}

}  // namespace

Tensor causal_conv1d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in) {
  Tensor x = ops::contiguous(x_in), w = ops::contiguous(w_in), bias = ops::contiguous(bias_in);
  const int64_t T = x.size(1), C = x.size(2), K = w.size(1), n = x.numel();
  check_sizes("causal_conv1d", 1, n);
  Tensor y = Tensor::empty(x.shape(), x.options());
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using F = decltype(tag);
    conv_fwd_kernel<F>
        <<<blocks_for(n), kThreads, 0, st>>>(ptr<F>(x), ptr<F>(w), ptr<F>(bias), ptr<F>(y), n, int(T), int(C), int(K));
  });
  SESSA_CUDA_LAUNCH_CHECK("causal_conv1d");
  return y;
}

ops::Conv1dGrads causal_conv1d_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in) {
  const char* op = "causal_conv1d_backward";
  Tensor dy = ops::contiguous(dy_in), x = ops::contiguous(x_in), w = ops::contiguous(w_in);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1), n = x.numel(), rows = B * T;
  check_sizes(op, 1, n);
  ops::Conv1dGrads g{Tensor::empty(x.shape(), x.options()), Tensor::empty(w.shape(), x.options()),
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
    conv_dx_kernel<F>
        <<<blocks_for(n), kThreads, 0, st>>>(ptr<F>(dy), ptr<F>(w), ptr<F>(g.dx), n, int(T), int(C), int(K));
    SESSA_CUDA_LAUNCH_CHECK(op);
    const dim3 grid{unsigned(cblocks), unsigned(tgroups), unsigned(splits)}, block{kWarp, kRowRuns};
    conv_dw_partial_kernel<F>
        <<<grid, block, 0, st>>>(ptr<F>(dy), ptr<F>(x), ptr<Acc>(partial), rows, run, int(T), int(C), int(K));
    SESSA_CUDA_LAUNCH_CHECK(op);
    conv_dw_finalize_kernel<F><<<blocks_for((K + 1) * C), kThreads, 0, st>>>(
        ptr<Acc>(partial), ptr<F>(g.dw), ptr<F>(g.dbias), int(splits), int(C), int(K));
  });
  SESSA_CUDA_LAUNCH_CHECK(op);
  return g;
}

Tensor selective_scan(const Tensor& u_in, const Tensor& delta_in, const Tensor& A_in, const Tensor& Bm_in,
                      const Tensor& Cm_in, const Tensor& D_in) {
  const char* op = "selective_scan";
  Tensor u = ops::contiguous(u_in), delta = ops::contiguous(delta_in), A = ops::contiguous(A_in),
         Bm = ops::contiguous(Bm_in), Cm = ops::contiguous(Cm_in), Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_sizes(op, B, u.numel());
  Tensor y = Tensor::empty(u.shape(), u.options());
  if (y.numel() == 0) return y;
  cudaStream_t st = stream(u.device().index);
  const dim3 grid{blocks_for(Di, kWarp), unsigned(B)};
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    dispatch_state(N, op, [&](auto nm) {
      scan_fwd_kernel<F, decltype(nm)::value><<<grid, kWarp, 0, st>>>(
          ptr<F>(u), ptr<F>(delta), ptr<F>(A), ptr<F>(Bm), ptr<F>(Cm), ptr<F>(Dk), ptr<F>(y), int(T), int(Di), int(N));
    });
  });
  SESSA_CUDA_LAUNCH_CHECK(op);
  return y;
}

ops::SelectiveScanGrads selective_scan_backward(const Tensor& dy_in, const Tensor& u_in, const Tensor& delta_in,
                                                const Tensor& A_in, const Tensor& Bm_in, const Tensor& Cm_in,
                                                const Tensor& D_in) {
  const char* op = "selective_scan_backward";
  Tensor dy = ops::contiguous(dy_in), u = ops::contiguous(u_in), delta = ops::contiguous(delta_in),
         A = ops::contiguous(A_in), Bm = ops::contiguous(Bm_in), Cm = ops::contiguous(Cm_in),
         Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_sizes(op, B, u.numel());
  const TensorOptions opt = u.options(), acc{acc_dtype(u.dtype()), u.device()};
  ops::SelectiveScanGrads g{Tensor::empty(u.shape(), opt),  Tensor::empty(u.shape(), opt),
                            Tensor::empty(A.shape(), opt),  Tensor::empty(Bm.shape(), opt),
                            Tensor::empty(Cm.shape(), opt), Tensor::empty(Dk.shape(), opt)};
  const int64_t cblocks = (Di + kWarp - 1) / kWarp;
  Tensor part_bc = Tensor::empty({cblocks, B * T, 2 * N}, acc), part_ad = Tensor::empty({B, N + 1, Di}, acc);
  cudaStream_t st = stream(u.device().index);
  const dim3 grid{unsigned(cblocks), unsigned(B)};
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using Acc = acc_t<F>;
    if (B > 0 && Di > 0)
      dispatch_state(N, op, [&](auto nm) {
        constexpr int NM = decltype(nm)::value;
        const int64_t chunks = (T + bwd_chunk<F, NM>() - 1) / bwd_chunk<F, NM>();
        Tensor ckpt = Tensor::empty({B, chunks, N, Di}, acc);
        scan_bwd_kernel<F, NM><<<grid, kWarp, 0, st>>>(
            ptr<F>(dy), ptr<F>(u), ptr<F>(delta), ptr<F>(A), ptr<F>(Bm), ptr<F>(Cm), ptr<F>(Dk), ptr<F>(g.du),
            ptr<F>(g.ddelta), ptr<Acc>(ckpt), ptr<Acc>(part_bc), ptr<Acc>(part_ad), int(B), int(T), int(Di), int(N));
      });
    SESSA_CUDA_LAUNCH_CHECK(op);
    scan_dbc_finalize_kernel<F><<<blocks_for(B * T * N), kThreads, 0, st>>>(ptr<Acc>(part_bc), ptr<F>(g.dB),
                                                                            ptr<F>(g.dC), int(cblocks), B * T, int(N));
    SESSA_CUDA_LAUNCH_CHECK(op);
    scan_dad_finalize_kernel<F><<<blocks_for((N + 1) * Di), kThreads, 0, st>>>(ptr<Acc>(part_ad), ptr<F>(g.dA),
                                                                               ptr<F>(g.dD), int(B), int(Di), int(N));
  });
  SESSA_CUDA_LAUNCH_CHECK(op);
  return g;
}

}  // namespace sessa::cuda
