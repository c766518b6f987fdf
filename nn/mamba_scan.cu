// CUDA selective scan (the math: nn/mamba_ops.h and .cpp). The recurrence per (b, c, n),
// h_t = e_t h_{t-1} + x_t with e_t = exp(delta_t A) and x_t = delta_t Bm_t u_t, is a
// composition of affine maps h -> e h + x, which is associative:
// (e1, x1) then (e2, x2) = (e2 e1, e2 x1 + x2).
//
// Forward: one thread per (b, channel c), walking the steps in order with all N states in
// registers (N rounded up to 16, or to 64 above 16; padded states have A = Bm = Cm = 0 and
// stay 0). Per (t, n) that is the floor of the math: one MUFU.EX2 (A pre-scaled by log2 e,
// exp2 in one ex2.approx.ftz instruction), one FMUL + FFMA for h, one FFMA for y, and half
// of a 16-byte shared-memory broadcast for Bm_t[n], Cm_t[n] (a block is 128 consecutive
// channels of one batch row, so every thread needs the same Bm_t, Cm_t: staged per tile of
// steps in shared memory as [step][Bm | Cm]); the N independent recurrences give the
// instruction-level parallelism. u, delta (and z) loads are coalesced across channels and
// issued 8 steps at a time. When B * Di threads would leave SMs idle (fewer than
// kFwdThreadsPerSM per SM), time is split into chunks too: pass 1 runs chunks 0 .. K-2 from
// a zero state and keeps each chunk's map (product of e, end state), a small kernel
// composes the maps in order into the state entering each chunk, and pass 2 reruns every
// chunk from its true entering state and writes y (gated by SiLU(z) when z is given, plus
// the D skip). Pass 2 also writes the checkpoints the backward uses, the state entering
// every kChunk steps (ScanConfig below), when asked.
//
// Backward (still the earlier design: to be moved to the per-thread scheme too). A block
// owns one batch row b and kWarps consecutive channels, one warp per channel; time goes in
// chunks of kChunk = 32 * kItems steps. Within a chunk, lane p of a warp holds the kItems
// consecutive steps p*kItems .. p*kItems+kItems-1 in registers. Per state n (kStates of
// them side by side in one pass, so that their shuffle and exp latencies overlap) each
// lane composes its own steps into one map, a warp shuffle scan (5 rounds) combines the
// lanes, and each lane replays its steps from its exact starting state. Shared memory
// stages the (time x channel) tiles so that global loads and stores stay coalesced in the
// (B, T, Di) layout (channel fastest), and the Bm, Cm (time x state) tiles that all warps
// of the block share. Tiles are stored with step t of lane p at p*(kItems+1) + item
// (kItems even, so a lane's reads hit distinct banks) and a row padding of one word.
// With q_t = e_t * dL/dh_t, the adjoint obeys q_t = e_t q_{t+1} + e_t dy_t Cm_t,
// the same kind of affine recurrence run backwards: the same scan with shuffles going
// down, chunks visited last to first, the carry being q at the first step of the later
// chunk (entering through lane 31, which alone reads and writes it). The forward states h_{t-1} a chunk needs are
// recomputed from the state at its start: a checkpoint (B, Di, N, chunks) float32 that the forward kernel writes when
// asked (nn::selective_scan keeps it for its backward) or that a first forward sweep of the backward kernel writes
// (composition only, no outputs). Gradients, per (b, c, n):
//   du_t += gh delta_t Bm_t,  ddelta_t += gh (A e_t h_{t-1} + Bm_t u_t)     (registers)
//   dA   += gh delta_t e_t h_{t-1}  (warp sum per chunk, then one partial per (b, c))
//   dBm_t = sum_c gh delta_t u_t, dCm_t = sum_c dy_t h_t (the block's channels summed in
//          shared memory in a fixed order after one barrier per pass of kStates states,
//          one partial per channel group; a second kernel
//          sums the groups), dD = sum dy u (lane registers, warp sum at the end).
// With the gate, the backward turns dy into dy * SiLU(z) on loading it and rebuilds y
// (sum over n of Cm h, plus D u) along the way for dz = dy * y * SiLU'(z).
// No atomics: every sum has a fixed order, so results are bitwise reproducible.
// Storage is float32, bfloat16 or float64; arithmetic is float32 (float64 for float64).
// Scratch: checkpoints (B * Di * N * ceil(T / kChunk) floats), the forward's chunk maps
// (3 * B * Di * N * chunks floats, only when time is split) and the dBm/dCm partials
// (ceil(Di / kWarps) * B * 2N * T floats).
#include <algorithm>
#include <type_traits>

#include "nn/mamba_cuda.h"
#include "nn/mamba_partials.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxState = 64;

