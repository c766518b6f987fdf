// The Sessa feedback solve on CUDA (docs/sessa.md, S3-S9), on the plan of the CPU code
// in sessa/feedback.cpp. X is the input dtype and A = acc_t<X> the compute dtype (float
// for float32 and bfloat16, double for float64). alpha, ctx and every internal buffer are
// A, so bfloat16 inputs are rounded only on the way in and out; s is returned in X.
//
// Forward, three launches:
//   logits = q k^T / sqrt(D)   cuBLAS (bf16 tensor cores with float output for bf16 inputs);
//   alpha  = causal softmax    one block per row: softmax over s < t, zeros elsewhere;
//   solve                      one block per (batch, 32 columns of D). The columns of
//                              (I - diag(gamma) alpha) s = f are independent, so a block runs
//                              the whole blocked forward substitution alone: for each row
//                              block [t0, t0 + 64), a 64 x 32 GEMM tile
//                              ctx = alpha[t0:t1, 0:t0] s[0:t0], then the 64-row triangle
//                              with 4 threads per column (warp shuffles, no block barrier).
// Backward, six launches:
//   solve_t   the transposed solve (S6') backwards in time, same layout: df, w = gamma df;
//   dgamma    one warp per row: dgamma_t = df_t . ctx_t                                 (S7)
//   dlogits   cuBLAS G = df s^T, then alpha gamma (G - dgamma) in place               (S8')
//   dq, dk    cuBLAS dl k and dl^T q in exact float32                                  (S9)
#include <cmath>
#include <type_traits>

#include <cublas_v2.h>

#include "sessa/feedback_cuda.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return ::exp(x); }

// ---- SIMT GEMM building blocks --------------------------------------------------------
// A block computes a 64 x RB tile (RB = 64 or 32) with 16 * RB / 4 threads, each owning
// 4 consecutive rows by 4 consecutive columns; operands are staged kBK deep in shared
// memory, depth-major, so a thread reads its 4 + 4 values as two 16-byte loads.
constexpr int kBK = 32;

__device__ __forceinline__ void load4(const float* p, float (&r)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double (&r)[4]) {
  const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
  r[0] = a.x, r[1] = a.y, r[2] = b.x, r[3] = b.y;
}

// Stages rows [mn0, mn0 + R) x depth [k0, k0 + kBK) of an operand as s[k * (R + 4) + mn],
// zero where mn >= mn_end or k >= k_end. The operand's element (mn, k) is p[mn * ld + k]
// when ContigK, else p[k * ld + mn]; either way a warp reads whole 32-byte sectors and
// writes 32 distinct banks.
template <int R, int NT, bool ContigK, class A, class T>
__device__ __forceinline__ void stage(A* s, const T* p, int64_t ld, int mn0, int mn_end, int k0, int k_end) {
  for (int e = threadIdx.x; e < R * kBK; e += NT) {
    int mn, k;
    if constexpr (ContigK) {  // a warp covers 4 rows x 8 consecutive k
      const int lane = e % 32, w = e / 32;
      k = w % 4 * 8 + lane % 8;
      mn = w / 4 * 4 + lane / 8;
    } else {
      mn = e % R;
      k = e / R;
    }
    const int gm = mn0 + mn, gk = k0 + k;
    A v = A(0);
    if (gm < mn_end && gk < k_end) v = load(p + (ContigK ? int64_t(gm) * ld + gk : int64_t(gk) * ld + gm));
    s[k * (R + 4) + mn] = v;
  }
}

