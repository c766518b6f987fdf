// CUDA selective scan (the math: nn/mamba_ops.h and .cpp). Per (b, channel c, state n) the
// recurrence h_t = e_t h_{t-1} + x_t, e_t = exp(delta_t A[c,n]), x_t = delta_t Bm_t[n] u_t,
// is a composition of affine maps h -> e h + x, which is associative:
// (e1, x1) then (e2, x2) = (e2 e1, e2 x1 + x2).
//
// Layout of the work (forward and backward alike). One thread per (b, c) walks its steps
// one after the other with all N states in registers (N rounded up to kS = 16, or to 64
// above 16; padded states have A = Bm = Cm = 0 and stay 0); the N independent recurrences
// give the instruction-level parallelism. A block is 128 consecutive channels of one batch
// row, so all its threads need the same Bm_t, Cm_t: they are staged per tile of steps in
// shared memory as [step][Bm | Cm] and read as 16-byte broadcasts. u, delta, dy, z loads
// and du, ddelta, dz, y stores are coalesced across channels (the (B, T, Di) layout has
// channels fastest). exp is one MUFU.EX2 (A pre-scaled by log2 e; ex2.approx.ftz).
// Forward cost per (t, n): one EX2, an FMUL for the exponent, FMUL + FFMA for h, FFMA for
// y, half a shared load: ~6 instructions, the floor of the math.
//
// Time is split into chunks as well when the (b, c) threads alone would leave SMs idle
// (fewer than k*ThreadsPerSM per SM). Forward: pass 1 runs chunks 0 .. K-2 from a zero
// state and keeps each chunk's map (product of e, end state); a small kernel composes the
// maps in order into the state entering each chunk; pass 2 reruns every chunk from there
// and writes y (times SiLU(z) with the gate, plus the D skip) and, when asked, the
// checkpoints: the state entering every kEvery steps, (B, Di, N, ceil(T / kEvery)) in the
// accumulation type, kEvery = 64 (N <= 16) or 16. nn::selective_scan keeps them for the
// backward; without them the backward runs the forward's pass 2 to make them (no y).
//
// Backward. The adjoint g_t = dL/dh_t obeys g_t = gy_t Cm_t + q_{t+1} with q_t = e_t g_t
// (gy: dL/dy of the ungated output, dy * SiLU(z) with the gate), an affine recurrence run
// backwards. Chunks of time from last to first need the q entering from the later ones:
// pass 1 runs chunks 1 .. K-1 from q = 0 (their q at the first step and product of e), a
// small kernel composes them from the last chunk down, and the main kernel runs every
// chunk from its true q. Within a chunk, checkpoint segments (kEvery steps) go from last
// to first: walk forward from the segment's checkpoint, leaving the state entering each
// of its kSubs sub-segments of S = 64 / kS steps in global scratch (L2-resident); then
// sub-segments from last to first: walk forward S steps keeping h_{t-1} and e_t in the
// thread's row of shared memory, then walk them backwards, per (t, n):
//   g = q + gy Cm_t,  du_t += g delta_t Bm_t (via S1 = sum_n g Bm_t),
//   ddelta_t += g (A e_t h_{t-1} + Bm_t u_t),  dA += g delta_t e_t h_{t-1},  q = e_t g,
//   and the channel sums' terms dBm_t = g delta_t u_t, dCm_t = gy h_t (in the row, over
//   h_{t-1} and e_t once read), plus y_t = sum_n Cm_t h_t + D u_t for dz = dy y SiLU'(z).
// After each sub-segment (one barrier) thread v of the block sums value v of all 128 rows
// (S * 2 kS = 128 values: one per thread, conflict-free) into the block's partial of dBm,
// dCm; a second kernel sums the channel groups. dA and dD stay in registers, one partial
// per (b, chunk, c), summed by the second pass in nn/mamba_partials.cuh. Backward cost per
// (t, n), counted in the PTX: ~2 EX2 (segment walk, sub-segment walk), ~17 other FP
// instructions, ~1.3 shared accesses, and 2 loads + 2 adds of the channel sums: ~25.
// No atomics: every sum has a fixed order, so results are bitwise reproducible.
// Storage is float32, bfloat16 or float64; arithmetic is float32 (float64 for float64).
#include <algorithm>
#include <type_traits>

#include "nn/mamba_cuda.h"
#include "nn/mamba_partials.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kMaxState = 64;
constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

// Everything a scan kernel reads or writes; strides in elements. u, delta and dy are
// (B, T, Di) with unit channel stride, Bm and Cm (B, T, N) with unit state stride, A
// (Di, N) and D (Di) contiguous, z like u; y, du, ddelta and dz are contiguous (B, T, Di).
struct ScanParams {
  int batch = 0, seqlen = 0, dim = 0, dstate = 0, chunks = 0;  // chunks: checkpoints per (b, c, n)
  int64_t u_bstride = 0, u_tstride = 0, delta_bstride = 0, delta_tstride = 0, dy_bstride = 0, dy_tstride = 0;
  int64_t B_bstride = 0, B_tstride = 0, C_bstride = 0, C_tstride = 0;
  int64_t z_bstride = 0, z_tstride = 0;
  const void *u = nullptr, *delta = nullptr, *A = nullptr, *Bm = nullptr, *Cm = nullptr, *D = nullptr, *dy = nullptr;
  const void* z = nullptr;  // the gate: the output is y * SiLU(z) (null: no gate)
  void *y = nullptr, *du = nullptr, *ddelta = nullptr, *dz = nullptr;  // y null: checkpoints only
  void* ckpt = nullptr;     // (B, Di, N, chunks) acc: the state entering every kEvery steps
  void* part_bc = nullptr;  // (channel groups, B, 2N, T) acc: [dBm | dCm] of one group
  void* part_ad = nullptr;  // (B, time chunks, N + 1, Di) acc: [dA | dD] of one (b, chunk)
};