// Everything a scan kernel reads or writes; strides in elements. u, delta and dy are
// (B, T, Di) with unit channel stride, Bm and Cm (B, T, N) with unit state stride, A
// (Di, N) and D (Di) contiguous, z like u; y, du, ddelta and dz are contiguous (B, T, Di).
struct ScanParams {
  int batch = 0, seqlen = 0, dim = 0, dstate = 0, chunks = 0;
  int64_t u_bstride = 0, u_tstride = 0, delta_bstride = 0, delta_tstride = 0, dy_bstride = 0, dy_tstride = 0;
  int64_t B_bstride = 0, B_tstride = 0, C_bstride = 0, C_tstride = 0;
  int64_t z_bstride = 0, z_tstride = 0;
  const void *u = nullptr, *delta = nullptr, *A = nullptr, *Bm = nullptr, *Cm = nullptr, *D = nullptr, *dy = nullptr;
  const void* z = nullptr;  // the gate: the output is y * SiLU(z) (null: no gate)
  void *y = nullptr, *du = nullptr, *ddelta = nullptr, *dz = nullptr;
  void* ckpt = nullptr;     // (B, Di, N, chunks) acc: the state before each chunk
  bool ckpt_ready = false;  // backward: ckpt already holds the forward's checkpoints
  void* part_bc = nullptr;  // (channel groups, B, 2N, T) acc: [dBm | dCm] of one group
  void* part_ad = nullptr;  // (B, N + 1, Di) acc: [dA | dD] of one batch row
};

// Compile-time shape of a scan kernel: storage type, warps (= channels) per block, steps
// per lane, states per pass (kStates independent states are scanned side by side, so
// their shuffle and exp latencies overlap; a pass past N repeats state N - 1 and discards
// it). Shared memory (dynamic, in Acc words): `tiles` (time x channel) tiles of kWarps
// rows, two (time x state) tiles (Bm, Cm) of N rows, `vecs` per-warp vectors of N, and
// with the gate one more (time x channel) tile for z (then dz) at the end.
template <class F_, int kWarps_, int kItems_, int kStates_>
struct ScanTraits {
  using F = F_;
  using Acc = acc_t<F>;
  static constexpr int kWarps = kWarps_, kItems = kItems_, kStates = kStates_;
  static constexpr int kThreads = kWarps * kWarp;
  static constexpr int kChunk = kWarp * kItems;          // time steps per chunk
  static constexpr int kRow = kWarp * (kItems + 1) + 1;  // padded tile row
  static_assert(kItems % 2 == 0, "kItems + 1 must be odd for conflict-free lane reads");
  static __host__ __device__ int slot(int t) { return t / kItems * (kItems + 1) + t % kItems; }
  static size_t smem_bytes(int tiles, int vecs, int N, bool gate) {
    return sizeof(Acc) * (size_t(tiles + gate) * kWarps * kRow + size_t(2) * N * kRow + size_t(vecs) * kWarps * N);
  }
};

template <class F>
struct ScanConfig {
  using type = ScanTraits<F, 16, 4, 2>;  // 512 threads, chunks of 128 steps, 2 states a pass
};
template <>
struct ScanConfig<double> {
  using type = ScanTraits<double, 8, 2, 2>;  // correctness path: smaller tiles of doubles
};

