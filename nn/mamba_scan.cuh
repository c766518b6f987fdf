// The selective scan's CUDA kernels (device code only; the launches, the chunk choice and
// the cost model are in nn/mamba_scan.cu, the math in nn/mamba_ops.h and .cpp). Kept apart
// from the host code so that a host emulator can compile them unchanged.
//
// Per (b, channel c, state n): h_t = e_t h_{t-1} + x_t, e_t = exp(delta_t A[c,n]),
// x_t = delta_t Bm_t[n] u_t, y_t = sum_n Cm_t[n] h_t + D[c] u_t (times SiLU(z_t) with the
// gate). The backward's adjoint g_t = dL/dh_t obeys g_t = gy_t Cm_t[n] + q_{t+1},
// q_t = e_t g_t (gy = dL/dy of the ungated output), an affine recurrence run backwards.
//
// Thread layout (forward and backward). A thread owns kG = 4 consecutive states of one
// channel and walks time; a block is kC channels (lanes: consecutive channels, so every
// (B, T, Di) access of a warp is one contiguous run) times kNG state groups (warps): kNG
// = 4, kC = 64 (256 threads) for N <= 16; kNG = 16, kC = 32 (512 threads) for N <= 64.
// States past N have A = Bm = Cm = 0 and stay 0. Steps past the end (of T or of a time
// chunk) are staged as u = delta = dy = 0, which makes them identity maps (e = 1, x = 0):
// the step loops have no tail branches.
// Inputs move through shared memory in tiles of kTile steps: every thread loads its share
// of the next tile into registers (coalesced along channels) before computing the current
// one, and stores it to shared memory after (one load latency per tile, hidden by the
// tile's compute). Cross-state sums (y, du, ddelta) go through shared memory per tile;
// cross-channel sums (dBm, dCm) through a warp-shuffle butterfly every step, then
// across the warps of a group, then across channel blocks in a second kernel. No atomics:
// every sum has a fixed order, results are bitwise reproducible.
// exp is one MUFU.EX2 (A pre-scaled by log2 e; ex2.approx.ftz, relative error ~2^-22).
#pragma once
#include <type_traits>

#include "tensor/cuda/common.cuh"

