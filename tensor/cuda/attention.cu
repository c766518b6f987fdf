// Causal grouped-query attention on CUDA, flash-attention style; the math is in
// tensor/ops/attention.cpp. Nothing of size Tq x Tk is stored: a block owns a tile of
// query rows (or, for dk/dv, of keys) and streams the other side through shared memory;
// the softmax statistics stay in float32 (float64 for float64) registers.
//
// Two kernel families, chosen by dtype, both with head dims up to 128 (zero-padded to a tile width DH):
// - bfloat16: tensor cores via mma.sync m16n8k16 (bf16 in, float32 accumulate). A block
//   has 4 warps, each owning 16 rows of a 64-row tile; the score accumulators are turned
//   into the A operand of the next product in registers (the C and A fragment layouts
//   agree), so P never goes through shared memory.
// - float32 / float64: SIMT tiles (no tensor-core product keeps their precision), 256
//   threads as 16 x 16, each thread owning R rows by R keys strided by 16 (R = 4 in float,
//   2 in double).
// Forward: a block per (64-row query tile, batch x head), keys in tiles of 64 with an
// online softmax; saves lse = max + log(sum). Backward: D_i = dout_i . out_i first, then
// two deterministic kernels that recompute P = exp(S - lse): dq (a block per query tile,
// streaming keys) and dk/dv (a block per key tile, streaming the query tiles of every
// query head of its kv group, so GQA needs no atomics and no reduction afterwards).
#include <cmath>
#include <type_traits>

#include "tensor/cuda/attention.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

struct Dims {
  int B, H, Hkv, Tq, Tk, dh, group, q_offset;
};

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// D_i = dout_i . out_i, one warp per row.
template <class T>
__global__ void __launch_bounds__(256) row_dot_kernel(const T* a, const T* b, acc_t<T>* out, int64_t rows, int n) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= rows) return;  // whole warps leave together
  const acc_t<T> sum = warp_dot(a + row * n, b + row * n, n);
  if (threadIdx.x % 32 == 0) out[row] = sum;
}

// ==== SIMT kernels (float32, float64) ===================================================
// Tiles are BM = 16 R rows of DH values, stored as A with row stride DH + 1 (conflict-free
// for the strided row ownership). Thread (ty, tx) owns rows ty + 16 i and keys (or output
// columns) tx + 16 j.

// Rows [0, BM) of a row-major (nrows x dh) matrix into s[r * (DH + 1) + d]; zeros outside.
template <int BM, int DH, class T, class A>
__device__ void simt_load(A* s, const T* g, int nrows, int dh) {
  for (int e = threadIdx.x; e < BM * DH; e += blockDim.x) {
    const int r = e / DH, d = e % DH;
    s[r * (DH + 1) + d] = r < nrows && d < dh ? load(g + int64_t(r) * dh + d) : A(0);
  }
}

template <class T, int DH, int R>
constexpr size_t simt_forward_smem() {
  return (2 * 16 * R * (DH + 1) + 16 * R * (16 * R + 1)) * sizeof(acc_t<T>);
}

// grid (B * H, query tiles, heaviest first); smem: Q, K-then-V, P.
template <class T, int DH, int R>
__global__ void __launch_bounds__(256)
    simt_forward(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, Dims d, acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int BM = 16 * R, LD = DH + 1, LP = BM + 1, CJ = DH / 16;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* Qs = reinterpret_cast<A*>(smem_bytes);
  A* KV = Qs + BM * LD;
  A* Ps = KV + BM * LD;
  const int bh = blockIdx.x, b = bh / d.H, h = bh % d.H;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t kv_off = (int64_t(b) * d.Hkv + h / d.group) * d.Tk * d.dh;
  simt_load<BM, DH>(Qs, q + (int64_t(bh) * d.Tq + i0) * d.dh, d.Tq - i0, d.dh);
  A m[R], l[R], o[R][CJ];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    m[i] = A(-INFINITY), l[i] = 0;
#pragma unroll
    for (int c = 0; c < CJ; ++c) o[i][c] = 0;
  }
  const int last = min(d.Tk - 1, d.q_offset + i0 + BM - 1);
  for (int n0 = 0; n0 <= last; n0 += BM) {
    __syncthreads();
    simt_load<BM, DH>(KV, k + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh);
    __syncthreads();
    A s[R][R] = {};
    for (int x = 0; x < DH; ++x) {
      A a[R], kk[R];
#pragma unroll
      for (int i = 0; i < R; ++i) a[i] = Qs[(ty + 16 * i) * LD + x], kk[i] = KV[(tx + 16 * i) * LD + x];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) s[i][j] += a[i] * kk[j];
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int pos = d.q_offset + i0 + ty + 16 * i;
      A mx = A(-INFINITY);
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int key = n0 + tx + 16 * j;
        s[i][j] = key <= pos && key < d.Tk ? s[i][j] * scale : A(-INFINITY);
        mx = max(mx, s[i][j]);
      }
      mx = warp_max<16>(mx);
      const A mn = max(m[i], mx), corr = math::exp(m[i] - mn);  // key 0 is always allowed: mn is finite
      A rs = 0;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const A p = math::exp(s[i][j] - mn);
        Ps[(ty + 16 * i) * LP + tx + 16 * j] = p;
        rs += p;
      }
      rs = warp_sum<16>(rs);
      l[i] = l[i] * corr + rs, m[i] = mn;