// acc[i][j] += sum_k As[k][4 ty + i] * Bs[k][4 tx + j] over one staged step.
template <int RA, int RB, class A>
__device__ __forceinline__ void micro(const A* As, const A* Bs, int ty, int tx, A (&acc)[4][4]) {
#pragma unroll 8
  for (int k = 0; k < kBK; ++k) {
    A a[4], b[4];
    load4(As + k * (RA + 4) + ty * 4, a);
    load4(Bs + k * (RB + 4) + tx * 4, b);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

// ---- products through cuBLAS -------------------------------------------------------------
// Row-major, batched C = alpha op(A) op(B) with C in the compute dtype A (float or double):
// the column-major product C^T = op(B)^T op(A)^T. Operands may be bfloat16 (tensor cores,
// float accumulation) or the compute dtype (exact: CUBLAS_COMPUTE_32F, no TF32, because
// dlogits subtracts two close numbers, (S8')).
template <class T> constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else return CUDA_R_16BF;
}

template <class A, class TA, class TB>
void blas_gemm(int device, int batch, bool ta, bool tb, int M, int N, int K, A alpha, const TA* a, int64_t lda,
               int64_t a_batch, const TB* b, int64_t ldb, int64_t b_batch, A* c, const char* op) {
  const A beta = 0;
  const cublasComputeType_t compute = std::is_same_v<A, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  SESSA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(device), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, b, cuda_type<TB>(),
                                                int(ldb), b_batch, a, cuda_type<TA>(), int(lda), a_batch, &beta, c,
                                                cuda_type<A>(), N, int64_t(M) * N, batch, compute, CUBLAS_GEMM_DEFAULT),
                     op);
}

// (S8') in place over G = df s^T: dl[t, s] = alpha[t, s] gamma_t (G[t, s] - dgamma_t) for s < t, else 0.
template <class X>
__global__ void dlogits_kernel(acc_t<X>* g, const acc_t<X>* alpha, const X* gamma, const acc_t<X>* dgamma, int T,
                               int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t row = i / T;
  const int t = int(row % T), s = int(i % T);
  g[i] = s < t ? alpha[i] * load(gamma + row) * (g[i] - dgamma[row]) : acc_t<X>(0);
}

// ---- probabilities (S3) -------------------------------------------------------------
// Row t of alpha (one block per (batch, t)): softmax of the logits over s < t, zero for s >= t.
template <class A> __global__ void __launch_bounds__(256) causal_softmax_kernel(A* alpha, int T) {
  const int64_t row = blockIdx.x;
  const int t = int(row % T);
  A* r = alpha + row * T;
  A mx = A(-INFINITY);
  for (int s = threadIdx.x; s < t; s += blockDim.x) mx = max(mx, r[s]);
  mx = block_max(mx);
  A sum = 0;
  for (int s = threadIdx.x; s < t; s += blockDim.x) sum += ex(r[s] - mx);
  sum = block_sum(sum);
  const A inv = t > 0 ? A(1) / sum : A(0);
  for (int s = threadIdx.x; s < T; s += blockDim.x) r[s] = s < t ? ex(r[s] - mx) * inv : A(0);
}

// ---- the two triangular solves --------------------------------------------------------
// One block of kSolveThreads per (32 columns, batch). Shared memory (in A elements):
// GEMM staging As, Bs; the diagonal alpha block Ad (64 x 65), what earlier (later) blocks
// contribute Cs, the right-hand side Fs (64 x 33), the solved rows Ss (64 x 40: the 4
// threads of a column read 4 distinct banks), gamma Gs.
constexpr int kRows = 64, kCols = 32, kSolveThreads = 128;
constexpr int kAs = 0, kBs = kAs + kBK * 68, kAd = kBs + kBK * 36, kCs = kAd + kRows * 65, kFs = kCs + kRows * 33,
              kSs = kFs + kRows * 33, kGs = kSs + kRows * 40, kSolveSmem = kGs + kRows;

// Loads the diagonal block alpha[r0:r0+nb, r0:r0+nb], the right-hand side rows and gamma.
template <class A, class X>
__device__ void load_block(A* sm, const A* alpha, const X* rhs, const X* gamma, int r0, int nb, int T, int D, int c0,
                           int ncols) {
  for (int e = threadIdx.x; e < kRows * kRows; e += kSolveThreads) {
    const int r = e / kRows, j = e % kRows;
    sm[kAd + r * 65 + j] = r < nb && j < nb ? alpha[int64_t(r0 + r) * T + r0 + j] : A(0);
  }
  for (int e = threadIdx.x; e < kRows * kCols; e += kSolveThreads) {
    const int r = e / kCols, c = e % kCols;
    sm[kFs + r * 33 + c] = r < nb && c < ncols ? load(rhs + int64_t(r0 + r) * D + c0 + c) : A(0);
  }
  if (threadIdx.x < kRows) sm[kGs + threadIdx.x] = int(threadIdx.x) < nb ? load(gamma + r0 + threadIdx.x) : A(0);
}