constexpr int kThreadsPerBlock = 128;  // channels per block, forward and backward
constexpr int kLoadSteps = 8;          // steps whose u, delta (dy, z) loads are issued together
constexpr int kFwdThreadsPerSM = 256;  // below this many (b, c) threads per SM, time is split too
constexpr int kBwdThreadsPerSM = 384;  // the same for the backward (3 blocks of 128 fit an SM)
constexpr int kSubs = 16;              // backward sub-segments per checkpoint segment

// States per thread for N, and the backward's steps per sub-segment S (its shared row of
// S steps x [h | dBm, dCm terms] holds S * 2 kS = 128 values, one per thread to sum).
constexpr int states_for(int64_t N) { return N <= 16 ? 16 : kMaxState; }
template <int kS>
constexpr int kSubSteps = 64 / kS;
template <int kS>
constexpr int kEvery = kSubs* kSubSteps<kS>;  // checkpoint spacing: 64 (kS 16) or 16 (kS 64)
int64_t checkpoint_spacing(int64_t N) { return states_for(N) == 16 ? kEvery<16> : kEvery<kMaxState>; }

// Time chunks: chunk k covers steps [k * len, min((k + 1) * len, T)); len is a multiple of
// the checkpoint spacing. The buffers are (B, Di, N, count) in the accumulation type.
template <class Acc>
struct TimeChunks {
  int len = 0, count = 1;
  Acc* ends = nullptr;         // forward pass 1: state after chunk k from 0; backward: q at its first step from 0
  Acc* prods = nullptr;        // pass 1: product of e over chunk k
  const Acc* carry = nullptr;  // forward: state entering chunk k; backward: q entering it from later (null: 0)
  Acc* sub = nullptr;          // backward: (B, count, kSubs, kS, Di) sub-segment starting states
};