#pragma unroll
      for (int c = 0; c < CJ; ++c) o[i][c] *= corr;
    }
    __syncthreads();
    simt_load<BM, DH>(KV, v + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh);
    __syncthreads();
    for (int kk = 0; kk < BM; ++kk) {
      A p[R], vv[CJ];
#pragma unroll
      for (int i = 0; i < R; ++i) p[i] = Ps[(ty + 16 * i) * LP + kk];
#pragma unroll
      for (int c = 0; c < CJ; ++c) vv[c] = KV[kk * LD + tx + 16 * c];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int c = 0; c < CJ; ++c) o[i][c] += p[i] * vv[c];
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int row = i0 + ty + 16 * i;
    if (row >= d.Tq) continue;
    const int64_t at = int64_t(bh) * d.Tq + row;
    const A inv = A(1) / l[i];
#pragma unroll
    for (int c = 0; c < CJ; ++c)
      if (tx + 16 * c < d.dh) store(out + at * d.dh + tx + 16 * c, o[i][c] * inv);
    if (tx == 0) lse[at] = m[i] + math::log(l[i]);
  }
}

template <class T, int DH, int R>
constexpr size_t simt_dq_smem() {
  return (4 * 16 * R * (DH + 1) + 16 * R * (16 * R + 1)) * sizeof(acc_t<T>);
}

// dq = scale * sum_s dS_is k_s. grid (B * H, query tiles, heaviest first); smem: Q, dout, K, V, dS.
template <class T, int DH, int R>
__global__ void __launch_bounds__(256)
    simt_backward_dq(const T* q, const T* k, const T* v, const T* dout, const acc_t<T>* lse, const acc_t<T>* Dv, T* dq,
                     Dims d, acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int BM = 16 * R, LD = DH + 1, LP = BM + 1, CJ = DH / 16;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* Qs = reinterpret_cast<A*>(smem_bytes);
  A* Gs = Qs + BM * LD;
  A* Ks = Gs + BM * LD;
  A* Vs = Ks + BM * LD;
  A* dSs = Vs + BM * LD;
  const int bh = blockIdx.x, b = bh / d.H, h = bh % d.H;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t kv_off = (int64_t(b) * d.Hkv + h / d.group) * d.Tk * d.dh, q_at = int64_t(bh) * d.Tq + i0;
  simt_load<BM, DH>(Qs, q + q_at * d.dh, d.Tq - i0, d.dh);
  simt_load<BM, DH>(Gs, dout + q_at * d.dh, d.Tq - i0, d.dh);
  A L[R], Dr[R], acc[R][CJ];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const bool in = i0 + ty + 16 * i < d.Tq;
    L[i] = in ? lse[q_at + ty + 16 * i] : A(0), Dr[i] = in ? Dv[q_at + ty + 16 * i] : A(0);
#pragma unroll
    for (int c = 0; c < CJ; ++c) acc[i][c] = 0;
  }
  const int last = min(d.Tk - 1, d.q_offset + i0 + BM - 1);
  for (int n0 = 0; n0 <= last; n0 += BM) {
    __syncthreads();
    simt_load<BM, DH>(Ks, k + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh);
    simt_load<BM, DH>(Vs, v + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh);
    __syncthreads();
    A s[R][R] = {}, dp[R][R] = {};
    for (int x = 0; x < DH; ++x) {
      A a[R], g[R], kk[R], vv[R];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        a[i] = Qs[(ty + 16 * i) * LD + x], g[i] = Gs[(ty + 16 * i) * LD + x];
        kk[i] = Ks[(tx + 16 * i) * LD + x], vv[i] = Vs[(tx + 16 * i) * LD + x];
      }
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) s[i][j] += a[i] * kk[j], dp[i][j] += g[i] * vv[j];
    }
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int key = n0 + tx + 16 * j, pos = d.q_offset + i0 + ty + 16 * i;
        const A p = key <= pos && key < d.Tk ? math::exp(s[i][j] * scale - L[i]) : A(0);
        dSs[(ty + 16 * i) * LP + tx + 16 * j] = p * (dp[i][j] - Dr[i]);
      }
    __syncthreads();
    for (int kk = 0; kk < BM; ++kk) {
      A ds[R], kv[CJ];
#pragma unroll
      for (int i = 0; i < R; ++i) ds[i] = dSs[(ty + 16 * i) * LP + kk];
#pragma unroll
      for (int c = 0; c < CJ; ++c) kv[c] = Ks[kk * LD + tx + 16 * c];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int c = 0; c < CJ; ++c) acc[i][c] += ds[i] * kv[c];
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i0 + ty + 16 * i >= d.Tq) continue;
#pragma unroll
    for (int c = 0; c < CJ; ++c)
      if (tx + 16 * c < d.dh) store(dq + (q_at + ty + 16 * i) * d.dh + tx + 16 * c, acc[i][c] * scale);
  }
}