// (S5): s_t = f_t + gamma_t ctx_t, ctx_t = sum_{j<t} alpha[t, j] s_j. Writes ctx and s (A), and
// s_out (X) when X is not A. The block's earlier rows of s are re-read from global memory.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_forward_kernel(const acc_t<X>* alpha, const X* gamma, const X* f, acc_t<X>* ctx, acc_t<X>* s, X* s_out,
                         int T, int D) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0);
  const int64_t bd = int64_t(b) * T * D;
  alpha += int64_t(b) * T * T, gamma += int64_t(b) * T, f += bd, ctx += bd, s += bd, s_out += bd;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;     // GEMM: rows 4 ty.., columns 4 tx..
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;  // triangle: column col, terms j = part mod 4
  for (int t0 = 0; t0 < T; t0 += kRows) {
    const int nb = min(kRows, T - t0);
    A acc[4][4] = {};
    for (int k0 = 0; k0 < t0; k0 += kBK) {  // ctx[t0:t1] = alpha[t0:t1, 0:t0] s[0:t0]
      stage<kRows, kSolveThreads, true>(sm + kAs, alpha + int64_t(t0) * T, T, 0, nb, k0, t0);
      stage<kCols, kSolveThreads, false>(sm + kBs, s + c0, D, 0, ncols, k0, t0);
      __syncthreads();
      micro<kRows, kCols>(sm + kAs, sm + kBs, ty, tx, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sm[kCs + (ty * 4 + i) * 33 + tx * 4 + j] = acc[i][j];
    load_block(sm, alpha, f, gamma, t0, nb, T, D, c0, ncols);
    __syncthreads();
    for (int r = 0; r < nb; ++r) {  // the triangle, row by row
      A p = 0;
      for (int j = part; j < r; j += 4) p += sm[kAd + r * 65 + j] * sm[kSs + j * 40 + col];
      p += __shfl_xor_sync(0xffffffffu, p, 1);
      p += __shfl_xor_sync(0xffffffffu, p, 2);
      if (part == 0) {
        const A c = sm[kCs + r * 33 + col] + p, v = sm[kFs + r * 33 + col] + sm[kGs + r] * c;
        sm[kSs + r * 40 + col] = v;
        if (col < ncols) {
          const int64_t o = int64_t(t0 + r) * D + c0 + col;
          ctx[o] = c, s[o] = v;
          if constexpr (!std::is_same_v<X, A>) store(s_out + o, v);
        }
      }
      __syncwarp();
    }
    __syncthreads();
  }
}

// (S6'): df_j = ds_j + sum_{t>j} alpha[t, j] w_t with w_t = gamma_t df_t, backwards in time.
// Writes df and w (A), and df_out (X) when X is not A.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_backward_kernel(const acc_t<X>* alpha, const X* gamma, const X* ds, acc_t<X>* df, X* df_out, acc_t<X>* w,
                          int T, int D) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0);
  const int64_t bd = int64_t(b) * T * D;
  alpha += int64_t(b) * T * T, gamma += int64_t(b) * T, ds += bd, df += bd, df_out += bd, w += bd;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;
  for (int s1 = T; s1 > 0; s1 -= kRows) {
    const int s0 = max(0, s1 - kRows), nb = s1 - s0;
    A acc[4][4] = {};
    for (int k0 = s1; k0 < T; k0 += kBK) {  // df[s0:s1] gets alpha[s1:T, s0:s1]^T w[s1:T]
      stage<kRows, kSolveThreads, false>(sm + kAs, alpha + s0, T, 0, nb, k0, T);
      stage<kCols, kSolveThreads, false>(sm + kBs, w + c0, D, 0, ncols, k0, T);
      __syncthreads();
      micro<kRows, kCols>(sm + kAs, sm + kBs, ty, tx, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sm[kCs + (ty * 4 + i) * 33 + tx * 4 + j] = acc[i][j];
    load_block(sm, alpha, ds, gamma, s0, nb, T, D, c0, ncols);
    __syncthreads();
    for (int r = nb - 1; r >= 0; --r) {  // the triangle, from the last row up
      A p = 0;
      for (int t = r + 1 + part; t < nb; t += 4) p += sm[kAd + t * 65 + r] * sm[kSs + t * 40 + col];
      p += __shfl_xor_sync(0xffffffffu, p, 1);
      p += __shfl_xor_sync(0xffffffffu, p, 2);
      if (part == 0) {
        const A g = sm[kFs + r * 33 + col] + sm[kCs + r * 33 + col] + p, wv = sm[kGs + r] * g;
        sm[kSs + r * 40 + col] = wv;
        if (col < ncols) {
          const int64_t o = int64_t(s0 + r) * D + c0 + col;
          df[o] = g, w[o] = wv;
          if constexpr (!std::is_same_v<X, A>) store(df_out + o, g);
        }
      }
      __syncwarp();
    }
    __syncthreads();
  }
}

// (S7): dgamma_t = df_t . ctx_t, one warp per row; dg (A) and dg_out (X, when X is not A).
template <class X>
__global__ void __launch_bounds__(256)
    dgamma_kernel(const acc_t<X>* df, const acc_t<X>* ctx, acc_t<X>* dg, X* dg_out, int64_t rows, int D) {
  using A = acc_t<X>;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  A sum = 0;
  for (int i = lane; i < D; i += 32) sum += df[row * D + i] * ctx[row * D + i];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) {
    dg[row] = sum;
    if constexpr (!std::is_same_v<X, A>) store(dg_out + row, sum);
  }
}

}  // namespace