// exp2 in one instruction for float (MUFU.EX2, relative error ~2^-22; results below 2^-126
// flush to 0, which the recurrence's decay makes harmless); the full exp2 for double.
__device__ __forceinline__ float exp2_fast(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ double exp2_fast(double v) { return exp2(v); }
__device__ __forceinline__ float sigmoid_acc(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ double sigmoid_acc(double v) { return 1.0 / (1.0 + exp(-v)); }

// 16 bytes of Acc values: one shared-memory load or store instruction.
template <class Acc>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int n = 4;
  static __device__ __forceinline__ void unpack(float4 v, float* out) {
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
  static __device__ __forceinline__ float4 pack(const float* in) { return {in[0], in[1], in[2], in[3]}; }
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int n = 2;
  static __device__ __forceinline__ void unpack(double2 v, double* out) { out[0] = v.x, out[1] = v.y; }
  static __device__ __forceinline__ double2 pack(const double* in) { return {in[0], in[1]}; }
};

// out[0 .. M) = src[0 .. M) (shared memory, 16-byte aligned) and back, in 16-byte pieces.
template <int M, class Acc>
__device__ __forceinline__ void read_row(const Acc* src, Acc (&out)[M]) {
  using V = Vec16<Acc>;
#pragma unroll
  for (int j = 0; j < M; j += V::n) V::unpack(*reinterpret_cast<const typename V::type*>(src + j), out + j);
}
template <int M, class Acc>
__device__ __forceinline__ void write_row(Acc* dst, const Acc (&in)[M]) {
  using V = Vec16<Acc>;
#pragma unroll
  for (int j = 0; j < M; j += V::n) *reinterpret_cast<typename V::type*>(dst + j) = V::pack(in + j);
}

// Rows t0 .. t0+rows-1 of Bm and Cm (row b) into tile[t][0 .. kS) and tile[t][kS .. 2 kS)
// (only Cm with kOnlyC: tile[t][0 .. kS)); zeros past `nt` rows and past N.
template <class F, int kS, bool kOnlyC, int kRow>
__device__ void stage_bc(acc_t<F> (*tile)[kRow], const ScanParams& p, int b, int t0, int rows, int nt) {
  constexpr int W = kOnlyC ? kS : 2 * kS;
  const F* Bm = static_cast<const F*>(p.Bm) + b * p.B_bstride;
  const F* Cm = static_cast<const F*>(p.Cm) + b * p.C_bstride;
  for (int i = threadIdx.x; i < rows * W; i += kThreadsPerBlock) {
    const int t = i / W, j = i % W, n = j % kS;
    const bool isC = kOnlyC || j >= kS;
    const F* src = isC ? Cm + int64_t(t0 + t) * p.C_tstride : Bm + int64_t(t0 + t) * p.B_tstride;
    tile[t][j] = t < nt && n < p.dstate ? load(src + n) : acc_t<F>(0);
  }
}

// ---- forward ------------------------------------------------------------------------

// grid (ceil(Di / 128), B, chunks), block 128: thread = channel c of row b, walking time
// chunk blockIdx.z. kFinal: start from tc.carry (or 0), write y (if p.y) and the
// checkpoints (if p.ckpt). Otherwise (pass 1, chunks 0 .. count-2 only): start from 0 and
// write the chunk's end state and product of e.
template <class F, int kS, bool kFinal>
__global__ void __launch_bounds__(kThreadsPerBlock, kS == 16 ? 4 : 1)
    scan_fwd_kernel(ScanParams p, TimeChunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  constexpr int kTile = kS <= 16 ? 128 : 32;        // steps of Bm, Cm staged at a time
  __shared__ __align__(16) Acc sBC[kTile][2 * kS];  // [step][Bm_0 .. Bm_kS-1, Cm_0 .. Cm_kS-1]
  const int N = p.dstate, T = p.seqlen, Di = p.dim;
  const int b = blockIdx.y, k = blockIdx.z, c = blockIdx.x * kThreadsPerBlock + threadIdx.x;
  const bool active = c < Di;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  const int64_t state0 = (int64_t(b) * Di + c) * N;  // (b, c, n = 0) in a (B, Di, N, ...) table
  Acc a2[kS], h[kS], prod[kS];
#pragma unroll
  for (int n = 0; n < kS; ++n) {
    a2[n] = active && n < N ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    h[n] = kFinal && tc.carry && active && n < N ? tc.carry[(state0 + n) * tc.count + k] : Acc(0);
    prod[n] = 1;
  }
  const Acc d = kFinal && active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  const F* u = static_cast<const F*>(p.u) + b * p.u_bstride + c;
  const F* delta = static_cast<const F*>(p.delta) + b * p.delta_bstride + c;
  const F* z = kFinal && p.z && p.y ? static_cast<const F*>(p.z) + b * p.z_bstride + c : nullptr;
  F* y = kFinal && p.y && active ? static_cast<F*>(p.y) + int64_t(b) * T * Di + c : nullptr;
  Acc* ck = kFinal && p.ckpt && active ? static_cast<Acc*>(p.ckpt) + state0 * p.chunks : nullptr;  // (N, chunks)

  for (int t0 = tbeg; t0 < tend; t0 += kTile) {
    const int nt = min(kTile, tend - t0);
    __syncthreads();  // the previous tile is consumed
    stage_bc<F, kS, false>(sBC, p, b, t0, kTile, nt);
    __syncthreads();
    for (int s0 = 0; s0 < nt; s0 += kLoadSteps) {
      const int ns = min(kLoadSteps, nt - s0);
      const int64_t ts = t0 + s0;        // the first step of these
      if (ck && ts % kEvery<kS> == 0) {  // a checkpoint: the state entering step ts
#pragma unroll
        for (int n = 0; n < kS; ++n)  // (unrolled, so that h stays in registers)
          if (n < N) ck[int64_t(n) * p.chunks + ts / kEvery<kS>] = h[n];
      }
      Acc xu[kLoadSteps], xd[kLoadSteps], xz[kLoadSteps];
#pragma unroll
      for (int i = 0; i < kLoadSteps; ++i) {  // all loads first, so that they overlap
        const bool ok = active && i < ns;
        xu[i] = ok ? load(u + (ts + i) * p.u_tstride) : Acc(0);
        xd[i] = ok ? load(delta + (ts + i) * p.delta_tstride) : Acc(0);
        xz[i] = ok && z ? load(z + (ts + i) * p.z_tstride) : Acc(0);
      }
#pragma unroll
      for (int i = 0; i < kLoadSteps; ++i) {
        if (i >= ns) break;
        const Acc dtu = xd[i] * xu[i];
        Acc bc[2 * kS];  // Bm_t, Cm_t (the same in every thread: broadcasts)
        read_row(sBC[s0 + i], bc);
        Acc yv = d * xu[i];
#pragma unroll
        for (int n = 0; n < kS; ++n) {
          const Acc e = exp2_fast(xd[i] * a2[n]);  // exp(delta_t A[c, n])
          h[n] = e * h[n] + dtu * bc[n];
          if (kFinal)
            yv += bc[kS + n] * h[n];
          else
            prod[n] *= e;
        }
        if (y) {
          if (z) yv *= xz[i] * sigmoid_acc(xz[i]);
          store(y + (ts + i) * Di, yv);
        }
      }
    }
  }
  if (!kFinal && active) {
#pragma unroll
    for (int n = 0; n < kS; ++n) {
      if (n >= N) break;
      tc.ends[(state0 + n) * tc.count + k] = h[n];
      tc.prods[(state0 + n) * tc.count + k] = prod[n];
    }
  }
}

// Between the passes, per (b, c, n): the value entering every chunk, composing the
// chunks' own maps v -> prod * v + end in order, first to last (forward: the state) or
// last to first (backward: q).
template <class Acc, bool kReverse>
__global__ void scan_carry_kernel(TimeChunks<Acc> tc, Acc* carry, int64_t rows) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, c, n)
  if (r >= rows) return;
  Acc v = 0;
  for (int i = 0; i < tc.count; ++i) {
    const int64_t at = r * tc.count + (kReverse ? tc.count - 1 - i : i);
    carry[at] = v;
    if (i + 1 < tc.count) v = tc.prods[at] * v + tc.ends[at];
  }
}

// ---- backward -----------------------------------------------------------------------

// dL/dy of the ungated output at step i: dy, times SiLU(z) with the gate.
template <class Acc>
__device__ __forceinline__ Acc gated(Acc dy, Acc z, bool gate) {
  return gate ? dy * (z * sigmoid_acc(z)) : dy;
}