namespace sessa::cuda::scan {

using math::kLn2, math::kLog2e;
constexpr int kG = 4;  // states per thread (Vec4: one 16-byte shared access)
constexpr int kMaxState = 64;

// The backward loads each tile right before it is stored to shared memory (its latency
// exposed once per tile, covered by the other resident blocks): 80 registers, 3 blocks of
// 256 per SM. Prefetching the next tile into registers needed 102 registers, 2 blocks per
// SM, and measured slower on the H200 (bwd 1.50 vs 1.16 ms at bf16 16 x 1024; see
// docs/performance.md, 2026-11-30 night).

// The block's shape for kNG state groups (4: N <= 16; 16: N <= 64): kC channels, kThr
// threads; kTileF steps per staged forward tile, kTile per backward tile (= the
// backward's sub-segment), checkpoints every kEvery steps (kSubs sub-segments). The
// N <= 64 shape has shorter backward tiles, so that float64 fits in shared memory.
template <int kNG>
struct Geo {
  static constexpr int kNP = kG * kNG, kC = kNG == 4 ? 64 : 32, kThr = kC * kNG, kWarps = kThr / 32,
                       kWarpsPerGroup = kC / 32;
  static constexpr int kTileF = 16, kTile = kNG == 4 ? 8 : 4, kEvery = 4 * kTile, kSubs = kEvery / kTile;
  static_assert(kEvery % kTileF == 0 && kEvery % kTile == 0 && kSubs > 1 && kSubs <= 4, "checkpoints at tile starts");
};

// Everything a scan kernel reads or writes; strides in elements. u, delta, dy, z are
// (B, T, Di) with unit channel stride, Bm and Cm (B, T, N) with unit state stride, A
// (Di, N) and D (Di) contiguous; y, du, ddelta and dz are contiguous (B, T, Di).
struct ScanParams {
  int batch = 0, seqlen = 0, dim = 0, dstate = 0, segments = 0;  // segments = ceil(T / kEvery)
  int64_t u_bstride = 0, u_tstride = 0, delta_bstride = 0, delta_tstride = 0, dy_bstride = 0, dy_tstride = 0;
  int64_t B_bstride = 0, B_tstride = 0, C_bstride = 0, C_tstride = 0;
  int64_t z_bstride = 0, z_tstride = 0;
  const void *u = nullptr, *delta = nullptr, *A = nullptr, *Bm = nullptr, *Cm = nullptr, *D = nullptr, *dy = nullptr;
  const void* z = nullptr;     // the gate: the output is y * SiLU(z) (null: no gate)
  bool ddelta_wrt_dt = false;  // delta = softplus(dt): ddelta is written times sigmoid(dt) = 1 - exp(-delta)
  void *y = nullptr, *du = nullptr, *ddelta = nullptr, *dz = nullptr;  // y null: checkpoints only
  void* ckpt = nullptr;     // (B, segments, N, Di) acc: the state entering every kEvery steps
  void* part_bc = nullptr;  // (channel blocks, B, 2N, T) acc: [dBm | dCm] of one block of channels
  void* part_ad = nullptr;  // (B, time chunks, N + 1, Di) acc: [dA | dD] of one (b, chunk)
};

// Time chunk k covers steps [k len, min((k + 1) len, T)), len a multiple of kEvery. The
// tables are (count, B, N, Di) in the accumulation type.
template <class Acc>
struct Chunks {
  int len = 0, count = 1;
  Acc* ends = nullptr;         // pass 1: forward, the state after chunk k from 0; backward, q at its first step from 0
  Acc* prods = nullptr;        // pass 1: product of e over chunk k
  const Acc* carry = nullptr;  // forward: the state entering chunk k; backward: q entering it from later (null: 0)
};

__device__ __forceinline__ int64_t chunk_at(const ScanParams& p, int k, int b, int n, int c) {
  return ((int64_t(k) * p.batch + b) * p.dstate + n) * p.dim + c;
}
__device__ __forceinline__ int64_t ckpt_at(const ScanParams& p, int b, int seg, int n, int c) {
  return ((int64_t(b) * p.segments + seg) * p.dstate + n) * p.dim + c;
}

__device__ __forceinline__ float sigmoid_acc(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ double sigmoid_acc(double v) { return 1.0 / (1.0 + exp(-v)); }

// kG = 4 values: one 16-byte (float) shared-memory access.
template <class Acc>
struct alignas(4 * sizeof(Acc)) Vec4 {
  Acc v[4];
};
template <class Acc>
struct alignas(2 * sizeof(Acc)) Pair {
  Acc u, d;
};
template <class Acc>
struct alignas(4 * sizeof(Acc)) Quad {
  Acc u, d, gy, dzf;  // dzf = dy SiLU'(z): dz = y dzf
};

// Shared memory. Forward: the tile's (u, delta), z, [Bm | Cm] rows, and each group's part
// of y_t per channel.
template <class Acc, int kNG>
struct FwdSmem {
  using G = Geo<kNG>;
  Pair<Acc> x[G::kTileF][G::kC];
  Acc z[G::kTileF][G::kC];
  Vec4<Acc> bc[G::kTileF][2 * kNG];  // [Bm groups | Cm groups], kG states each
  Acc y[G::kTileF][kNG][G::kC];
};
// Backward: the tile (u, delta, gy, dzf), [Bm | Cm], each thread's h_{t-1} of the tile's
// steps (after a step's reverse: its {s1, s2, y part}) and the state entering each
// sub-segment of the segment (own slots, no barriers), the per-warp channel sums of the
// tile, and the dD partials at the end.
template <class Acc, int kNG>
struct BwdSmem {
  using G = Geo<kNG>;
  Quad<Acc> x[G::kTile][G::kC];
  Vec4<Acc> bc[G::kTile][2 * kNG];
  Vec4<Acc> hp[G::kTile][G::kThr];
  Vec4<Acc> start[G::kSubs - 1][G::kThr];  // the state entering sub-segments 0 .. kSubs-2
  Acc wsum[G::kTile][G::kWarps][2 * kG];
  Acc gd[G::kThr];
};

// What a tile fetch loads (the rest is staged as 0): everything; u, delta and Bm (the
// forward walks: the state alone); delta, dy, z and Cm (the backward's pass 1: the
// adjoint alone).
enum class Inputs { kAll, kState, kAdjoint };

// One tile of inputs in flight: each thread loads its share into registers (fetch) and
// later stores it converted to shared memory (put). The registers hold the stored values:
// converting bfloat16 at fetch made every load wait there, not at put (the bf16 forward
// took 1.5x the float32 one; docs/performance.md, 2026-12-01b). (t, c) pair idx = tid + j kThr is
// step idx / kC, channel idx % kC; Bm/Cm value idx = tid + j kThr is step idx / (2 kNP),
// [Bm | Cm] state idx % (2 kNP). Zeros past `tend`, past Di and past N.
template <class F, int kNG, bool kBwd, int kT = (kBwd ? Geo<kNG>::kTile : Geo<kNG>::kTileF)>
struct TileLoader {
  using Acc = acc_t<F>;
  using G = Geo<kNG>;
  static constexpr int kPairs = kT * G::kC, kValues = kT * 2 * G::kNP;  // (t, c) pairs, Bm/Cm values
  static constexpr int kPer = (kPairs + G::kThr - 1) / G::kThr, kPerBC = (kValues + G::kThr - 1) / G::kThr;
  F u[kPer], d[kPer], dy[kPer], z[kPer], bc[kPerBC];

  // Pair j of this thread is step t0 + g + j kNG of its own channel c0 + cl (kThr = kC kNG),
  // Bm/Cm value j is step t0 + tid / (2 kNP) + j kC / 8 of state value tid % (2 kNP): one
  // element offset per tensor and tile, then a fixed stride per j (the index arithmetic
  // was a quarter of the forward's instructions, ncu 2026-12-02 fifteenth session).
  __device__ __forceinline__ void fetch(const ScanParams& p, int b, int c0, int t0, int tend,
                                        Inputs what = Inputs::kAll) {
    static_assert(G::kThr % (2 * G::kNP) == 0, "a thread's Bm/Cm value index is fixed");
    const bool state = what != Inputs::kAdjoint, adjoint = what != Inputs::kState;
    const int tid = threadIdx.x, cl = tid % G::kC, t1 = t0 + tid / G::kC;
    const bool live = c0 + cl < p.dim;
    const int64_t at = int64_t(t1), c = c0 + cl;
    const F* pu = static_cast<const F*>(p.u) + (b * p.u_bstride + at * p.u_tstride + c);
    const F* pd = static_cast<const F*>(p.delta) + (b * p.delta_bstride + at * p.delta_tstride + c);
    const F* py = kBwd ? static_cast<const F*>(p.dy) + (b * p.dy_bstride + at * p.dy_tstride + c) : nullptr;
    const F* pz = p.z ? static_cast<const F*>(p.z) + (b * p.z_bstride + at * p.z_tstride + c) : nullptr;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int step = j * kNG;  // past t1
      const bool ok = (kPairs % G::kThr == 0 || tid + j * G::kThr < kPairs) && live && t1 + step < tend;
      u[j] = ok && state ? pu[step * p.u_tstride] : F(0.0f);
      d[j] = ok ? pd[step * p.delta_tstride] : F(0.0f);
      if (kBwd) dy[j] = ok && adjoint ? py[step * p.dy_tstride] : F(0.0f);
      z[j] = pz && ok && adjoint ? pz[step * p.z_tstride] : F(0.0f);
    }
    const int v = tid % (2 * G::kNP), n = v % G::kNP, tb = t0 + tid / (2 * G::kNP);
    const bool isC = v >= G::kNP, want = n < p.dstate && (isC ? adjoint : state);
    const int64_t bc_tstride = isC ? p.C_tstride : p.B_tstride;
    const F* src = isC ? static_cast<const F*>(p.Cm) + (b * p.C_bstride + int64_t(tb) * p.C_tstride + n)
                       : static_cast<const F*>(p.Bm) + (b * p.B_bstride + int64_t(tb) * p.B_tstride + n);
#pragma unroll
    for (int j = 0; j < kPerBC; ++j) {
      const int step = j * (G::kThr / (2 * G::kNP));  // past tb
      const bool ok = (kValues % G::kThr == 0 || tid + j * G::kThr < kValues) && want && tb + step < tend;
      bc[j] = ok ? src[step * bc_tstride] : F(0.0f);
    }
  }

  template <class Smem>
  __device__ __forceinline__ void put(Smem& sm, bool gate) const {
    const int tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int idx = tid + j * G::kThr, i = idx / G::kC, c = idx % G::kC;
      if (kPairs % G::kThr != 0 && idx >= kPairs) break;
      const Acc uj = load(&u[j]), dj = load(&d[j]);
      if constexpr (kBwd) {
        const Acc dyj = load(&dy[j]), zj = load(&z[j]);
        Acc gy = dyj, dzf = 0;
        if (gate) {  // gy = dy SiLU(z); dz = dy y SiLU'(z), SiLU'(z) = s (1 + z (1 - s))
          const Acc s = sigmoid_acc(zj);
          gy = dyj * zj * s;
          dzf = dyj * (s * (Acc(1) + zj * (Acc(1) - s)));
        }
        sm.x[i][c] = Quad<Acc>{uj, dj, gy, dzf};
      } else {
        sm.x[i][c] = Pair<Acc>{uj, dj};
        sm.z[i][c] = load(&z[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kPerBC; ++j) {
      const int idx = tid + j * G::kThr, i = idx / (2 * G::kNP), v = idx % (2 * G::kNP);
      if (kValues % G::kThr != 0 && idx >= kValues) break;
      sm.bc[i][v / kG].v[v % kG] = load(&bc[j]);
    }
  }
};

// ---- forward ------------------------------------------------------------------------

// grid (ceil(Di / kC), B, chunks), block kThr, dynamic shared memory FwdSmem. kFinal:
// start from tc.carry (or 0), write y (if p.y) and the checkpoints (if p.ckpt). Otherwise
// (pass 1, chunks 0 .. count-2): start from 0, write the chunk's end state and product of
// e, the latter as exp(A sum_t delta_t) (one add per step instead of a multiply per state).
template <class F, int kNG, bool kFinal>
__global__ void __launch_bounds__(Geo<kNG>::kThr, kNG == 4 && !std::is_same_v<F, double> ? 3 : 1)
    scan_fwd_kernel(ScanParams p, Chunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  using G = Geo<kNG>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  FwdSmem<Acc, kNG>& sm = *reinterpret_cast<FwdSmem<Acc, kNG>*>(smem_raw);
  const int tid = threadIdx.x, cl = tid % G::kC, g = tid / G::kC;
  const int N = p.dstate, T = p.seqlen, Di = p.dim, b = blockIdx.y, k = blockIdx.z;
  const int c0 = blockIdx.x * G::kC, c = c0 + cl;
  const bool active = c < Di;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  Acc a2[kG], h[kG], dsum = 0;
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    const int n = g * kG + j;
    const bool live = active && n < N;
    a2[j] = live ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    h[j] = kFinal && tc.carry && live ? tc.carry[chunk_at(p, k, b, n, c)] : Acc(0);
  }
  constexpr Inputs kLoads = kFinal ? Inputs::kAll : Inputs::kState;
  const Acc dsk = kFinal && active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  F* y = kFinal && p.y ? static_cast<F*>(p.y) + int64_t(b) * T * Di + c : nullptr;
  Acc* ck = kFinal && active ? static_cast<Acc*>(p.ckpt) : nullptr;
  const bool gate = p.z != nullptr;

  TileLoader<F, kNG, false> ld;
  ld.fetch(p, b, c0, tbeg, tend, kLoads);
  ld.put(sm, gate);
  __syncthreads();
  for (int t0 = tbeg; t0 < tend; t0 += G::kTileF) {
    const bool more = t0 + G::kTileF < tend;
    if (more) ld.fetch(p, b, c0, t0 + G::kTileF, tend, kLoads);  // in flight during this tile
    if (ck && t0 % G::kEvery == 0) {                             // a checkpoint: the state entering step t0
#pragma unroll
      for (int j = 0; j < kG; ++j)
        if (g * kG + j < N) ck[ckpt_at(p, b, t0 / G::kEvery, g * kG + j, c)] = h[j];
    }
#pragma unroll
    for (int i = 0; i < G::kTileF; ++i) {
      const Pair<Acc> x = sm.x[i][cl];
      const Vec4<Acc> bm = sm.bc[i][g], cm = sm.bc[i][kNG + g];
      const Acc dtu = x.d * x.u;
      Acc yv = 0;
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        const Acc e = exp2_fast(x.d * a2[j]);  // exp(delta_t A[c, n])
        h[j] = e * h[j] + dtu * bm.v[j];
        if (kFinal) yv += cm.v[j] * h[j];
      }
      if (kFinal)
        sm.y[i][g][cl] = yv;
      else
        dsum += x.d;
    }
    __syncthreads();  // the tile's y parts are written, its inputs read
    if (y) {          // y_t = sum of the groups' parts + D u_t (times SiLU(z_t)); this thread's channel
      for (int i = g; i < G::kTileF; i += kNG) {
        const int t = t0 + i;
        if (!active || t >= tend) continue;
        Acc s = dsk * sm.x[i][cl].u;
#pragma unroll
        for (int gg = 0; gg < kNG; ++gg) s += sm.y[i][gg][cl];
        if (gate) s *= sm.z[i][cl] * sigmoid_acc(sm.z[i][cl]);
        store(y + int64_t(t) * Di, s);
      }
    }
    if (more) {
      __syncthreads();  // the tile is consumed
      ld.put(sm, gate);
      __syncthreads();
    }
  }
  if (!kFinal && active) {
#pragma unroll
    for (int j = 0; j < kG; ++j) {
      const int n = g * kG + j;
      if (n >= N) break;
      tc.ends[chunk_at(p, k, b, n, c)] = h[j];
      tc.prods[chunk_at(p, k, b, n, c)] = exp2_fast(a2[j] * dsum);
    }
  }
}

// Between the passes, per (b, n, c): the value entering every chunk, composing the
// chunks' own maps v -> prod v + end in order, first to last (forward: the state) or last
// to first (backward: q). `rows` = B N Di; the tables are (count, rows).
template <class Acc, bool kReverse>
__global__ void scan_carry_kernel(Chunks<Acc> tc, Acc* carry, int64_t rows) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  Acc v = 0;
  for (int i = 0; i < tc.count; ++i) {
    const int64_t at = int64_t(kReverse ? tc.count - 1 - i : i) * rows + r;
    carry[at] = v;
    if (i + 1 < tc.count) v = tc.prods[at] * v + tc.ends[at];
  }
}

