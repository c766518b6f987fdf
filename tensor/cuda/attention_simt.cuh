// float32 / float64 causal attention on CUDA cores (no tensor-core product keeps their
// precision); the math is in tensor/ops/attention.cpp, host-side dispatch in
// tensor/cuda/attention.cu, the bfloat16 tensor-core kernels in attention_wgmma*.cuh.
// 256 threads as 16 x 16, each thread owning R rows by R keys strided by 16 (R = 4 in
// float, 2 in double), head dims up to 128 zero-padded to a tile width DH. Operands are
// contiguous (B, heads, T, dh). Forward: a block per (16 R-row query tile, batch x head),
// keys in tiles with an online softmax, saving lse. Backward (after D_i = dout_i . out_i):
// two deterministic kernels that recompute P = exp(S - lse): dq (a block per query tile,
// streaming keys) and dk/dv (a block per key tile, streaming the query tiles of every
// query head of its kv group, so GQA needs no atomics).
#pragma once
#include "tensor/cuda/attention_params.cuh"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda::attn {

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

}  // namespace sessa::cuda::attn