// Pass 1: grid (ceil(Di / 128), B, count - 1), chunk blockIdx.z + 1 from q = 0, last step
// first: q at its first step and the product of e over it, into tc.ends and tc.prods.
template <class F, int kS>
__global__ void __launch_bounds__(kThreadsPerBlock) scan_bwd_pass1_kernel(ScanParams p, TimeChunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  constexpr int kTile = 64;
  __shared__ __align__(16) Acc sC[kTile][kS];
  const int N = p.dstate, T = p.seqlen, Di = p.dim;
  const int b = blockIdx.y, k = blockIdx.z + 1, c = blockIdx.x * kThreadsPerBlock + threadIdx.x;
  const bool active = c < Di;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  const int64_t state0 = (int64_t(b) * Di + c) * N;
  Acc a2[kS], q[kS], prod[kS];
#pragma unroll
  for (int n = 0; n < kS; ++n) {
    a2[n] = active && n < N ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    q[n] = 0, prod[n] = 1;
  }
  const F* delta = static_cast<const F*>(p.delta) + b * p.delta_bstride + c;
  const F* dy = static_cast<const F*>(p.dy) + b * p.dy_bstride + c;
  const F* z = p.z ? static_cast<const F*>(p.z) + b * p.z_bstride + c : nullptr;
  for (int t1 = tend; t1 > tbeg; t1 -= kTile) {  // tiles [t0, t1), last first
    const int t0 = max(tbeg, t1 - kTile), nt = t1 - t0;
    __syncthreads();
    stage_bc<F, kS, true>(sC, p, b, t0, kTile, nt);
    __syncthreads();
    for (int s1 = nt; s1 > 0; s1 -= kLoadSteps) {  // steps [s0, s1) of the tile, last first
      const int s0 = max(0, s1 - kLoadSteps), ns = s1 - s0;
      Acc xd[kLoadSteps], xg[kLoadSteps];
#pragma unroll
      for (int i = 0; i < kLoadSteps; ++i) {
        const bool ok = active && i < ns;
        const int64_t t = t0 + s0 + i;
        xd[i] = ok ? load(delta + t * p.delta_tstride) : Acc(0);
        xg[i] = ok ? gated(load(dy + t * p.dy_tstride), z ? load(z + t * p.z_tstride) : Acc(0), z) : Acc(0);
      }
#pragma unroll
      for (int i = kLoadSteps - 1; i >= 0; --i) {
        if (i >= ns) continue;
        Acc cm[kS];
        read_row(sC[s0 + i], cm);
#pragma unroll
        for (int n = 0; n < kS; ++n) {
          const Acc e = exp2_fast(xd[i] * a2[n]);
          q[n] = e * (q[n] + xg[i] * cm[n]);
          prod[n] *= e;
        }
      }
    }
  }
  if (active) {
#pragma unroll
    for (int n = 0; n < kS; ++n) {
      if (n >= N) break;
      tc.ends[(state0 + n) * tc.count + k] = q[n];
      tc.prods[(state0 + n) * tc.count + k] = prod[n];
    }
  }
}