// ---- backward -----------------------------------------------------------------------

// Pass 1's shared memory: the tile's (u = 0, delta, gy, dzf) and [Bm = 0 | Cm], in tiles
// of kTileF steps (the main pass's kTile-step tiles would cost twice the barriers).
template <class Acc, int kNG>
struct BwdPass1Smem {
  using G = Geo<kNG>;
  Quad<Acc> x[G::kTileF][G::kC];
  Vec4<Acc> bc[G::kTileF][2 * kNG];
};

// Pass 1: grid (ceil(Di / kC), B, count - 1), block kThr, dynamic shared memory
// BwdPass1Smem; chunk blockIdx.z + 1 from q = 0, last step first: q at its first step and
// the product of e over it (as exp(A sum_t delta_t)), into tc.ends and tc.prods. Reads
// only what the adjoint needs: delta, dy, z, Cm.
template <class F, int kNG>
__global__ void __launch_bounds__(Geo<kNG>::kThr) scan_bwd_pass1_kernel(ScanParams p, Chunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  using G = Geo<kNG>;
  constexpr int kT = G::kTileF;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  BwdPass1Smem<Acc, kNG>& sm = *reinterpret_cast<BwdPass1Smem<Acc, kNG>*>(smem_raw);
  const int tid = threadIdx.x, cl = tid % G::kC, g = tid / G::kC;
  const int N = p.dstate, T = p.seqlen, b = blockIdx.y, k = blockIdx.z + 1;
  const int c0 = blockIdx.x * G::kC, c = c0 + cl;
  const bool active = c < p.dim;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  const bool gate = p.z != nullptr;
  Acc a2[kG], q[kG], dsum = 0;
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    const int n = g * kG + j;
    a2[j] = active && n < N ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    q[j] = 0;
  }
  TileLoader<F, kNG, true, kT> ld;
  const int last = tbeg + (tend - 1 - tbeg) / kT * kT;
  ld.fetch(p, b, c0, last, tend, Inputs::kAdjoint);
  ld.put(sm, gate);
  __syncthreads();
  for (int t0 = last; t0 >= tbeg; t0 -= kT) {
    const bool more = t0 - kT >= tbeg;
    if (more) ld.fetch(p, b, c0, t0 - kT, tend, Inputs::kAdjoint);
#pragma unroll
    for (int i = kT - 1; i >= 0; --i) {
      const Quad<Acc> x = sm.x[i][cl];
      const Vec4<Acc> cm = sm.bc[i][kNG + g];
#pragma unroll
      for (int j = 0; j < kG; ++j) q[j] = exp2_fast(x.d * a2[j]) * (q[j] + x.gy * cm.v[j]);
      dsum += x.d;
    }
    if (more) {
      __syncthreads();
      ld.put(sm, gate);
      __syncthreads();
    }
  }
  if (active) {
#pragma unroll
    for (int j = 0; j < kG; ++j) {
      const int n = g * kG + j;
      if (n >= N) break;
      tc.ends[chunk_at(p, k, b, n, c)] = q[j];
      tc.prods[chunk_at(p, k, b, n, c)] = exp2_fast(a2[j] * dsum);
    }
  }
}