ops::FeedbackOut feedback_solve(const Tensor& q_in, const Tensor& k_in, const Tensor& gamma_in, const Tensor& f_in) {
  const Tensor q = ops::contiguous(q_in), k = ops::contiguous(k_in), gamma = ops::contiguous(gamma_in),
               f = ops::contiguous(f_in);
  const int B = int(q.size(0)), T = int(q.size(1)), D = int(q.size(2));
  const Device dev = q.device();
  return dispatch_float(q.dtype(), "feedback_solve", [&](auto tag) {
    using X = decltype(tag);
    using A = acc_t<X>;
    const TensorOptions acc_opt{dtype_of<A>(), dev};
    ops::FeedbackOut out{Tensor::empty({B, T, D}, q.options()), Tensor::empty({B, T, T}, acc_opt),
                         Tensor::empty({B, T, D}, acc_opt)};
    if (B == 0 || T == 0) return out;
    const Tensor s_acc = std::is_same_v<X, A> ? out.s : Tensor::empty({B, T, D}, acc_opt);
    const cudaStream_t st = stream(dev.index);
    A* alpha = ptr<A>(out.alpha);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    blas_gemm<A>(dev.index, B, false, true, T, T, D, scale, ptr<X>(q), D, int64_t(T) * D, ptr<X>(k), D,
                 int64_t(T) * D, alpha, "feedback_solve");  // logits; the softmax masks s >= t
    causal_softmax_kernel<A><<<unsigned(int64_t(B) * T), 256, 0, st>>>(alpha, T);
    SESSA_CUDA_LAUNCH_CHECK("feedback_solve");
    if (D > 0) {
      const size_t smem = kSolveSmem * sizeof(A);
      SESSA_CUDA_CHECK(cudaFuncSetAttribute(solve_forward_kernel<X>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(smem)),
                       "feedback_solve");
      solve_forward_kernel<X><<<dim3(unsigned((D + kCols - 1) / kCols), unsigned(B)), kSolveThreads, smem, st>>>(
          alpha, ptr<X>(gamma), ptr<X>(f), ptr<A>(out.ctx), ptr<A>(s_acc), ptr<X>(out.s), T, D);
      SESSA_CUDA_LAUNCH_CHECK("feedback_solve");
    }
    return out;
  });
}