template <class T, int DH, int R>
constexpr size_t simt_dkdv_smem() {
  return (4 * 16 * R * (DH + 1) + 2 * 16 * R * (16 * R + 1) + 2 * 16 * R) * sizeof(acc_t<T>);
}

// dv = sum_i P_is dout_i, dk = scale * sum_i dS_is q_i over the query heads of one kv group.
// grid (B * Hkv, key tiles); thread (ty, tx) owns keys ty + 16 i and queries / columns tx + 16 j.
// smem: K, V, Q, dout, P^T, dS^T, lse, D.
template <class T, int DH, int R>
__global__ void __launch_bounds__(256)
    simt_backward_dkdv(const T* q, const T* k, const T* v, const T* dout, const acc_t<T>* lse, const acc_t<T>* Dv,
                       T* dk, T* dv, Dims d, acc_t<T> scale) {
  using A = acc_t<T>;
  constexpr int BM = 16 * R, LD = DH + 1, LP = BM + 1, CJ = DH / 16;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* Ks = reinterpret_cast<A*>(smem_bytes);
  A* Vs = Ks + BM * LD;
  A* Qs = Vs + BM * LD;
  A* Gs = Qs + BM * LD;
  A* Ps = Gs + BM * LD;
  A* dSs = Ps + BM * LP;
  A* Ls = dSs + BM * LP;
  A* Ds = Ls + BM;
  const int bkv = blockIdx.x, b = bkv / d.Hkv, hk = bkv % d.Hkv, n0 = blockIdx.y * BM;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t kv_at = int64_t(bkv) * d.Tk + n0;
  simt_load<BM, DH>(Ks, k + kv_at * d.dh, d.Tk - n0, d.dh);
  simt_load<BM, DH>(Vs, v + kv_at * d.dh, d.Tk - n0, d.dh);
  A gk[R][CJ] = {}, gv[R][CJ] = {};
  const int i_start = max(0, n0 - d.q_offset) / BM * BM;  // earlier queries see none of these keys
  for (int hh = 0; hh < d.group; ++hh) {
    const int64_t bh = int64_t(b) * d.H + hk * d.group + hh;
    for (int i0 = i_start; i0 < d.Tq; i0 += BM) {
      const int64_t q_at = bh * d.Tq + i0;
      __syncthreads();
      simt_load<BM, DH>(Qs, q + q_at * d.dh, d.Tq - i0, d.dh);
      simt_load<BM, DH>(Gs, dout + q_at * d.dh, d.Tq - i0, d.dh);
      if (threadIdx.x < BM) {
        const bool in = i0 + int(threadIdx.x) < d.Tq;
        Ls[threadIdx.x] = in ? lse[q_at + threadIdx.x] : A(0);
        Ds[threadIdx.x] = in ? Dv[q_at + threadIdx.x] : A(0);
      }
      __syncthreads();
      A st[R][R] = {}, dpt[R][R] = {};
      for (int x = 0; x < DH; ++x) {
        A kk[R], vv[R], a[R], g[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
          kk[i] = Ks[(ty + 16 * i) * LD + x], vv[i] = Vs[(ty + 16 * i) * LD + x];
          a[i] = Qs[(tx + 16 * i) * LD + x], g[i] = Gs[(tx + 16 * i) * LD + x];
        }
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < R; ++j) st[i][j] += kk[i] * a[j], dpt[i][j] += vv[i] * g[j];
      }
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) {
          const int key = n0 + ty + 16 * i, qi = i0 + tx + 16 * j;
          const bool ok = qi < d.Tq && key <= d.q_offset + qi && key < d.Tk;
          const A p = ok ? math::exp(st[i][j] * scale - Ls[tx + 16 * j]) : A(0);
          Ps[(ty + 16 * i) * LP + tx + 16 * j] = p;
          dSs[(ty + 16 * i) * LP + tx + 16 * j] = p * (dpt[i][j] - Ds[tx + 16 * j]);
        }
      __syncthreads();
      for (int x = 0; x < BM; ++x) {
        A p[R], ds[R], g[CJ], a[CJ];
#pragma unroll
        for (int i = 0; i < R; ++i) p[i] = Ps[(ty + 16 * i) * LP + x], ds[i] = dSs[(ty + 16 * i) * LP + x];
#pragma unroll
        for (int c = 0; c < CJ; ++c) g[c] = Gs[x * LD + tx + 16 * c], a[c] = Qs[x * LD + tx + 16 * c];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int c = 0; c < CJ; ++c) gv[i][c] += p[i] * g[c], gk[i][c] += ds[i] * a[c];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (n0 + ty + 16 * i >= d.Tk) continue;
    const int64_t at = (kv_at + ty + 16 * i) * d.dh;
#pragma unroll
    for (int c = 0; c < CJ; ++c)
      if (tx + 16 * c < d.dh) store(dk + at + tx + 16 * c, gk[i][c] * scale), store(dv + at + tx + 16 * c, gv[i][c]);
  }
}