__device__ __forceinline__ float exp2_acc(float v) { return exp2f(v); }
__device__ __forceinline__ double exp2_acc(double v) { return exp2(v); }
__device__ __forceinline__ float sigmoid_acc(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ double sigmoid_acc(double v) { return 1.0 / (1.0 + exp(-v)); }
constexpr double kLog2e = 1.4426950408889634;

// Rows t0 .. t0+kChunk-1 of a (T, Di) slab (channel stride 1), channels c0 .. c0+kWarps-1,
// into tile[channel][slot(t)]; zeros outside the tensor.
template <class K>
__device__ void load_channel_tile(typename K::Acc* tile, const typename K::F* __restrict__ p, int64_t tstride, int t0,
                                  int T, int c0, int Di) {
  for (int i = threadIdx.x; i < K::kChunk * K::kWarps; i += K::kThreads) {
    const int t = i / K::kWarps, g = i % K::kWarps;
    const bool ok = t0 + t < T && c0 + g < Di;
    tile[g * K::kRow + K::slot(t)] = ok ? load(p + int64_t(t0 + t) * tstride + c0 + g) : typename K::Acc(0);
  }
}

// The inverse for a contiguous (T, Di) output slab.
template <class K>
__device__ void store_channel_tile(const typename K::Acc* tile, typename K::F* __restrict__ p, int t0, int T, int c0,
                                   int Di) {
  for (int i = threadIdx.x; i < K::kChunk * K::kWarps; i += K::kThreads) {
    const int t = i / K::kWarps, g = i % K::kWarps;
    if (t0 + t < T && c0 + g < Di) store(p + int64_t(t0 + t) * Di + c0 + g, tile[g * K::kRow + K::slot(t)]);
  }
}

// Rows t0 .. t0+kChunk-1 of a (T, N) slab (state stride 1) into tile[n][slot(t)].
template <class K>
__device__ void load_state_tile(typename K::Acc* tile, const typename K::F* __restrict__ p, int64_t tstride, int t0,
                                int T, int N) {
  for (int i = threadIdx.x; i < K::kChunk * N; i += K::kThreads) {
    const int t = i / N, n = i % N;
    tile[n * K::kRow + K::slot(t)] = t0 + t < T ? load(p + int64_t(t0 + t) * tstride + n) : typename K::Acc(0);
  }
}

// Inclusive scan of affine maps (a, b): h -> a h + b over the lanes of a warp, earlier
// lanes applied first: lane p ends with the composition of lanes 0 .. p. S independent
// scans side by side (one per state of a pass), their shuffles interleaved.
template <int S, class Acc>
__device__ __forceinline__ void warp_prefix(Acc (&a)[S], Acc (&b)[S], int lane) {
#pragma unroll
  for (int off = 1; off < kWarp; off *= 2) {
    Acc pa[S], pb[S];
#pragma unroll
    for (int s = 0; s < S; ++s) pa[s] = __shfl_up_sync(kFull, a[s], off), pb[s] = __shfl_up_sync(kFull, b[s], off);
#pragma unroll
    for (int s = 0; s < S; ++s)
      if (lane >= off) b[s] = a[s] * pb[s] + b[s], a[s] = a[s] * pa[s];
  }
}

// The same from the other end: lane p ends with the composition of lanes 31 .. p
// (lane 31's map applied first), for recurrences that run backwards in time.
template <int S, class Acc>
__device__ __forceinline__ void warp_suffix(Acc (&a)[S], Acc (&b)[S], int lane) {
#pragma unroll
  for (int off = 1; off < kWarp; off *= 2) {
    Acc na[S], nb[S];
#pragma unroll
    for (int s = 0; s < S; ++s) na[s] = __shfl_down_sync(kFull, a[s], off), nb[s] = __shfl_down_sync(kFull, b[s], off);
#pragma unroll
    for (int s = 0; s < S; ++s)
      if (lane + off < kWarp) b[s] = a[s] * nb[s] + b[s], a[s] = a[s] * na[s];
  }
}

// Composition of all 32 lanes' maps (lane 0 first), in every lane: a butterfly in which
// the lane whose partner is earlier applies its own map second. Both partners evaluate
// the same expressions, so every lane holds bitwise the same result.
template <int S, class Acc>
__device__ __forceinline__ void warp_compose_all(Acc (&a)[S], Acc (&b)[S], int lane) {
#pragma unroll
  for (int off = 1; off < kWarp; off *= 2) {
    Acc pa[S], pb[S];
#pragma unroll
    for (int s = 0; s < S; ++s) pa[s] = __shfl_xor_sync(kFull, a[s], off), pb[s] = __shfl_xor_sync(kFull, b[s], off);
#pragma unroll
    for (int s = 0; s < S; ++s) {
      if (lane & off)
        b[s] = a[s] * pb[s] + b[s], a[s] = a[s] * pa[s];  // partner earlier
      else
        b[s] = pa[s] * b[s] + pb[s], a[s] = pa[s] * a[s];  // partner later
    }
  }
}

// ---- forward ------------------------------------------------------------------------

// One thread per (b, channel c), walking its steps one after the other with all states in
// registers (see the header comment). kS: states held per thread (N rounded up to 16 or
// 64; the padded states have A = Bm = Cm = 0, so they stay 0 and add nothing).
constexpr int kFwdThreads = 128;       // channels per block
constexpr int kFwdSub = 8;             // steps whose u, delta (and z) loads are issued together
constexpr int kFwdThreadsPerSM = 256;  // below this many (b, c) threads per SM, time is split too

// Where the forward's time chunks come from and go. Chunk k covers steps
// [k * len, min((k + 1) * len, T)); len is a multiple of the checkpoint spacing `every`.
template <class Acc>
struct FwdChunks {
  int len = 0, count = 1, every = 1;
  Acc* ends = nullptr;          // (B, Di, N, count): pass 1's state after chunk k, started from 0
  Acc* prods = nullptr;         // (B, Di, N, count): pass 1's product of e over chunk k
  const Acc* starts = nullptr;  // (B, Di, N, count): the true state entering chunk k (null: 0)
};

// exp2 in one instruction for float (MUFU.EX2, relative error ~2^-22; results below 2^-126
// flush to 0, which the recurrence's decay makes harmless); the full exp2 for double.
__device__ __forceinline__ float exp2_fast(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ double exp2_fast(double v) { return exp2(v); }

// 16 bytes of Acc values: one shared-memory load instruction.
template <class Acc>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int n = 4;
  static __device__ __forceinline__ void unpack(float4 v, float* out) {
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int n = 2;
  static __device__ __forceinline__ void unpack(double2 v, double* out) { out[0] = v.x, out[1] = v.y; }
};

// grid (ceil(Di / kFwdThreads), B, chunks), block kFwdThreads. kFinal: start from
// fc.starts (or 0), write y and the checkpoints (if p.ckpt). Otherwise (pass 1, chunks
// 0 .. count-2 only): start from 0 and write the chunk's end state and product of e.
template <class F, int kS, bool kFinal>
__global__ void __launch_bounds__(kFwdThreads) scan_fwd_kernel(ScanParams p, FwdChunks<acc_t<F>> fc) {
  using Acc = acc_t<F>;
  constexpr int kTile = kS <= 16 ? 128 : 32;        // steps of Bm, Cm staged at a time
  __shared__ __align__(16) Acc sBC[kTile][2 * kS];  // [step][Bm_0 .. Bm_kS-1, Cm_0 .. Cm_kS-1]
  const int N = p.dstate, T = p.seqlen, Di = p.dim;
  const int b = blockIdx.y, k = blockIdx.z, c = blockIdx.x * kFwdThreads + threadIdx.x;
  const bool active = c < Di;
  const int tbeg = k * fc.len, tend = min(T, tbeg + fc.len);
  const int64_t state0 = (int64_t(b) * Di + c) * N;  // (b, c, n = 0) in a (B, Di, N, ...) table
  Acc a2[kS], h[kS], prod[kS];
#pragma unroll
  for (int n = 0; n < kS; ++n) {
    a2[n] = active && n < N ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    h[n] = kFinal && fc.starts && active && n < N ? fc.starts[(state0 + n) * fc.count + k] : Acc(0);
    prod[n] = 1;
  }
  const Acc d = kFinal && active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  const F* u = static_cast<const F*>(p.u) + b * p.u_bstride + c;
  const F* delta = static_cast<const F*>(p.delta) + b * p.delta_bstride + c;
  const F* Bm = static_cast<const F*>(p.Bm) + b * p.B_bstride;
  const F* Cm = static_cast<const F*>(p.Cm) + b * p.C_bstride;
  const F* z = kFinal && p.z ? static_cast<const F*>(p.z) + b * p.z_bstride + c : nullptr;
  F* y = static_cast<F*>(p.y) + int64_t(b) * T * Di + c;
  Acc* ck = kFinal && p.ckpt && active ? static_cast<Acc*>(p.ckpt) + state0 * p.chunks : nullptr;  // (N, chunks)

  for (int t0 = tbeg; t0 < tend; t0 += kTile) {
    const int nt = min(kTile, tend - t0);
    __syncthreads();  // the previous tile is consumed
    for (int i = threadIdx.x; i < kTile * 2 * kS; i += kFwdThreads) {
      const int t = i / (2 * kS), j = i % (2 * kS), n = j % kS;
      const F* src = j < kS ? Bm + int64_t(t0 + t) * p.B_tstride : Cm + int64_t(t0 + t) * p.C_tstride;
      sBC[t][j] = t < nt && n < N ? load(src + n) : Acc(0);
    }
    __syncthreads();
    for (int s0 = 0; s0 < nt; s0 += kFwdSub) {
      const int ns = min(kFwdSub, nt - s0);
      const int64_t ts = t0 + s0;      // the sub-tile's first step
      if (ck && ts % fc.every == 0) {  // a checkpoint: the state entering step ts
#pragma unroll
        for (int n = 0; n < kS; ++n)  // (unrolled, so that h stays in registers)
          if (n < N) ck[int64_t(n) * p.chunks + ts / fc.every] = h[n];
      }
      Acc xu[kFwdSub], xd[kFwdSub], xz[kFwdSub];
#pragma unroll
      for (int i = 0; i < kFwdSub; ++i) {  // all loads of the sub-tile first, so they overlap
        const bool ok = active && i < ns;
        xu[i] = ok ? load(u + (ts + i) * p.u_tstride) : Acc(0);
        xd[i] = ok ? load(delta + (ts + i) * p.delta_tstride) : Acc(0);
        xz[i] = ok && z ? load(z + (ts + i) * p.z_tstride) : Acc(0);
      }
#pragma unroll
      for (int i = 0; i < kFwdSub; ++i) {
        if (i >= ns) break;
        const Acc dtu = xd[i] * xu[i];
        Acc bc[2 * kS];  // Bm_t, Cm_t: the same for every thread, read as 16-byte broadcasts
        using V = typename Vec16<Acc>::type;
#pragma unroll
        for (int j = 0; j < 2 * kS; j += Vec16<Acc>::n) {
          const V v = *reinterpret_cast<const V*>(&sBC[s0 + i][j]);
          Vec16<Acc>::unpack(v, bc + j);
        }
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
        if (kFinal && active) {
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
      fc.ends[(state0 + n) * fc.count + k] = h[n];
      fc.prods[(state0 + n) * fc.count + k] = prod[n];
    }
  }
}

// Pass 1.5: per (b, c, n), the state entering every chunk, composed from the chunks' own
// maps h -> prod * h + end in order (the same affine composition as the recurrence).
template <class Acc>
__global__ void scan_fwd_carry_kernel(FwdChunks<Acc> fc, Acc* starts, int64_t rows) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, c, n)
  if (r >= rows) return;
  Acc h = 0;
  for (int k = 0; k < fc.count; ++k) {
    starts[r * fc.count + k] = h;
    if (k + 1 < fc.count) h = fc.prods[r * fc.count + k] * h + fc.ends[r * fc.count + k];
  }
}

// ---- backward -----------------------------------------------------------------------

// grid (ceil(Di / kWarps), B), block kThreads. Writes du, ddelta and the partials (and the
// checkpoints, unless p.ckpt_ready).
template <class K>
__global__ void __launch_bounds__(K::kThreads) scan_bwd_kernel(ScanParams p) {
  using F = typename K::F;
  using Acc = typename K::Acc;
  constexpr int R = K::kItems, G = K::kWarps, kRow = K::kRow, S = K::kStates;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int N = p.dstate, T = p.seqlen, Di = p.dim, chunks = p.chunks;
  Acc* sU = reinterpret_cast<Acc*>(smem_raw);  // u, then du
  Acc* sDt = sU + G * kRow;                    // delta, then ddelta
  Acc* sG = sDt + G * kRow;                    // dy
  Acc* sRed = sG + G * kRow;                   // 2 x S x [dBm terms | dCm terms] per channel: double-buffered by pass
  Acc* sB = sRed + 4 * S * G * kRow;
  Acc* sC = sB + N * kRow;
  Acc* sA = sC + N * kRow;  // (G, N)
  Acc* sH = sA + G * N;     // (G, N): forward state entering the chunk
  Acc* sQ = sH + G * N;     // (G, N): q at the first step of the later chunk (sweep 2)
  Acc* sGA = sQ + G * N;    // (G, N): dA of this (b, c), summed over chunks
  Acc* sZ = sGA + G * N;    // the gate z, then dz (only with p.z)
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, base = lane * (R + 1);
  const int b = blockIdx.y, c0 = blockIdx.x * G, c = c0 + warp;
  const bool active = c < Di;
  for (int i = threadIdx.x; i < G * N; i += K::kThreads) {
    sA[i] = c0 + i / N < Di ? load(static_cast<const F*>(p.A) + int64_t(c0) * N + i) : Acc(0);
    sH[i] = 0, sQ[i] = 0, sGA[i] = 0;
  }
  const Acc d = active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  const F* u = static_cast<const F*>(p.u) + b * p.u_bstride;
  const F* delta = static_cast<const F*>(p.delta) + b * p.delta_bstride;
  const F* dy = static_cast<const F*>(p.dy) + b * p.dy_bstride;
  const F* Bm = static_cast<const F*>(p.Bm) + b * p.B_bstride;
  const F* Cm = static_cast<const F*>(p.Cm) + b * p.C_bstride;
  const F* z = p.z ? static_cast<const F*>(p.z) + b * p.z_bstride : nullptr;
  F* du = static_cast<F*>(p.du) + int64_t(b) * T * Di;
  F* dz = static_cast<F*>(p.dz) + int64_t(b) * T * Di;
  F* ddelta = static_cast<F*>(p.ddelta) + int64_t(b) * T * Di;
  const Acc* ck_block = static_cast<Acc*>(p.ckpt) + int64_t(b) * Di * N * chunks;  // (Di, N, chunks) of row b
  Acc* ck = active ? static_cast<Acc*>(p.ckpt) + (int64_t(b) * Di + c) * N * chunks : nullptr;
  Acc* part = static_cast<Acc*>(p.part_bc) + (int64_t(blockIdx.x) * p.batch + b) * 2 * N * T;
  __syncthreads();  // sA, sH, sQ, sGA are set

  // Sweep 1 (no checkpoints from the forward): the state entering every chunk.
  if (!p.ckpt_ready) {
    for (int k = 0; k < chunks; ++k) {
      if (ck && lane == 0)
        for (int n = 0; n < N; ++n) ck[int64_t(n) * chunks + k] = sH[warp * N + n];  // lane 0 wrote these
      if (k + 1 == chunks) break;  // the last chunk's own steps are not needed
      const int t0 = k * K::kChunk;
      __syncthreads();
      load_channel_tile<K>(sU, u, p.u_tstride, t0, T, c0, Di);
      load_channel_tile<K>(sDt, delta, p.delta_tstride, t0, T, c0, Di);
      load_state_tile<K>(sB, Bm, p.B_tstride, t0, T, N);
      __syncthreads();
      Acc dtu[R], xdt[R];
#pragma unroll
      for (int r = 0; r < R; ++r) xdt[r] = sDt[warp * kRow + base + r], dtu[r] = xdt[r] * sU[warp * kRow + base + r];
      for (int n0 = 0; n0 < N; n0 += S) {
        Acc ma[S], mb[S];
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const int n = min(n0 + s, N - 1);
          const Acc a2 = sA[warp * N + n] * Acc(kLog2e);
          const Acc* Bn = sB + n * kRow + base;
          ma[s] = 1, mb[s] = 0;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const Acc e = exp2_acc(xdt[r] * a2);
            mb[s] = e * mb[s] + dtu[r] * Bn[r], ma[s] = e * ma[s];
          }
        }
        warp_compose_all(ma, mb, lane);
#pragma unroll
        for (int s = 0; s < S; ++s)  // only lane 0 touches sH
          if (lane == 0 && n0 + s < N) sH[warp * N + n0 + s] = ma[s] * sH[warp * N + n0 + s] + mb[s];
      }
    }
  }

  // Sweep 2: chunks from last to first.
  Acc gD = 0;
  for (int k = chunks - 1; k >= 0; --k) {
    const int t0 = k * K::kChunk;
    __syncthreads();  // the previous chunk's tiles are consumed; checkpoints are visible
    load_channel_tile<K>(sU, u, p.u_tstride, t0, T, c0, Di);
    load_channel_tile<K>(sDt, delta, p.delta_tstride, t0, T, c0, Di);
    load_channel_tile<K>(sG, dy, p.dy_tstride, t0, T, c0, Di);
    load_state_tile<K>(sB, Bm, p.B_tstride, t0, T, N);
    load_state_tile<K>(sC, Cm, p.C_tstride, t0, T, N);
    if (z) load_channel_tile<K>(sZ, z, p.z_tstride, t0, T, c0, Di);
    for (int i = threadIdx.x; i < G * N; i += K::kThreads)  // the states entering this chunk
      sH[i] = c0 + i / N < Di ? ck_block[(int64_t(c0) * N + i) * chunks + k] : Acc(0);
    __syncthreads();
    // xg: dL/dy of the ungated output (dy * SiLU(z) with the gate); yo: that output, for dz.
    Acc xu[R], xdt[R], xg[R], gu[R], gdt[R], yo[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      xu[r] = sU[warp * kRow + base + r];
      xdt[r] = sDt[warp * kRow + base + r];
      xg[r] = sG[warp * kRow + base + r];
      if (z) {
        const Acc zr = sZ[warp * kRow + base + r];
        xg[r] *= zr * sigmoid_acc(zr);
      }
      gu[r] = xg[r] * d, gdt[r] = 0, yo[r] = d * xu[r];
      gD += xg[r] * xu[r];
    }
    for (int n0 = 0; n0 < N; n0 += S) {
      // Forward again from the checkpoint: e_t, x_t and h_{t-1} of this lane's steps, for the
      // S states of this pass side by side (state min(n, N - 1): a pass past N repeats N - 1).
      // Bm_t, Cm_t in registers: read once from shared memory (the rB, rC stores below could
      // alias them as far as the compiler knows, which would force reloads).
      Acc e[S][R], x[S][R], hp[S][R], bm[S][R], cm[S][R], ma[S], mb[S];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int n = min(n0 + s, N - 1);
        const Acc a2 = sA[warp * N + n] * Acc(kLog2e);
        const Acc *Bn = sB + n * kRow + base, *Cn = sC + n * kRow + base;
        ma[s] = 1, mb[s] = 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          bm[s][r] = Bn[r], cm[s][r] = Cn[r];
          e[s][r] = exp2_acc(xdt[r] * a2);
          x[s][r] = xdt[r] * xu[r] * bm[s][r];
          mb[s] = e[s][r] * mb[s] + x[s][r], ma[s] = e[s][r] * ma[s];
        }
        if (lane == 0) mb[s] = ma[s] * sH[warp * N + n] + mb[s];  // lane 0 starts from the checkpoint
      }
      warp_prefix(ma, mb, lane);
      // Adjoint: q_t = e_t q_{t+1} + e_t dy_t Cm_t, composed from this lane's last step back;
      // lane 31 starts from the carried q, so the suffix scan yields q itself. Only lane 31
      // touches the carry sQ.
      Acc ra[S], rb[S], carry[S] = {};
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int n = min(n0 + s, N - 1);
        const Acc before = __shfl_up_sync(kFull, mb[s], 1);
        Acc h = lane == 0 ? sH[warp * N + n] : before;
#pragma unroll
        for (int r = 0; r < R; ++r) hp[s][r] = h, h = e[s][r] * h + x[s][r];
        ra[s] = 1, rb[s] = 0;
#pragma unroll
        for (int r = R - 1; r >= 0; --r) rb[s] = e[s][r] * (rb[s] + xg[r] * cm[s][r]), ra[s] = e[s][r] * ra[s];
        if (lane == kWarp - 1) carry[s] = sQ[warp * N + n], rb[s] = ra[s] * carry[s] + rb[s];
      }
      warp_suffix(ra, rb, lane);
      Acc* const red = sRed + (n0 / S % 2) * 2 * S * G * kRow;  // this pass's buffer: per state dBm, dCm terms
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int n = n0 + s;
        if (n >= N) break;  // the repeat of state N - 1 (uniform across the block)
        const Acc a = sA[warp * N + n];
        const Acc after = __shfl_down_sync(kFull, rb[s], 1), first = __shfl_sync(kFull, rb[s], 0);
        Acc q = lane == kWarp - 1 ? carry[s] : after;  // q_{t+1} for this lane's last step
        Acc gA = 0;
        Acc *rB = red + 2 * s * G * kRow + warp * kRow + base, *rC = rB + G * kRow;