// The main backward: grid (ceil(Di / 128), B, count), block 128, dynamic shared memory
// 128 rows of kRowLen (bwd_smem_bytes). Thread = channel c of row b, walking the
// checkpoint segments of time chunk blockIdx.z from last to first (see the header).
// Three blocks per SM at N <= 16 (registers capped at 168; shared memory 74 KiB a block).
template <class F, int kS>
__global__ void __launch_bounds__(kThreadsPerBlock, kS == 16 ? 3 : 1)
    scan_bwd_kernel(ScanParams p, TimeChunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  constexpr int S = kSubSteps<kS>, E = kEvery<kS>, kRowLen = 2 * kS * S + 4;  // +4: conflict-free rows
  static_assert(2 * kS * S == kThreadsPerBlock, "one summed value per thread");
  __shared__ __align__(16) Acc sBC[E][2 * kS];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* const rows = reinterpret_cast<Acc*>(smem_raw);  // (128, kRowLen): step r of a sub-segment at r * 2 kS
  Acc* const mine = rows + threadIdx.x * kRowLen;
  const int N = p.dstate, T = p.seqlen, Di = p.dim;
  const int b = blockIdx.y, k = blockIdx.z, c = blockIdx.x * kThreadsPerBlock + threadIdx.x;
  const bool active = c < Di;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  const int64_t state0 = (int64_t(b) * Di + c) * N;
  Acc a2[kS], q[kS], gA[kS];
#pragma unroll
  for (int n = 0; n < kS; ++n) {
    a2[n] = active && n < N ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    q[n] = tc.carry && active && n < N ? tc.carry[(state0 + n) * tc.count + k] : Acc(0);
    gA[n] = 0;
  }
  const Acc d = active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  const F* u = static_cast<const F*>(p.u) + b * p.u_bstride + c;
  const F* delta = static_cast<const F*>(p.delta) + b * p.delta_bstride + c;
  const F* dy = static_cast<const F*>(p.dy) + b * p.dy_bstride + c;
  const F* z = p.z ? static_cast<const F*>(p.z) + b * p.z_bstride + c : nullptr;
  const int64_t out0 = int64_t(b) * T * Di + c;
  F* du = static_cast<F*>(p.du) + out0;
  F* ddelta = static_cast<F*>(p.ddelta) + out0;
  F* dz = z ? static_cast<F*>(p.dz) + out0 : nullptr;
  const Acc* ck = static_cast<const Acc*>(p.ckpt) + state0 * p.chunks;                         // (N, chunks)
  Acc* sub = tc.sub + (int64_t(b) * tc.count + k) * kSubs * kS * Di + c;                       // (kSubs, kS, Di)
  Acc* part = static_cast<Acc*>(p.part_bc) + (int64_t(blockIdx.x) * p.batch + b) * 2 * N * T;  // (2N, T)
  Acc gD = 0;

  for (int t0 = (tend - 1) / E * E; t0 >= tbeg; t0 -= E) {  // segments, last first
    const int len = min(E, tend - t0), nsub = (len + S - 1) / S, walk = (nsub - 1) * S;
    __syncthreads();  // the previous segment's Bm, Cm are consumed
    stage_bc<F, kS, false>(sBC, p, b, t0, E, len);
    __syncthreads();
    // 1. From the checkpoint to the start of the last sub-segment, leaving each
    //    sub-segment's starting state in `sub` (the last one stays in h).
    Acc h[kS];
#pragma unroll
    for (int n = 0; n < kS; ++n) h[n] = active && n < N ? ck[int64_t(n) * p.chunks + t0 / E] : Acc(0);
    for (int s0 = 0; s0 < walk; s0 += kLoadSteps) {
      const int ns = min(kLoadSteps, walk - s0);
      Acc xu[kLoadSteps], xd[kLoadSteps];
#pragma unroll
      for (int i = 0; i < kLoadSteps; ++i) {
        const bool ok = active && i < ns;
        xu[i] = ok ? load(u + int64_t(t0 + s0 + i) * p.u_tstride) : Acc(0);
        xd[i] = ok ? load(delta + int64_t(t0 + s0 + i) * p.delta_tstride) : Acc(0);
      }
#pragma unroll
      for (int i = 0; i < kLoadSteps; ++i) {
        if (i >= ns) break;
        if ((s0 + i) % S == 0 && active) {
#pragma unroll
          for (int n = 0; n < kS; ++n)
            if (n < N) sub[int64_t((s0 + i) / S * kS + n) * Di] = h[n];
        }
        Acc bm[kS];
        read_row(sBC[s0 + i], bm);  // (the first kS values of the row: Bm)
        const Acc dtu = xd[i] * xu[i];
#pragma unroll
        for (int n = 0; n < kS; ++n) h[n] = exp2_fast(xd[i] * a2[n]) * h[n] + dtu * bm[n];
      }
    }
    // 2. Sub-segments, last first.
    for (int j = nsub - 1; j >= 0; --j) {
      const int r0 = j * S, rs = min(S, len - r0);
      if (j < nsub - 1) {
#pragma unroll
        for (int n = 0; n < kS; ++n) h[n] = active && n < N ? sub[int64_t(j * kS + n) * Di] : Acc(0);
      }
      Acc xu[S], xd[S], xy[S], xz[S], xg[S];
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const bool ok = active && i < rs;
        const int64_t t = t0 + r0 + i;
        xu[i] = ok ? load(u + t * p.u_tstride) : Acc(0);
        xd[i] = ok ? load(delta + t * p.delta_tstride) : Acc(0);
        xy[i] = ok ? load(dy + t * p.dy_tstride) : Acc(0);
        xz[i] = ok && z ? load(z + t * p.z_tstride) : Acc(0);
        xg[i] = gated(xy[i], xz[i], z);
      }
      // Forward over the sub-segment: h_{t-1} and e_t of each step into this thread's row.
#pragma unroll
      for (int i = 0; i < S; ++i) {
        if (i >= rs) break;
        Acc bm[kS], e[kS];
        read_row(sBC[r0 + i], bm);
        const Acc dtu = xd[i] * xu[i];
#pragma unroll
        for (int n = 0; n < kS; ++n) e[n] = exp2_fast(xd[i] * a2[n]);
        write_row(mine + i * 2 * kS, h);
        write_row(mine + i * 2 * kS + kS, e);
#pragma unroll
        for (int n = 0; n < kS; ++n) h[n] = e[n] * h[n] + dtu * bm[n];
      }
      // Backwards over it.
#pragma unroll
      for (int i = S - 1; i >= 0; --i) {
        if (i >= rs) continue;
        Acc hp[kS], ep[kS], bc[2 * kS];
        read_row(mine + i * 2 * kS, hp);
        read_row(mine + i * 2 * kS + kS, ep);
        read_row(sBC[r0 + i], bc);
        const Acc dtu = xd[i] * xu[i];
        Acc s1 = 0, s2 = 0, yo = d * xu[i];
#pragma unroll
        for (int n = 0; n < kS; ++n) {
          const Acc e = ep[n];
          const Acc eh = e * hp[n], ht = eh + dtu * bc[n];  // e_t h_{t-1}, h_t
          const Acc g = q[n] + xg[i] * bc[kS + n];          // dL/dh_t
          const Acc w = g * eh;
          s1 += g * bc[n];
          s2 += a2[n] * w;
          gA[n] += xd[i] * w;
          yo += bc[kS + n] * ht;
          q[n] = e * g;
          hp[n] = g * dtu;          // dBm_t term
          bc[kS + n] = xg[i] * ht;  // dCm_t term
        }
        write_row(mine + i * 2 * kS, hp);
        Acc dc[kS];
#pragma unroll
        for (int n = 0; n < kS; ++n) dc[n] = bc[kS + n];
        write_row(mine + i * 2 * kS + kS, dc);
        if (active) {
          const int64_t t = t0 + r0 + i;
          store(du + t * Di, xg[i] * d + xd[i] * s1);
          store(ddelta + t * Di, s2 * Acc(kLn2) + xu[i] * s1);  // sum_n A w = ln 2 * sum_n a2 w
          gD += xg[i] * xu[i];
          if (z) {  // dz = dy * y * SiLU'(z), SiLU'(z) = s (1 + z (1 - s))
            const Acc sg = sigmoid_acc(xz[i]);
            store(dz + t * Di, xy[i] * yo * (sg * (Acc(1) + xz[i] * (Acc(1) - sg))));
          }
        }
      }
      __syncthreads();  // every row holds its terms
      {                 // value v of the rows: step v / 2kS, [dBm | dCm] state v % 2kS
        const int v = threadIdx.x, r = v / (2 * kS), jn = v % (2 * kS), n = jn % kS;
        if (r < rs && n < N) {
          Acc s = 0;
          for (int i = 0; i < kThreadsPerBlock; ++i) s += rows[i * kRowLen + v];
          part[int64_t((jn < kS ? 0 : N) + n) * T + t0 + r0 + r] = s;
        }
      }
      __syncthreads();  // the rows are read before the next sub-segment writes them
    }
  }
  if (!active) return;
  Acc* pad = static_cast<Acc*>(p.part_ad) + (int64_t(b) * tc.count + k) * (N + 1) * Di + c;  // (N + 1, Di)