// ==== bfloat16 tensor-core kernels =====================================================
// mma.sync m16n8k16, row.col, bf16 x bf16 -> f32. With g = lane / 4 and c = lane % 4:
//   A (16 x 16): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B (16 x 8):  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g)
//   C (16 x 8):  c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1)
// (the lower-indexed element in the low 16 bits). Tiles in shared memory are bf16 with a
// row stride of (width + 8), which makes every fragment load below conflict-free.

__device__ __forceinline__ uint32_t lds32(const bf16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment: rows r0.. and columns k0.. of a row-major tile.
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16_t* s, int ld, int r0, int k0, int lane) {
  const bf16_t* p = s + (r0 + lane / 4) * ld + k0 + 2 * (lane % 4);
  a[0] = lds32(p), a[1] = lds32(p + 8 * ld), a[2] = lds32(p + 8), a[3] = lds32(p + 8 * ld + 8);
}

// B fragment with B[k][n] = s[(n0 + n) * ld + k0 + k]: the tile holds B transposed.
__device__ __forceinline__ void frag_b(uint32_t& b0, uint32_t& b1, const bf16_t* s, int ld, int n0, int k0, int lane) {
  const bf16_t* p = s + (n0 + lane / 4) * ld + k0 + 2 * (lane % 4);
  b0 = lds32(p), b1 = lds32(p + 8);
}

// The A fragment of columns [16 kk, 16 kk + 16) of a 16-row product held as the C fragments
// of its 8-column tiles 2 kk (lo) and 2 kk + 1 (hi).
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]), a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]), a[3] = pack_bf16(hi[2], hi[3]);
}

// Rows [0, R) of a row-major (nrows x dh) matrix into s[r * ld + d], d < DH; zeros outside.
// vec: dh % 8 == 0 and g 16-byte aligned, so rows move in 16-byte chunks.
template <int R, int DH>
__device__ void mma_load(bf16_t* s, int ld, const bf16_t* g, int nrows, int dh, bool vec) {
  if (vec) {
    constexpr int CH = DH / 8;
    for (int e = threadIdx.x; e < R * CH; e += blockDim.x) {
      const int r = e / CH, ch = e % CH;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (r < nrows && ch * 8 < dh) val = *reinterpret_cast<const uint4*>(g + int64_t(r) * dh + ch * 8);
      *reinterpret_cast<uint4*>(s + r * ld + ch * 8) = val;
    }
  } else {
    for (int e = threadIdx.x; e < R * DH; e += blockDim.x) {
      const int r = e / DH, d = e % DH;
      s[r * ld + d] = r < nrows && d < dh ? g[int64_t(r) * dh + d] : __float2bfloat16(0.f);
    }
  }
}

// The same rows stored transposed, s[d * ld + r]. A warp takes 32 consecutive rows of one
// 8-column chunk, so its scalar stores hit distinct banks.
template <int R, int DH>
__device__ void mma_load_t(bf16_t* s, int ld, const bf16_t* g, int nrows, int dh, bool vec) {
  if (vec) {
    constexpr int CH = DH / 8;
    for (int e = threadIdx.x; e < R * CH; e += blockDim.x) {
      const int r = e % R, ch = e / R;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (r < nrows && ch * 8 < dh) val = *reinterpret_cast<const uint4*>(g + int64_t(r) * dh + ch * 8);
      const bf16_t* x = reinterpret_cast<const bf16_t*>(&val);
#pragma unroll
      for (int u = 0; u < 8; ++u) s[(ch * 8 + u) * ld + r] = x[u];
    }
  } else {
    for (int e = threadIdx.x; e < R * DH; e += blockDim.x) {
      const int r = e % R, d = e / R;
      s[d * ld + r] = r < nrows && d < dh ? g[int64_t(r) * dh + d] : __float2bfloat16(0.f);
    }
  }
}

template <int DH>
constexpr size_t mma_forward_smem() {
  return (2 * 64 * (DH + 8) + DH * 72) * sizeof(bf16_t);
}