#pragma unroll
        for (int r = R - 1; r >= 0; --r) {
          const Acc gh = q + xg[r] * cm[s][r];  // dL/dh_t
          const Acc eh = e[s][r] * hp[s][r], bn = bm[s][r];
          gu[r] += gh * xdt[r] * bn;
          gdt[r] += gh * (a * eh + bn * xu[r]);
          gA += gh * xdt[r] * eh;
          rB[r] = gh * xdt[r] * xu[r];
          rC[r] = xg[r] * (eh + x[s][r]);  // dy_t h_t
          yo[r] += cm[s][r] * (eh + x[s][r]);
          q = e[s][r] * gh;
        }
        gA = warp_sum(gA);
        if (lane == kWarp - 1) sQ[warp * N + n] = first;  // q at the chunk's first step
        if (lane == 0) sGA[warp * N + n] += gA;
      }
      // One barrier per pass: the buffer written next (pass + 1) was last read while summing
      // pass - 1, which every thread finished before this barrier.
      __syncthreads();  // rB, rC of every channel are written
      // dBm (row n) and dCm (row N + n) of this channel group: sum the block's channels in order.
      for (int i = threadIdx.x; i < 2 * S * K::kChunk; i += K::kThreads) {
        const int t = i % K::kChunk, which = i / K::kChunk, n = n0 + which / 2;
        if (t0 + t >= T || n >= N) continue;
        const Acc* col = red + which * G * kRow + K::slot(t);
        Acc s = 0;
#pragma unroll
        for (int g = 0; g < G; ++g) s += col[g * kRow];
        part[int64_t((which % 2) * N + n) * T + t0 + t] = s;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) sU[warp * kRow + base + r] = gu[r], sDt[warp * kRow + base + r] = gdt[r];
    if (z) {  // dz = dy * y * SiLU'(z), SiLU'(z) = s (1 + z (1 - s)); dy is still in sG
#pragma unroll
      for (int r = 0; r < R; ++r) {
        Acc& zr = sZ[warp * kRow + base + r];
        const Acc s = sigmoid_acc(zr);
        zr = sG[warp * kRow + base + r] * yo[r] * (s * (Acc(1) + zr * (Acc(1) - s)));
      }
    }
    __syncthreads();
    store_channel_tile<K>(sU, du, t0, T, c0, Di);
    store_channel_tile<K>(sDt, ddelta, t0, T, c0, Di);
    if (z) store_channel_tile<K>(sZ, dz, t0, T, c0, Di);
  }
  gD = warp_sum(gD);
  if (!active || lane != 0) return;
  Acc* pad = static_cast<Acc*>(p.part_ad) + int64_t(b) * (N + 1) * Di + c;
  for (int n = 0; n < N; ++n) pad[int64_t(n) * Di] = sGA[warp * N + n];  // lane 0 wrote these
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