ops::FeedbackGrads feedback_solve_backward(const Tensor& ds_in, const Tensor& q_in, const Tensor& k_in,
                                           const Tensor& gamma_in, const ops::FeedbackOut& saved) {
  const char* op = "feedback_solve_backward";
  const Tensor ds = ops::contiguous(ds_in), q = ops::contiguous(q_in), k = ops::contiguous(k_in),
               gamma = ops::contiguous(gamma_in);
  const int B = int(q.size(0)), T = int(q.size(1)), D = int(q.size(2));
  const Device dev = q.device();
  return dispatch_float(q.dtype(), op, [&](auto tag) {
    using X = decltype(tag);
    using A = acc_t<X>;
    const DType adt = dtype_of<A>();
    SESSA_CHECK(saved.alpha.dtype() == adt && saved.ctx.dtype() == adt && saved.s.dtype() == q.dtype() &&
                    saved.alpha.shape() == Shape({B, T, T}) && saved.ctx.shape() == q.shape() &&
                    saved.s.shape() == q.shape() && saved.alpha.device() == dev && saved.ctx.device() == dev &&
                    saved.s.device() == dev,
                op, "saved tensors do not come from feedback_solve on " << q.str() << ": alpha " << saved.alpha.str()
                                                                        << ", ctx " << saved.ctx.str() << ", s "
                                                                        << saved.s.str());
    const Tensor alpha = ops::contiguous(saved.alpha), ctx = ops::contiguous(saved.ctx), s = ops::contiguous(saved.s);
    ops::FeedbackGrads g{Tensor::empty(q.shape(), q.options()), Tensor::empty(k.shape(), k.options()),
                         Tensor::empty(gamma.shape(), gamma.options()), Tensor::empty(ds.shape(), ds.options())};
    if (B == 0 || T == 0) return g;
    const TensorOptions acc_opt{adt, dev};
    constexpr bool same = std::is_same_v<X, A>;
    const Tensor df = same ? g.df : Tensor::empty({B, T, D}, acc_opt), w = Tensor::empty({B, T, D}, acc_opt);
    const Tensor dg = same ? g.dgamma : Tensor::empty({B, T}, acc_opt), dl = Tensor::empty({B, T, T}, acc_opt);
    const cudaStream_t st = stream(dev.index);
    const A* pa = ptr<A>(alpha);
    if (D > 0) {
      const size_t smem = kSolveSmem * sizeof(A);
      SESSA_CUDA_CHECK(cudaFuncSetAttribute(solve_backward_kernel<X>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(smem)),
                       op);
      solve_backward_kernel<X><<<dim3(unsigned((D + kCols - 1) / kCols), unsigned(B)), kSolveThreads, smem, st>>>(
          pa, ptr<X>(gamma), ptr<X>(ds), ptr<A>(df), ptr<X>(g.df), ptr<A>(w), T, D);
      SESSA_CUDA_LAUNCH_CHECK(op);
    }
    const int64_t rows = int64_t(B) * T;
    dgamma_kernel<X><<<blocks_for(rows * 32), kThreads, 0, st>>>(ptr<A>(df), ptr<A>(ctx), ptr<A>(dg), ptr<X>(g.dgamma),
                                                                 rows, D);
    SESSA_CUDA_LAUNCH_CHECK(op);
    const int64_t TD = int64_t(T) * D, TT = int64_t(T) * T;
    // Operands in the compute dtype, so the products below are exact float32 (or double).
    const Tensor s_a = ops::cast(s, adt), k_a = ops::cast(k, adt), q_a = ops::cast(q, adt);
    blas_gemm<A>(dev.index, B, false, true, T, T, D, A(1), ptr<A>(df), D, TD, ptr<A>(s_a), D, TD, ptr<A>(dl), op);
    dlogits_kernel<X><<<blocks_for(int64_t(B) * TT), kThreads, 0, st>>>(ptr<A>(dl), pa, ptr<X>(gamma), ptr<A>(dg), T,
                                                                       int64_t(B) * TT);
    SESSA_CUDA_LAUNCH_CHECK(op);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    const Tensor dq = same ? g.dq : Tensor::empty(q.shape(), acc_opt), dk = same ? g.dk : Tensor::empty(k.shape(), acc_opt);
    blas_gemm<A>(dev.index, B, false, false, T, D, T, scale, ptr<A>(dl), T, TT, ptr<A>(k_a), D, TD, ptr<A>(dq), op);
    blas_gemm<A>(dev.index, B, true, false, T, D, T, scale, ptr<A>(dl), T, TT, ptr<A>(q_a), D, TD, ptr<A>(dk), op);
    if constexpr (!same) ops::copy_(g.dq, dq), ops::copy_(g.dk, dk);
    return g;
  });
}

}  // namespace sessa::cuda