#pragma unroll
  for (int n = 0; n < kS; ++n)
    if (n < N) pad[int64_t(n) * Di] = gA[n];
  pad[int64_t(N) * Di] = gD;
}

// dBm, dCm (B, T, N): sum the channel groups' partials (groups, B, 2N, T), t fastest.
template <class F>
__global__ void scan_dbc_finalize_kernel(const acc_t<F>* __restrict__ part, F* __restrict__ dB, F* __restrict__ dC,
                                         int groups, int Bsz, int T, int N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, j, t)
  const int64_t per_group = int64_t(Bsz) * 2 * N * T;
  if (i >= per_group) return;
  const int t = int(i % T), j = int(i / T % (2 * N)), b = int(i / (int64_t(T) * 2 * N));
  acc_t<F> s = 0;
  for (int k = 0; k < groups; ++k) s += part[k * per_group + i];
  store((j < N ? dB : dC) + (int64_t(b) * T + t) * N + j % N, s);
}

// ---- host side ----------------------------------------------------------------------

int sm_count(int device) {
  int n = 0;
  SESSA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "selective_scan");
  return n;
}

// u, delta, dy may be any (B, T, Di) view with unit channel stride; Bm, Cm any (B, T, N)
// view with unit state stride (the mixer's slices of the x_proj output). Others are copied.
Tensor unit_last_stride(const Tensor& t) { return t.strides().back() == 1 ? t : ops::contiguous(t); }

void check_scan_sizes(const char* op, int64_t B, int64_t T, int64_t Di, int64_t N) {
  SESSA_CHECK(N <= kMaxState, op, "state size N = " << N << " is not supported on cuda (at most " << kMaxState << ")");
  SESSA_CHECK(B <= 65535 && B * T * Di < (int64_t(1) << 31) && T < (int64_t(1) << 30), op,
              "sizes too large for the cuda kernels (batch at most 65535, B*T*channels below 2^31); got B "
                  << B << ", T " << T << ", channels " << Di);
}

ScanParams make_params(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                       const Tensor& Dk) {
  ScanParams p;
  p.batch = int(u.size(0)), p.seqlen = int(u.size(1)), p.dim = int(u.size(2)), p.dstate = int(A.size(1));
  p.chunks = int((u.size(1) + checkpoint_spacing(A.size(1)) - 1) / checkpoint_spacing(A.size(1)));
  p.u_bstride = u.strides()[0], p.u_tstride = u.strides()[1];
  p.delta_bstride = delta.strides()[0], p.delta_tstride = delta.strides()[1];
  p.B_bstride = Bm.strides()[0], p.B_tstride = Bm.strides()[1];
  p.C_bstride = Cm.strides()[0], p.C_tstride = Cm.strides()[1];
  p.u = u.raw_data(), p.delta = delta.raw_data(), p.A = A.raw_data(), p.Bm = Bm.raw_data(), p.Cm = Cm.raw_data();
  p.D = Dk.raw_data();
  return p;
}

// Time chunks of whole checkpoint segments, as few as keep `per_sm` (b, c) threads per SM.
template <class Acc>
TimeChunks<Acc> time_chunks(const ScanParams& p, int per_sm, int device) {
  const int64_t segments = p.chunks, every = checkpoint_spacing(p.dstate);
  const int64_t threads = int64_t(p.batch) * ((p.dim + kThreadsPerBlock - 1) / kThreadsPerBlock) * kThreadsPerBlock;
  const int64_t want = std::clamp<int64_t>((int64_t(per_sm) * sm_count(device) + threads - 1) / threads, 1, segments);
  const int64_t per_chunk = (segments + want - 1) / want;  // segments per chunk
  TimeChunks<Acc> tc;
  tc.len = int(per_chunk * every), tc.count = int((segments + per_chunk - 1) / per_chunk);
  return tc;
}