// u, delta, dy may be any (B, T, Di) view with unit channel stride; Bm, Cm any (B, T, N)
// view with unit state stride (the mixer's slices of the x_proj output). Others are copied.
int sm_count(int device) {
  int n = 0;
  SESSA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "selective_scan");
  return n;
}

Tensor unit_last_stride(const Tensor& t) { return t.strides().back() == 1 ? t : ops::contiguous(t); }

int64_t chunk_count(DType dtype, int64_t T) {
  return dispatch_float(dtype, "selective_scan", [&](auto tag) -> int64_t {
    using K = typename ScanConfig<decltype(tag)>::type;
    return (T + K::kChunk - 1) / K::kChunk;
  });
}

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
  p.chunks = int(chunk_count(u.dtype(), u.size(1)));
  p.u_bstride = u.strides()[0], p.u_tstride = u.strides()[1];
  p.delta_bstride = delta.strides()[0], p.delta_tstride = delta.strides()[1];
  p.B_bstride = Bm.strides()[0], p.B_tstride = Bm.strides()[1];
  p.C_bstride = Cm.strides()[0], p.C_tstride = Cm.strides()[1];
  p.u = u.raw_data(), p.delta = delta.raw_data(), p.A = A.raw_data(), p.Bm = Bm.raw_data(), p.Cm = Cm.raw_data();
  p.D = Dk.raw_data();
  return p;
}