// grid (B * H, query tiles, heaviest first), 128 threads; smem: Q, K (row-major), V^T.
template <int DH>
__global__ void __launch_bounds__(128) mma_forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out,
                                                   float* lse, Dims d, float scale_log2, bool vec) {
  constexpr int BM = 64, BN = 64, LD = DH + 8, LDT = BN + 8, KS = DH / 16, DT = DH / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16_t* Qs = reinterpret_cast<bf16_t*>(smem_bytes);
  bf16_t* Ks = Qs + BM * LD;
  bf16_t* Vt = Ks + BN * LD;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, c = lane % 4;
  const int bh = blockIdx.x, b = bh / d.H, h = bh % d.H;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int64_t kv_off = (int64_t(b) * d.Hkv + h / d.group) * d.Tk * d.dh;
  mma_load<BM, DH>(Qs, LD, q + (int64_t(bh) * d.Tq + i0) * d.dh, d.Tq - i0, d.dh, vec);
  __syncthreads();
  uint32_t qf[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) frag_a(qf[ks], Qs, LD, w * 16, ks * 16, lane);
  float o[DT][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int pos = d.q_offset + i0 + w * 16 + lane / 4;  // this thread's rows sit at pos and pos + 8
  const int last = min(d.Tk - 1, d.q_offset + i0 + BM - 1);
  for (int n0 = 0; n0 <= last; n0 += BN) {
    __syncthreads();
    mma_load<BN, DH>(Ks, LD, k + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh, vec);
    mma_load_t<BN, DH>(Vt, LDT, v + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh, vec);
    __syncthreads();
    float s[BN / 8][4] = {};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        uint32_t b0, b1;
        frag_b(b0, b1, Ks, LD, nt * 8, ks * 16, lane);
        mma_bf16(s[nt], qf[ks], b0, b1);
      }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = n0 + nt * 8 + 2 * c + (e & 1);
        s[nt][e] = key <= pos + 8 * (e / 2) && key < d.Tk ? s[nt][e] * scale_log2 : -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
      }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);  // key 0 is always allowed: mn is finite
      corr[r] = exp2f(m[r] - mn), m[r] = mn, l[r] *= corr[r];
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m[e / 2]);
        l[e / 2] += s[nt][e];
      }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][0] *= corr[0], o[dt][1] *= corr[0], o[dt][2] *= corr[1], o[dt][3] *= corr[1];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[4];
      c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        uint32_t b0, b1;
        frag_b(b0, b1, Vt, LDT, dt * 8, kk * 16, lane);
        mma_bf16(o[dt], pa, b0, b1);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = i0 + w * 16 + lane / 4 + 8 * r;
    if (row >= d.Tq) continue;
    const int64_t at = int64_t(bh) * d.Tq + row;
    const float inv = 1.f / l[r];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int col = dt * 8 + 2 * c;
      if (col < d.dh) out[at * d.dh + col] = __float2bfloat16(o[dt][2 * r] * inv);
      if (col + 1 < d.dh) out[at * d.dh + col + 1] = __float2bfloat16(o[dt][2 * r + 1] * inv);
    }
    if (c == 0) lse[at] = (m[r] + log2f(l[r])) * kLn2;
  }
}

template <int DH>
constexpr size_t mma_dq_smem() {
  return (4 * 64 * (DH + 8) + DH * 72) * sizeof(bf16_t);
}