dim3 scan_grid(const ScanParams& p, int chunks) {
  return {unsigned((p.dim + kThreadsPerBlock - 1) / kThreadsPerBlock), unsigned(p.batch), unsigned(chunks)};
}

// (B, Di, N, count) in the accumulation type.
Tensor chunk_table(const ScanParams& p, int count, const Tensor& like) {
  return Tensor::empty({p.batch, p.dim, p.dstate, count}, {acc_dtype(like.dtype()), like.device()});
}

// The carry kernel over (B, Di, N) rows.
template <class Acc, bool kReverse>
void launch_carry(const ScanParams& p, const TimeChunks<Acc>& tc, Acc* carry, cudaStream_t st, const char* op) {
  const int64_t rows = int64_t(p.batch) * p.dim * p.dstate;
  if (rows == 0) return;
  scan_carry_kernel<Acc, kReverse><<<blocks_for(rows), kThreads, 0, st>>>(tc, carry, rows);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// The forward: y (if p.y) and the checkpoints (if p.ckpt).
template <class F, int kS>
void run_forward(const ScanParams& p, const Tensor& like, cudaStream_t st, const char* op) {
  using Acc = acc_t<F>;
  TimeChunks<Acc> tc = time_chunks<Acc>(p, kFwdThreadsPerSM, like.device().index);
  const dim3 grid = scan_grid(p, tc.count);
  Tensor ends, prods, carry;
  if (tc.count > 1) {  // pass 1 on chunks 0 .. count-2, then the states entering each chunk
    ends = chunk_table(p, tc.count, like), prods = chunk_table(p, tc.count, like);
    carry = chunk_table(p, tc.count, like);
    tc.ends = static_cast<Acc*>(ends.raw_data()), tc.prods = static_cast<Acc*>(prods.raw_data());
    scan_fwd_kernel<F, kS, false><<<dim3{grid.x, grid.y, grid.z - 1}, kThreadsPerBlock, 0, st>>>(p, tc);
    SESSA_CUDA_LAUNCH_CHECK(op);
    launch_carry<Acc, false>(p, tc, static_cast<Acc*>(carry.raw_data()), st, op);
    tc.carry = static_cast<const Acc*>(carry.raw_data());
  }
  scan_fwd_kernel<F, kS, true><<<grid, kThreadsPerBlock, 0, st>>>(p, tc);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// The backward's shared memory beyond its static tiles: 128 rows of 2 kS S + 4 values.
template <class Acc, int kS>
constexpr size_t bwd_smem_bytes() {
  return sizeof(Acc) * kThreadsPerBlock * (2 * kS * kSubSteps<kS> + 4);
}

// The backward kernels; p.ckpt holds the checkpoints, p.part_bc is (groups, B, 2N, T) and
// p.part_ad (B, count, N + 1, Di) for the returned count.
template <class F, int kS>
void run_backward(ScanParams& p, const Tensor& like, Tensor& part_ad, cudaStream_t st, const char* op) {
  using Acc = acc_t<F>;
  TimeChunks<Acc> tc = time_chunks<Acc>(p, kBwdThreadsPerSM, like.device().index);
  const dim3 grid = scan_grid(p, tc.count);
  const TensorOptions acc{acc_dtype(like.dtype()), like.device()};
  part_ad = Tensor::empty({p.batch, tc.count, p.dstate + 1, p.dim}, acc);
  p.part_ad = part_ad.raw_data();
  Tensor sub = Tensor::empty({p.batch, tc.count, kSubs, kS, p.dim}, acc);
  tc.sub = static_cast<Acc*>(sub.raw_data());
  Tensor ends, prods, carry;
  if (tc.count > 1) {  // pass 1 on chunks 1 .. count-1, then the q entering each chunk
    ends = chunk_table(p, tc.count, like), prods = chunk_table(p, tc.count, like);
    carry = chunk_table(p, tc.count, like);
    tc.ends = static_cast<Acc*>(ends.raw_data()), tc.prods = static_cast<Acc*>(prods.raw_data());
    scan_bwd_pass1_kernel<F, kS><<<dim3{grid.x, grid.y, grid.z - 1}, kThreadsPerBlock, 0, st>>>(p, tc);
    SESSA_CUDA_LAUNCH_CHECK(op);
    launch_carry<Acc, true>(p, tc, static_cast<Acc*>(carry.raw_data()), st, op);
    tc.carry = static_cast<const Acc*>(carry.raw_data());
  }
  constexpr size_t bytes = bwd_smem_bytes<Acc, kS>();
  auto kernel = scan_bwd_kernel<F, kS>;
  SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
  SESSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared)),
      op);
  kernel<<<grid, kThreadsPerBlock, bytes, st>>>(p, tc);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// f(integral_constant<int, kS>) for the states per thread that N needs.
template <class Fn>
void with_states(int64_t N, Fn&& f) {
  if (states_for(N) == 16)
    f(std::integral_constant<int, 16>{});
  else
    f(std::integral_constant<int, kMaxState>{});
}

}  // namespace