// Launches kernel<K> with `bytes` of dynamic shared memory (opting in above 48 KiB), with
// the SM's unified L1 split towards shared memory (so two forward blocks fit on one SM).
template <class K, class Kernel>
void launch(Kernel kernel, const ScanParams& p, size_t bytes, cudaStream_t st, const char* op) {
  if (bytes > 48 * 1024)
    SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
  SESSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared)),
      op);
  const dim3 grid{unsigned((p.dim + K::kWarps - 1) / K::kWarps), unsigned(p.batch)};
  kernel<<<grid, K::kThreads, bytes, st>>>(p);
  SESSA_CUDA_LAUNCH_CHECK(op);
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
  const int device = u.device().index;
  cudaStream_t st = stream(device);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using Acc = acc_t<F>;
    using K = typename ScanConfig<F>::type;  // the backward's chunking: the checkpoint spacing
    // Split time into chunks only when the (b, c) threads alone would leave the GPU idle;
    // chunk lengths are whole checkpoint spans.
    FwdChunks<Acc> fc;
    fc.every = K::kChunk;
    const int64_t spans = p.chunks, threads = B * ((Di + kFwdThreads - 1) / kFwdThreads) * kFwdThreads;
    const int64_t want = (int64_t(kFwdThreadsPerSM) * sm_count(device) + threads - 1) / threads;
    const int64_t per_chunk = (spans + std::clamp<int64_t>(want, 1, spans) - 1) / std::clamp<int64_t>(want, 1, spans);
    fc.len = int(per_chunk * fc.every), fc.count = int((spans + per_chunk - 1) / per_chunk);
    const dim3 grid{unsigned((Di + kFwdThreads - 1) / kFwdThreads), unsigned(B), unsigned(fc.count)};
    auto run = [&](auto kS) {
      constexpr int S = decltype(kS)::value;
      Tensor ends, prods, starts;
      if (fc.count > 1) {  // pass 1 on chunks 0 .. count-2, then the carries
        const TensorOptions acc{acc_dtype(u.dtype()), u.device()};
        const Shape shape{B, Di, N, fc.count};
        ends = Tensor::empty(shape, acc), prods = Tensor::empty(shape, acc), starts = Tensor::empty(shape, acc);
        fc.ends = static_cast<Acc*>(ends.raw_data()), fc.prods = static_cast<Acc*>(prods.raw_data());
        scan_fwd_kernel<F, S, false><<<dim3{grid.x, grid.y, grid.z - 1}, kFwdThreads, 0, st>>>(p, fc);
        SESSA_CUDA_LAUNCH_CHECK(op);
        if (N > 0) {
          scan_fwd_carry_kernel<Acc>
              <<<blocks_for(B * Di * N), kThreads, 0, st>>>(fc, static_cast<Acc*>(starts.raw_data()), B * Di * N);
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
        fc.starts = static_cast<const Acc*>(starts.raw_data());
      }
      scan_fwd_kernel<F, S, true><<<grid, kFwdThreads, 0, st>>>(p, fc);
      SESSA_CUDA_LAUNCH_CHECK(op);
    };
    if (N <= 16)
      run(std::integral_constant<int, 16>{});
    else
      run(std::integral_constant<int, kMaxState>{});
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
  p.dy = dy.raw_data(), p.dy_bstride = dy.strides()[0], p.dy_tstride = dy.strides()[1];
  p.du = g.du.raw_data(), p.ddelta = g.ddelta.raw_data();
  Tensor z = gate ? unit_last_stride(z_in) : Tensor();
  if (gate) p.z = z.raw_data(), p.z_bstride = z.strides()[0], p.z_tstride = z.strides()[1], p.dz = g.dz.raw_data();
  // Checkpoints from the forward if they fit this call; otherwise the kernel recomputes them.
  const Shape ck_shape{B, Di, N, p.chunks};
  Tensor ckpt = checkpoints;
  p.ckpt_ready = ckpt.defined() && ckpt.shape() == ck_shape && ckpt.dtype() == acc.dtype &&
                 ckpt.device() == u.device() && ckpt.is_contiguous();
  if (!p.ckpt_ready) ckpt = Tensor::empty(ck_shape, acc);
  p.ckpt = ckpt.raw_data();
  cudaStream_t st = stream(u.device().index);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using K = typename ScanConfig<F>::type;
    using Acc = acc_t<F>;
    const int64_t groups = (Di + K::kWarps - 1) / K::kWarps;
    Tensor part_bc = Tensor::empty({groups, B, 2 * N, T}, acc), part_ad = Tensor::empty({B, N + 1, Di}, acc);
    p.part_bc = part_bc.raw_data(), p.part_ad = part_ad.raw_data();
    launch<K>(scan_bwd_kernel<K>, p, K::smem_bytes(3 + 4 * K::kStates, 4, int(N), gate), st, op);
    scan_dbc_finalize_kernel<F><<<blocks_for(B * 2 * N * T), kThreads, 0, st>>>(
        static_cast<const Acc*>(part_bc.raw_data()), static_cast<F*>(g.dB.raw_data()), static_cast<F*>(g.dC.raw_data()),
        int(groups), int(B), int(T), int(N));
    SESSA_CUDA_LAUNCH_CHECK(op);
    // dA (Di, N) and dD (Di): the batch rows' partials (B, N + 1, Di) summed.
    sum_split_partials<F>(static_cast<const Acc*>(part_ad.raw_data()), static_cast<F*>(g.dA.raw_data()),
                          static_cast<F*>(g.dD.raw_data()), int(B), int(Di), int(N), st, op);
  });
  return g;
}

}  // namespace sessa::cuda