// dq. grid (B * H, query tiles, heaviest first), 128 threads; smem: Q, dout, K, V, K^T.
template <int DH>
__global__ void __launch_bounds__(128)
    mma_backward_dq(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                    const float* Dv, bf16_t* dq, Dims d, float scale_log2, float scale, bool vec) {
  constexpr int BM = 64, BN = 64, LD = DH + 8, LDT = BN + 8, KS = DH / 16, DT = DH / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16_t* Qs = reinterpret_cast<bf16_t*>(smem_bytes);
  bf16_t* Gs = Qs + BM * LD;
  bf16_t* Ks = Gs + BM * LD;
  bf16_t* Vs = Ks + BN * LD;
  bf16_t* Kt = Vs + BN * LD;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, c = lane % 4;
  const int bh = blockIdx.x, b = bh / d.H, h = bh % d.H;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int64_t kv_off = (int64_t(b) * d.Hkv + h / d.group) * d.Tk * d.dh, q_at = int64_t(bh) * d.Tq + i0;
  mma_load<BM, DH>(Qs, LD, q + q_at * d.dh, d.Tq - i0, d.dh, vec);
  mma_load<BM, DH>(Gs, LD, dout + q_at * d.dh, d.Tq - i0, d.dh, vec);
  const int r0 = w * 16 + lane / 4, pos = d.q_offset + i0 + r0;
  float L[2], Dr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = i0 + r0 + 8 * r < d.Tq;
    L[r] = in ? lse[q_at + r0 + 8 * r] * kLog2e : 0.f;
    Dr[r] = in ? Dv[q_at + r0 + 8 * r] : 0.f;
  }
  float acc[DT][4] = {};
  const int last = min(d.Tk - 1, d.q_offset + i0 + BM - 1);
  for (int n0 = 0; n0 <= last; n0 += BN) {
    __syncthreads();
    const bf16_t* kt = k + kv_off + int64_t(n0) * d.dh;
    mma_load<BN, DH>(Ks, LD, kt, d.Tk - n0, d.dh, vec);
    mma_load<BN, DH>(Vs, LD, v + kv_off + int64_t(n0) * d.dh, d.Tk - n0, d.dh, vec);
    mma_load_t<BN, DH>(Kt, LDT, kt, d.Tk - n0, d.dh, vec);
    __syncthreads();
    float s[BN / 8][4] = {}, dp[BN / 8][4] = {};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t aq[4], ag[4];
      frag_a(aq, Qs, LD, w * 16, ks * 16, lane);
      frag_a(ag, Gs, LD, w * 16, ks * 16, lane);
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        uint32_t b0, b1;
        frag_b(b0, b1, Ks, LD, nt * 8, ks * 16, lane);
        mma_bf16(s[nt], aq, b0, b1);
        frag_b(b0, b1, Vs, LD, nt * 8, ks * 16, lane);
        mma_bf16(dp[nt], ag, b0, b1);
      }
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // s becomes dS = P (dP - D)
        const int key = n0 + nt * 8 + 2 * c + (e & 1), r = e / 2;
        const float p = key <= pos + 8 * r && key < d.Tk ? exp2f(s[nt][e] * scale_log2 - L[r]) : 0.f;
        s[nt][e] = p * (dp[nt][e] - Dr[r]);
      }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t da[4];
      c_to_a(da, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        uint32_t b0, b1;
        frag_b(b0, b1, Kt, LDT, dt * 8, kk * 16, lane);
        mma_bf16(acc[dt], da, b0, b1);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (i0 + r0 + 8 * r >= d.Tq) continue;
    bf16_t* row = dq + (q_at + r0 + 8 * r) * d.dh;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int col = dt * 8 + 2 * c;
      if (col < d.dh) row[col] = __float2bfloat16(acc[dt][2 * r] * scale);
      if (col + 1 < d.dh) row[col + 1] = __float2bfloat16(acc[dt][2 * r + 1] * scale);
    }
  }
}

// Query tile of the dk/dv kernel: 32 rows for head dim 128 keeps it within the registers.
template <int DH>
constexpr int mma_bq() {
  return DH > 64 ? 32 : 64;
}
template <int DH>
constexpr size_t mma_dkdv_smem() {
  constexpr int BQ = mma_bq<DH>();
  return (2 * 64 * (DH + 8) + 2 * BQ * (DH + 8) + 2 * DH * (BQ + 8)) * sizeof(bf16_t) + 2 * BQ * sizeof(float);
}