Tensor selective_scan(const Tensor& u_in, const Tensor& delta_in, const Tensor& A_in, const Tensor& Bm_in,
                      const Tensor& Cm_in, const Tensor& D_in, const Tensor& z_in, Tensor* checkpoints) {
  const char* op = "selective_scan";
  Tensor u = unit_last_stride(u_in), delta = unit_last_stride(delta_in), A = ops::contiguous(A_in),
         Bm = unit_last_stride(Bm_in), Cm = unit_last_stride(Cm_in), Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_scan_sizes(op, B, T, Di, N);
  Tensor y = Tensor::empty(u.shape(), u.options());
  if (checkpoints) *checkpoints = Tensor();
  if (y.numel() == 0) return y;
  ScanParams p = make_params(u, delta, A, Bm, Cm, Dk);
  p.y = y.raw_data();
  Tensor z = z_in.defined() ? unit_last_stride(z_in) : Tensor();
  if (z.defined()) p.z = z.raw_data(), p.z_bstride = z.strides()[0], p.z_tstride = z.strides()[1];
  if (checkpoints) {
    *checkpoints = Tensor::empty({B, Di, N, p.chunks}, {acc_dtype(u.dtype()), u.device()});
    p.ckpt = checkpoints->raw_data();
  }
  cudaStream_t st = stream(u.device().index);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    with_states(N, [&](auto kS) { run_forward<decltype(tag), decltype(kS)::value>(p, u, st, op); });
  });
  return y;
}

nn::SelectiveScanGrads selective_scan_backward(const Tensor& dy_in, const Tensor& u_in, const Tensor& delta_in,
                                               const Tensor& A_in, const Tensor& Bm_in, const Tensor& Cm_in,
                                               const Tensor& D_in, const Tensor& z_in, const Tensor& checkpoints) {
  const char* op = "selective_scan_backward";
  Tensor dy = unit_last_stride(dy_in), u = unit_last_stride(u_in), delta = unit_last_stride(delta_in),
         A = ops::contiguous(A_in), Bm = unit_last_stride(Bm_in), Cm = unit_last_stride(Cm_in),
         Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_scan_sizes(op, B, T, Di, N);
  const TensorOptions opt = u.options(), acc{acc_dtype(u.dtype()), u.device()};
  const bool gate = z_in.defined();
  if (u.numel() == 0)
    return {zeros(u.shape(), opt),
            zeros(u.shape(), opt),
            zeros(A.shape(), opt),
            zeros(Bm.shape(), opt),
            zeros(Cm.shape(), opt),
            zeros(Dk.shape(), opt),
            gate ? zeros(u.shape(), opt) : Tensor()};
  nn::SelectiveScanGrads g{Tensor::empty(u.shape(), opt),
                           Tensor::empty(u.shape(), opt),
                           Tensor::empty(A.shape(), opt),
                           Tensor::empty(Bm.shape(), opt),
                           Tensor::empty(Cm.shape(), opt),
                           Tensor::empty(Dk.shape(), opt),
                           gate ? Tensor::empty(u.shape(), opt) : Tensor()};
  ScanParams p = make_params(u, delta, A, Bm, Cm, Dk);
  Tensor z = gate ? unit_last_stride(z_in) : Tensor();
  if (gate) p.z = z.raw_data(), p.z_bstride = z.strides()[0], p.z_tstride = z.strides()[1];
  // Checkpoints from the forward if they fit this call; otherwise the forward makes them (no y).
  const Shape ck_shape{B, Di, N, p.chunks};
  Tensor ckpt = checkpoints;
  const bool ready = ckpt.defined() && ckpt.shape() == ck_shape && ckpt.dtype() == acc.dtype &&
                     ckpt.device() == u.device() && ckpt.is_contiguous();
  cudaStream_t st = stream(u.device().index);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using Acc = acc_t<F>;
    with_states(N, [&](auto kS) {
      constexpr int S = decltype(kS)::value;
      if (!ready) {
        ckpt = Tensor::empty(ck_shape, acc);
        ScanParams pf = p;
        pf.ckpt = ckpt.raw_data();
        run_forward<F, S>(pf, u, st, op);
      }
      p.ckpt = ckpt.raw_data();
      p.dy = dy.raw_data(), p.dy_bstride = dy.strides()[0], p.dy_tstride = dy.strides()[1];
      p.du = g.du.raw_data(), p.ddelta = g.ddelta.raw_data();
      if (gate) p.dz = g.dz.raw_data();
      const int64_t groups = (Di + kThreadsPerBlock - 1) / kThreadsPerBlock;
      Tensor part_bc = Tensor::empty({groups, B, 2 * N, T}, acc), part_ad;
      p.part_bc = part_bc.raw_data();
      run_backward<F, S>(p, u, part_ad, st, op);
      scan_dbc_finalize_kernel<F><<<blocks_for(B * 2 * N * T), kThreads, 0, st>>>(
          static_cast<const Acc*>(part_bc.raw_data()), static_cast<F*>(g.dB.raw_data()),
          static_cast<F*>(g.dC.raw_data()), int(groups), int(B), int(T), int(N));
      SESSA_CUDA_LAUNCH_CHECK(op);
      // dA (Di, N) and dD (Di): the (b, chunk) partials (B * count, N + 1, Di) summed.
      sum_split_partials<F>(static_cast<const Acc*>(part_ad.raw_data()), static_cast<F*>(g.dA.raw_data()),
                            static_cast<F*>(g.dD.raw_data()), int(part_ad.size(0) * part_ad.size(1)), int(Di), int(N),
                            st, op);
    });
  });
  return g;
}

}  // namespace sessa::cuda
