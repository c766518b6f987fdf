// The Sessa feedback solve's row kernels over alpha panels (docs/sessa.md, S3, S7, S8'):
// the causal softmax of a row panel of logits (forward), alpha rebuilt from the logits and
// the saved lse (backward), dlogits from G = df s^T, and dgamma_t = df_t . ctx_t. Device
// code only, included by sessa/feedback.cu, which owns the panels and launches these kernels
// (its opening comment has the whole plan). A is the compute dtype (float or double), X the
// input dtype.
#pragma once
#include <cmath>
#include <type_traits>

#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

// The alpha blocks the kernels read, in a panel buffer: element (t, s) of batch item b at
// p[b * batch_stride + (t - row0) * ld + (s - col0)].
template <class A>
struct AlphaView {
  const A* p;
  int64_t batch_stride;
  int ld, row0, col0;
  __device__ const A* ptr(int64_t b, int t, int s) const {
    return p + b * batch_stride + int64_t(t - row0) * ld + (s - col0);
  }
  __device__ A at(int64_t b, int t, int s) const { return *ptr(b, t, s); }
};

// ---- the alpha panels' row kernels (S3, S8') ---------------------------------------------
// One thread block per (panel row, batch item); each thread takes packs of V = kPackOf<A>
// consecutive columns (16-byte accesses: every panel row starts 16-byte aligned, its stride
// a multiple of 4 elements), element by element only in a row's last, partial pack. Row t
// keeps the columns s < t (the causal mask); the others are written as zeros, not read.

// Threads for a row kernel over `width` columns: a pack each, a multiple of 32 from 32 to 256.
template <class A>
int row_threads(int width) {
  return std::clamp((width / kPackOf<A> + 31) / 32 * 32, 32, 256);
}

// The pack of row columns [j, j + V): loaded whole when all lie below `live`, element by
// element (`fill` from `live` on) when only some do.
template <int V, class A>
__device__ __forceinline__ Pack<A, V> load_live(const A* row, int j, int live, A fill) {
  if (j + V <= live) return load_pack<V>(row, j);
  Pack<A, V> p;
#pragma unroll
  for (int e = 0; e < V; ++e) p.v[e] = j + e < live ? row[j + e] : fill;
  return p;
}
// Stores v at row columns [j, j + V), as one pack when all lie below `width`.
template <int V, class X>
__device__ __forceinline__ void store_within(X* row, int j, int width, const acc_t<X> (&v)[V]) {
  if (j + V <= width) {
    Pack<X, V> p;
#pragma unroll
    for (int e = 0; e < V; ++e) store(&p.v[e], v[e]);
    store_pack(row, j, p);
    return;
  }
  for (int e = 0; e < V && j + e < width; ++e) store(row + j + e, v[e]);
}

// Row r = blockIdx.x of a row panel (B, P, ld) holding the logits of rows [p0, p1), columns
// [0, p1), batch item blockIdx.y. Row t = p0 + r becomes the softmax over s < t (zero for
// t <= s < p1), and lse_t = log sum_{s<t} exp(logit[t, s]) (0 for row 0) is saved for the
// backward. Two passes over the row: each thread's running max m and sum of exp(x - m)
// (rescaled when m grows: the online softmax), combined over the block; then the output.
template <class A>
__global__ void __launch_bounds__(256) panel_softmax_kernel(A* panel, A* lse, int T, int P, int ld, int p0, int p1) {
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y;
  const int t = p0 + int(blockIdx.x);
  A* r = panel + (b * P + blockIdx.x) * int64_t(ld);
  A m = A(-INFINITY), sum = 0;
  for (int j = threadIdx.x * V; j < t; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(r, j, t, A(-INFINITY));
    A mx = x.v[0];
#pragma unroll
    for (int e = 1; e < V; ++e) mx = max(mx, x.v[e]);
    if (mx > m) sum *= math::exp(m - mx), m = mx;
#pragma unroll
    for (int e = 0; e < V; ++e) sum += math::exp(x.v[e] - m);
  }
  const A row_max = block_max(m);
  sum = block_sum(m == A(-INFINITY) ? A(0) : sum * math::exp(m - row_max));
  const A inv = t > 0 ? A(1) / sum : A(0);
  for (int j = threadIdx.x * V; j < p1; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(r, j, t, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < t ? math::exp(x.v[e] - row_max) * inv : A(0);
    store_within(r, j, p1, y);
  }
  if (threadIdx.x == 0) lse[b * T + t] = t > 0 ? row_max + math::log(sum) : A(0);
}

// Row t = c0 + blockIdx.x of a column panel (B, T, ld) (row t - c0 for t in [c0, T), column
// j for s = c0 + j in [c0, c0 + cw)), batch item blockIdx.y, holds the logits: it becomes
// alpha[t, s] = exp(logit - lse_t) for s < t, else 0, in place.
template <class A>
__global__ void __launch_bounds__(256) rebuild_alpha_kernel(A* panel, const A* lse, int T, int c0, int cw, int ld) {
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y;
  const int live = min(cw, int(blockIdx.x));  // columns j < live are s < t
  A* row = panel + (b * T + blockIdx.x) * int64_t(ld);
  const A l = lse[b * T + c0 + blockIdx.x];
  for (int j = threadIdx.x * V; j < cw; j += blockDim.x * V) {
    const Pack<A, V> x = load_live<V>(row, j, live, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < live ? math::exp(x.v[e] - l) : A(0);
    store_within(row, j, cw, y);
  }
}

// (S8') from G = df s^T, on the same rows: dl[t, s] = alpha[t, s] gamma_t (G[t, s] - dgamma_t)
// for s < t, else 0, in the input dtype X (dl may be g itself when X is A).
template <class X>
__global__ void __launch_bounds__(256) dlogits_kernel(const acc_t<X>* g, X* dl, const acc_t<X>* alpha, const X* gamma,
                                                      const acc_t<X>* dgamma, int T, int c0, int cw, int ld) {
  using A = acc_t<X>;
  constexpr int V = kPackOf<A>;
  const int64_t b = blockIdx.y, row = b * T + c0 + blockIdx.x, off = (b * T + blockIdx.x) * int64_t(ld);
  const int live = min(cw, int(blockIdx.x));
  const A gm = load(gamma + row), dg = dgamma[row];
  for (int j = threadIdx.x * V; j < cw; j += blockDim.x * V) {
    const Pack<A, V> pg = load_live<V>(g + off, j, live, A(0)), pa = load_live<V>(alpha + off, j, live, A(0));
    A y[V];
#pragma unroll
    for (int e = 0; e < V; ++e) y[e] = j + e < live ? pa.v[e] * gm * (pg.v[e] - dg) : A(0);
    store_within(dl + off, j, cw, y);
  }
}

// (S7) for rows [c0, c0 + cw) of each batch item: dgamma_t = df_t . ctx_t, one warp per row;
// dg (A) and dg_out (X, when X is not A).
template <class X>
__global__ void __launch_bounds__(256) dgamma_kernel(const acc_t<X>* df, const acc_t<X>* ctx, acc_t<X>* dg, X* dg_out,
                                                     int64_t B, int T, int D, int c0, int cw) {
  using A = acc_t<X>;
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (i >= B * cw) return;  // whole warps leave together
  const int64_t row = (i / cw) * T + c0 + i % cw;
  const A sum = warp_dot(df + row * D, ctx + row * D, D);
  if (threadIdx.x % 32 == 0) {
    dg[row] = sum;
    if constexpr (!std::is_same_v<X, A>) store(dg_out + row, sum);
  }
}

}  // namespace

}  // namespace sessa::cuda