// dk, dv. grid (B * Hkv, key tiles), 128 threads, each warp owning 16 keys; the products are
// S^T = K Q^T and dP^T = V dout^T. smem: K, V, Q, dout (row-major), Q^T, dout^T, lse, D.
template <int DH>
__global__ void __launch_bounds__(128)
    mma_backward_dkdv(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                      const float* Dv, bf16_t* dk, bf16_t* dv, Dims d, float scale_log2, float scale, bool vec) {
  constexpr int BN = 64, BQ = mma_bq<DH>(), LD = DH + 8, LDT = BQ + 8, KS = DH / 16, DT = DH / 8, QT = BQ / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  bf16_t* Ks = reinterpret_cast<bf16_t*>(smem_bytes);
  bf16_t* Vs = Ks + BN * LD;
  bf16_t* Qs = Vs + BN * LD;
  bf16_t* Gs = Qs + BQ * LD;
  bf16_t* Qt = Gs + BQ * LD;
  bf16_t* Gt = Qt + DH * LDT;
  float* Ls = reinterpret_cast<float*>(Gt + DH * LDT);
  float* Ds = Ls + BQ;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, c = lane % 4;
  const int bkv = blockIdx.x, b = bkv / d.Hkv, hk = bkv % d.Hkv, n0 = blockIdx.y * BN;
  const int64_t kv_at = int64_t(bkv) * d.Tk + n0;
  mma_load<BN, DH>(Ks, LD, k + kv_at * d.dh, d.Tk - n0, d.dh, vec);
  mma_load<BN, DH>(Vs, LD, v + kv_at * d.dh, d.Tk - n0, d.dh, vec);
  const int key = n0 + w * 16 + lane / 4;  // this thread's keys: key and key + 8
  float gk[DT][4] = {}, gv[DT][4] = {};
  const int i_start = max(0, n0 - d.q_offset) / BQ * BQ;  // earlier queries see none of these keys
  for (int hh = 0; hh < d.group; ++hh) {
    const int64_t bh = int64_t(b) * d.H + hk * d.group + hh;
    for (int i0 = i_start; i0 < d.Tq; i0 += BQ) {
      const int64_t q_at = bh * d.Tq + i0;
      __syncthreads();
      mma_load<BQ, DH>(Qs, LD, q + q_at * d.dh, d.Tq - i0, d.dh, vec);
      mma_load<BQ, DH>(Gs, LD, dout + q_at * d.dh, d.Tq - i0, d.dh, vec);
      mma_load_t<BQ, DH>(Qt, LDT, q + q_at * d.dh, d.Tq - i0, d.dh, vec);
      mma_load_t<BQ, DH>(Gt, LDT, dout + q_at * d.dh, d.Tq - i0, d.dh, vec);
      if (threadIdx.x < BQ) {
        const bool in = i0 + int(threadIdx.x) < d.Tq;
        Ls[threadIdx.x] = in ? lse[q_at + threadIdx.x] * kLog2e : 0.f;
        Ds[threadIdx.x] = in ? Dv[q_at + threadIdx.x] : 0.f;
      }
      __syncthreads();
      float st[QT][4] = {}, dpt[QT][4] = {};
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t ak[4], av[4];
        frag_a(ak, Ks, LD, w * 16, ks * 16, lane);
        frag_a(av, Vs, LD, w * 16, ks * 16, lane);
#pragma unroll
        for (int nt = 0; nt < QT; ++nt) {
          uint32_t b0, b1;
          frag_b(b0, b1, Qs, LD, nt * 8, ks * 16, lane);
          mma_bf16(st[nt], ak, b0, b1);
          frag_b(b0, b1, Gs, LD, nt * 8, ks * 16, lane);
          mma_bf16(dpt[nt], av, b0, b1);
        }
      }
#pragma unroll
      for (int nt = 0; nt < QT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {  // st becomes P^T, dpt becomes dS^T
          const int ql = nt * 8 + 2 * c + (e & 1), qi = i0 + ql, kr = key + 8 * (e / 2);
          const bool ok = qi < d.Tq && kr <= d.q_offset + qi && kr < d.Tk;
          const float p = ok ? exp2f(st[nt][e] * scale_log2 - Ls[ql]) : 0.f;
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - Ds[ql]);
        }
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        uint32_t pa[4], da[4];
        c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
        c_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          uint32_t b0, b1;
          frag_b(b0, b1, Gt, LDT, dt * 8, kk * 16, lane);
          mma_bf16(gv[dt], pa, b0, b1);
          frag_b(b0, b1, Qt, LDT, dt * 8, kk * 16, lane);
          mma_bf16(gk[dt], da, b0, b1);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key + 8 * r >= d.Tk) continue;
    const int64_t at = (kv_at + w * 16 + lane / 4 + 8 * r) * d.dh;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int col = dt * 8 + 2 * c;
      if (col < d.dh) {
        dk[at + col] = __float2bfloat16(gk[dt][2 * r] * scale);
        dv[at + col] = __float2bfloat16(gv[dt][2 * r]);
      }
      if (col + 1 < d.dh) {
        dk[at + col + 1] = __float2bfloat16(gk[dt][2 * r + 1] * scale);
        dv[at + col + 1] = __float2bfloat16(gv[dt][2 * r + 1]);
      }
    }
  }
}

// ==== host side ==========================================================================

Dims dims_of(const Tensor& q, const Tensor& k, int64_t q_offset, const char* op) {
  SESSA_CHECK(q.size(3) <= 128, op, "head dim " << q.size(3) << " of " << q.str() << " is above 128, the CUDA limit");
  return {int(q.size(0)),
          int(q.size(1)),
          int(k.size(1)),
          int(q.size(2)),
          int(k.size(2)),
          int(q.size(3)),
          int(q.size(1) / k.size(1)),
          int(q_offset)};
}

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

// f(std::integral_constant<int, DH>) with the tile width DH for head dim dh: SIMT
// kernels (float32, float64), tensor-core kernels (bfloat16).
template <class F>
void with_simt_dh(int dh, F&& f) {
  if (dh <= 32)
    f(std::integral_constant<int, 32>{});
  else if (dh <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}
template <class F>
void with_mma_dh(int dh, F&& f) {
  if (dh <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

template <class Kernel>
void allow_smem(Kernel* kernel, size_t bytes, const char* op) {
  if (bytes > 48 * 1024)
    SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
}

}  // namespace

ops::AttentionOut attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t q_offset,
                            double scale) {
  const char* op = "attention";
  const Tensor q = ops::contiguous(q_in), k = ops::contiguous(k_in), v = ops::contiguous(v_in);
  const Dims d = dims_of(q, k, q_offset, op);
  const Device dev = q.device();
  return dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    ops::AttentionOut res{Tensor::empty(q.shape(), q.options()), Tensor::empty({d.B, d.H, d.Tq}, {dtype_of<A>(), dev})};
    if (int64_t(d.B) * d.H * d.Tq == 0) return res;
    const cudaStream_t st = stream(dev.index);
    if constexpr (std::is_same_v<T, bf16_t>) {
      const bool vec = d.dh % 8 == 0 && aligned16(q) && aligned16(k) && aligned16(v);
      with_mma_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        const size_t smem = mma_forward_smem<DH>();
        allow_smem(mma_forward<DH>, smem, op);
        mma_forward<DH><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 64)), 128, smem, st>>>(
            ptr<bf16_t>(q), ptr<bf16_t>(k), ptr<bf16_t>(v), ptr<bf16_t>(res.out), ptr<float>(res.lse), d,
            float(scale) * kLog2e, vec);
        SESSA_CUDA_LAUNCH_CHECK(op);
      });
    } else {
      constexpr int R = sizeof(A) == 8 ? 2 : 4;
      with_simt_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        const size_t smem = simt_forward_smem<T, DH, R>();
        allow_smem(simt_forward<T, DH, R>, smem, op);
        simt_forward<T, DH, R><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 16 * R)), 256, smem, st>>>(
            ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(res.out), ptr<A>(res.lse), d, A(scale));
        SESSA_CUDA_LAUNCH_CHECK(op);
      });
    }
    return res;
  });
}