// The sums over the warp's 32 lanes (channels) of the 2 kG = 8 terms of every lane, by a
// transposing butterfly: at xor distances 16, 8 and 4 each lane keeps half of its values
// and adds its partner's copy of that half, then distances 2 and 1 add whole values.
// Afterwards lane l holds in v[0] the sum of term l / 4 (lanes 4k .. 4k + 3 alike).
// 9 shuffles and 9 adds per lane, no shared memory.
template <class Acc>
__device__ __forceinline__ void warp_sum_terms(Acc (&v)[2 * kG], int lane) {
  static_assert(2 * kG == 8, "three halving levels");
#pragma unroll
  for (int half = 4, dist = 16; half >= 1; half /= 2, dist /= 2) {
    const bool upper = lane & dist;  // keeps the upper half of its values
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const Acc send = upper ? v[i] : v[i + half], keep = upper ? v[i + half] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, dist);
    }
  }
  v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
  v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
}

// The main backward: grid (ceil(Di / kC), B, count), block kThr, dynamic shared memory
// BwdSmem. Checkpoint segments of chunk blockIdx.z from last to first; in each, a forward
// walk from the checkpoint keeps the state entering each kTile-step sub-segment (in the
// thread's shared slots), then the sub-segments from last to first: a forward walk over it leaves
// h_{t-1} of every step in the thread's shared slots, a backward walk over it computes,
// per (t, n), with e_t recomputed and g = q + gy Cm_t:
//   du_t += g delta_t Bm_t (via s1 = sum_n g Bm_t),  ddelta_t += g (A e_t h_{t-1} + Bm_t u_t),
//   dA += g delta_t e_t h_{t-1},  q = e_t g,  dBm_t += g delta_t u_t,  dCm_t += gy h_t,
//   and y_t = sum_n Cm_t h_t + D u_t for dz; ddelta_t times sigmoid(dt_t) = 1 - exp(-delta_t)
//   when delta = softplus(dt) (p.ddelta_wrt_dt: dt's gradient, no softplus backward pass).
template <class F, int kNG>
__global__ void __launch_bounds__(Geo<kNG>::kThr, kNG == 4 && !std::is_same_v<F, double> ? 3 : 1)
    scan_bwd_kernel(ScanParams p, Chunks<acc_t<F>> tc) {
  using Acc = acc_t<F>;
  using G = Geo<kNG>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  BwdSmem<Acc, kNG>& sm = *reinterpret_cast<BwdSmem<Acc, kNG>*>(smem_raw);
  const int tid = threadIdx.x, cl = tid % G::kC, g = tid / G::kC, lane = tid % 32, warp = tid / 32;
  const int N = p.dstate, T = p.seqlen, Di = p.dim, b = blockIdx.y, k = blockIdx.z;
  const int c0 = blockIdx.x * G::kC, c = c0 + cl;
  const bool active = c < Di;
  const int tbeg = k * tc.len, tend = min(T, tbeg + tc.len);
  const bool gate = p.z != nullptr;
  constexpr int kUnroll = std::is_same_v<F, double> && kNG == 16 ? 1 : 2;  // (128 registers at most)
  Acc a2[kG], q[kG], gA[kG];
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    const int n = g * kG + j;
    const bool live = active && n < N;
    a2[j] = live ? load(static_cast<const F*>(p.A) + int64_t(c) * N + n) * Acc(kLog2e) : Acc(0);
    q[j] = tc.carry && live ? tc.carry[chunk_at(p, k, b, n, c)] : Acc(0);
    gA[j] = 0;
  }
  const Acc dsk = active ? load(static_cast<const F*>(p.D) + c) : Acc(0);
  const int64_t out0 = int64_t(b) * T * Di + c;
  F* du = static_cast<F*>(p.du) + out0;
  F* ddelta = static_cast<F*>(p.ddelta) + out0;
  F* dz = gate ? static_cast<F*>(p.dz) + out0 : nullptr;
  const Acc* ck = static_cast<const Acc*>(p.ckpt);
  Acc* part = static_cast<Acc*>(p.part_bc) + (int64_t(blockIdx.x) * p.batch + b) * 2 * N * T;  // (2N, T)
  Acc gD = 0;

  // Tiles in the order they are used: per segment (last first), the forward walk's
  // sub-segments 0 .. nsub-2 (u, delta, Bm only), then sub-segments nsub-1 .. 0.
  const int seg_first = tbeg / G::kEvery, seg_last = (tend - 1) / G::kEvery;
  auto nsub_of = [&](int seg) { return (min(G::kEvery, tend - seg * G::kEvery) + G::kTile - 1) / G::kTile; };
  TileLoader<F, kNG, true> ld;
  {
    const int ns = nsub_of(seg_last);
    ld.fetch(p, b, c0, seg_last * G::kEvery + (ns > 1 ? 0 : (ns - 1) * G::kTile), tend,
             ns == 1 ? Inputs::kAll : Inputs::kState);
    ld.put(sm, gate);
    __syncthreads();
  }
  // Stages the tile after sub-segment j of segment seg (walk: of the forward walk, else of
  // the backward) into shared memory; false when there is none.
  auto stage_next = [&](int seg, int j, bool walk) {
    const int ns = nsub_of(seg), s0 = seg * G::kEvery;
    int t0;
    bool full;  // a backward tile (all four inputs), not a walk tile
    if (walk) {
      full = j + 1 >= ns - 1;
      t0 = s0 + (full ? ns - 1 : j + 1) * G::kTile;
    } else if (j > 0) {
      full = true, t0 = s0 + (j - 1) * G::kTile;
    } else if (seg - 1 >= seg_first) {  // (earlier segments are whole: kSubs > 1 sub-segments)
      full = false, t0 = (seg - 1) * G::kEvery;
    } else {
      return false;
    }
    ld.fetch(p, b, c0, t0, tend, full ? Inputs::kAll : Inputs::kState);
    ld.put(sm, gate);
    return true;
  };

  for (int seg = seg_last; seg >= seg_first; --seg) {
    const int ns = nsub_of(seg), s0 = seg * G::kEvery;
    Acc h[kG];
#pragma unroll
    for (int j = 0; j < kG; ++j) h[j] = active && g * kG + j < N ? ck[ckpt_at(p, b, seg, g * kG + j, c)] : Acc(0);
    // 1. Forward walk over sub-segments 0 .. ns-2, keeping the state entering each.
    for (int s = 0; s + 1 < ns; ++s) {
      sm.start[s][tid] = Vec4<Acc>{{h[0], h[1], h[2], h[3]}};
#pragma unroll kUnroll
      for (int i = 0; i < G::kTile; ++i) {
        const Quad<Acc> x = sm.x[i][cl];
        const Vec4<Acc> bm = sm.bc[i][g];
        const Acc dtu = x.d * x.u;
#pragma unroll
        for (int j = 0; j < kG; ++j) h[j] = exp2_fast(x.d * a2[j]) * h[j] + dtu * bm.v[j];
      }
      __syncthreads();
      stage_next(seg, s, true);  // (there always is one: a later sub-segment)
      __syncthreads();
    }
    // 2. Sub-segments, last first (h enters the last one).
    for (int s = ns - 1; s >= 0; --s) {
      const int t0 = s0 + s * G::kTile;
      if (s < ns - 1) {
        const Vec4<Acc> st = sm.start[s][tid];
#pragma unroll
        for (int j = 0; j < kG; ++j) h[j] = st.v[j];
      }
      // Forward over it: h_{t-1} of each step into the thread's slots.
#pragma unroll kUnroll
      for (int i = 0; i < G::kTile; ++i) {
        const Quad<Acc> x = sm.x[i][cl];
        const Vec4<Acc> bm = sm.bc[i][g];
        const Acc dtu = x.d * x.u;
        Vec4<Acc> hv;
#pragma unroll
        for (int j = 0; j < kG; ++j) {
          hv.v[j] = h[j];
          h[j] = exp2_fast(x.d * a2[j]) * h[j] + dtu * bm.v[j];
        }
        sm.hp[i][tid] = hv;
      }
      // Backwards over it (two steps per iteration: unrolled further, the compiler hoists
      // shared loads of later steps and runs out of registers).
#pragma unroll kUnroll
      for (int i = G::kTile - 1; i >= 0; --i) {
        const Quad<Acc> x = sm.x[i][cl];
        const Vec4<Acc> bm = sm.bc[i][g], cm = sm.bc[i][kNG + g], hv = sm.hp[i][tid];
        const Acc dtu = x.d * x.u;
        Acc s1 = 0, s2 = 0, yo = 0, term[2 * kG];  // dBm terms of the kG states, then dCm terms
#pragma unroll
        for (int j = 0; j < kG; ++j) {
          const Acc e = exp2_fast(x.d * a2[j]);
          const Acc eh = e * hv.v[j], ht = eh + dtu * bm.v[j];  // e_t h_{t-1}, h_t
          const Acc gh = q[j] + x.gy * cm.v[j];                 // dL/dh_t
          const Acc w = gh * eh;
          s1 += gh * bm.v[j];
          s2 += a2[j] * w;
          gA[j] += x.d * w;
          yo += cm.v[j] * ht;
          q[j] = e * gh;
          term[j] = gh * dtu;
          term[kG + j] = x.gy * ht;
        }
        sm.hp[i][tid] = Vec4<Acc>{{s1, s2, yo, Acc(0)}};
        warp_sum_terms(term, lane);
        if (lane % 4 == 0) sm.wsum[i][warp][lane / 4] = term[0];
      }
      __syncthreads();  // every slot and warp sum of the tile is written
                        // du, ddelta, dz of (t0 + i, this thread's channel) for i = g, g + kNG, ...
#pragma unroll 1
      for (int i = g; i < G::kTile; i += kNG) {
        const int t = t0 + i;
        const Quad<Acc> x = sm.x[i][cl];
        Acc s1 = 0, s2 = 0, yo = dsk * x.u;
#pragma unroll
        for (int gg = 0; gg < kNG; ++gg) {
          const Vec4<Acc> v = sm.hp[i][gg * G::kC + cl];
          s1 += v.v[0], s2 += v.v[1], yo += v.v[2];
        }
        gD += x.gy * x.u;  // (zero past the end)
        if (!active || t >= tend) continue;
        store(du + int64_t(t) * Di, x.gy * dsk + x.d * s1);
        const Acc dd = s2 * Acc(kLn2) + x.u * s1;  // sum_n A w = ln 2 sum_n a2 w
        store(ddelta + int64_t(t) * Di, p.ddelta_wrt_dt ? dd * -math::expm1(-x.d) : dd);
        if (dz) store(dz + int64_t(t) * Di, yo * x.dzf);
      }
      // dBm, dCm of this channel block: the warps of each group summed.
#pragma unroll 1
      for (int idx = tid; idx < G::kTile * kNG * 2 * kG; idx += G::kThr) {
        const int i = idx % G::kTile, r = idx / G::kTile, gg = r / (2 * kG), v = r % (2 * kG), n = gg * kG + v % kG;
        const int t = t0 + i;
        if (t >= tend || n >= N) continue;
        Acc sum = 0;
#pragma unroll
        for (int w = 0; w < G::kWarpsPerGroup; ++w) sum += sm.wsum[i][gg * G::kWarpsPerGroup + w][v];
        part[int64_t(v < kG ? n : N + n) * T + t] = sum;
      }
      __syncthreads();  // the tile, slots and sums are consumed
      if (stage_next(seg, s, false)) {
        __syncthreads();
      }
    }
  }
  // dA: this thread's states; dD: the kNG threads of the channel summed.
  sm.gd[tid] = gD;
  __syncthreads();
  if (!active) return;
  Acc* pad = static_cast<Acc*>(p.part_ad) + (int64_t(b) * tc.count + k) * (N + 1) * Di + c;  // (N + 1, Di)
#pragma unroll
  for (int j = 0; j < kG; ++j)
    if (g * kG + j < N) pad[int64_t(g * kG + j) * Di] = gA[j];
  if (g == 0) {
    Acc s = 0;
    for (int gg = 0; gg < kNG; ++gg) s += sm.gd[gg * G::kC + cl];
    pad[int64_t(N) * Di] = s;
  }
}

// dBm, dCm (B, T, N): sum the channel blocks' partials (blocks, B, 2N, T), t fastest.
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

}  // namespace sessa::cuda::scan