ops::AttentionGrads attention_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                       const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in, int64_t q_offset,
                                       double scale) {
  const char* op = "attention_backward";
  const Tensor q = ops::contiguous(q_in), k = ops::contiguous(k_in), v = ops::contiguous(v_in);
  const Tensor dout = ops::contiguous(dout_in), out = ops::contiguous(out_in), lse = ops::contiguous(lse_in);
  const Dims d = dims_of(q, k, q_offset, op);
  const Device dev = q.device();
  return dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    ops::AttentionGrads g{Tensor::empty(q.shape(), q.options()), Tensor::empty(k.shape(), k.options()),
                          Tensor::empty(v.shape(), v.options())};
    const cudaStream_t st = stream(dev.index);
    const int64_t rows = int64_t(d.B) * d.H * d.Tq;
    const Tensor Dv = Tensor::empty({d.B, d.H, d.Tq}, {dtype_of<A>(), dev});
    if (rows > 0) {
      row_dot_kernel<T><<<blocks_for(rows * 32), kThreads, 0, st>>>(ptr<T>(dout), ptr<T>(out), ptr<A>(Dv), rows, d.dh);
      SESSA_CUDA_LAUNCH_CHECK(op);
    }
    const bool run_dq = rows > 0, run_dkdv = int64_t(d.B) * d.Hkv * d.Tk > 0;
    if constexpr (std::is_same_v<T, bf16_t>) {
      const bool vec = d.dh % 8 == 0 && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout);
      with_mma_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        const float sl2 = float(scale) * kLog2e;
        if (run_dq) {
          const size_t smem = mma_dq_smem<DH>();
          allow_smem(mma_backward_dq<DH>, smem, op);
          mma_backward_dq<DH><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 64)), 128, smem, st>>>(
              ptr<bf16_t>(q), ptr<bf16_t>(k), ptr<bf16_t>(v), ptr<bf16_t>(dout), ptr<float>(lse), ptr<float>(Dv),
              ptr<bf16_t>(g.dq), d, sl2, float(scale), vec);
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
        if (run_dkdv) {
          const size_t smem = mma_dkdv_smem<DH>();
          allow_smem(mma_backward_dkdv<DH>, smem, op);
          mma_backward_dkdv<DH><<<dim3(unsigned(d.B * d.Hkv), blocks_for(d.Tk, 64)), 128, smem, st>>>(
              ptr<bf16_t>(q), ptr<bf16_t>(k), ptr<bf16_t>(v), ptr<bf16_t>(dout), ptr<float>(lse), ptr<float>(Dv),
              ptr<bf16_t>(g.dk), ptr<bf16_t>(g.dv), d, sl2, float(scale), vec);
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
      });
    } else {
      constexpr int R = sizeof(A) == 8 ? 2 : 4;
      with_simt_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        if (run_dq) {
          const size_t smem = simt_dq_smem<T, DH, R>();
          allow_smem(simt_backward_dq<T, DH, R>, smem, op);
          simt_backward_dq<T, DH, R><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 16 * R)), 256, smem, st>>>(
              ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<A>(lse), ptr<A>(Dv), ptr<T>(g.dq), d, A(scale));
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
        if (run_dkdv) {
          const size_t smem = simt_dkdv_smem<T, DH, R>();
          allow_smem(simt_backward_dkdv<T, DH, R>, smem, op);
          simt_backward_dkdv<T, DH, R><<<dim3(unsigned(d.B * d.Hkv), blocks_for(d.Tk, 16 * R)), 256, smem, st>>>(
              ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<A>(lse), ptr<A>(Dv), ptr<T>(g.dk), ptr<T>(g.dv), d,
              A(scale));
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
      });
    }
    return g;
  });
}

}  // namespace sessa::cuda
