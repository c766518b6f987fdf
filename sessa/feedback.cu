// The Sessa feedback solve on CUDA (docs/sessa.md, S3-S9), on the plan of the CPU code
// in sessa/feedback.cpp. X is the input dtype and A = acc_t<X> the compute dtype (float
// for float32 and bfloat16, double for float64). alpha, ctx and every internal buffer are
// A, so bfloat16 inputs are rounded only on the way in and out; s is returned in X.
//
// Forward:
//   logits = q k^T / sqrt(D)   cuBLAS (bf16 tensor cores with float output for bf16 inputs);
//   alpha  = causal softmax    one block per row: softmax over s < t, zeros elsewhere;
//   solve, per row block [t0, t0 + 64):
//     ctx[t0:t1] = alpha[t0:t1, 0:t0] s[0:t0]   one batched cuBLAS GEMM (float32; TF32 for bf16 inputs);
//     the 64-row triangle                        one block per (batch, 32 columns of D), rows
//                                                in order, 4 threads per column (warp shuffles).
// Backward:
//   the transposed solve (S6') backwards in time, the same way: per row block, one GEMM
//     df[s0:s1] = alpha[s1:T, s0:s1]^T w[s1:T], then the triangle; w = gamma df;
//   dgamma    one warp per row: dgamma_t = df_t . ctx_t                                 (S7)
//   dlogits   cuBLAS G = df s^T, then alpha gamma (G - dgamma) in place               (S8')
//   dq, dk    cuBLAS dl k and dl^T q in float32 or TF32 (see use_tf32)                  (S9)
#include <cmath>
#include <type_traits>

#include "sessa/feedback_cuda.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

// ---- products through cuBLAS (cuda::gemm) ------------------------------------------------
// Every product writes its result in the compute dtype A (float or double). Operands may be
// bfloat16 (tensor cores, float accumulation) or A. Float operands run in exact float32
// unless use_tf32 says otherwise: the solve's products and dq, dk use TF32 tensor cores for
// bfloat16 inputs (10 mantissa bits, more than the inputs carry) and, as every float32
// matmul, for float32 inputs while TF32 is allowed. G = df s^T is always exact, because
// dlogits subtracts two close numbers (S8').

// Whether the float products of the solve and of dq, dk use TF32 for inputs of dtype X:
// always for bfloat16, for float32 when TF32 is allowed (cuda::allow_tf32, the default).
template <class X>
bool use_tf32() {
  if constexpr (std::is_same_v<X, bf16_t>)
    return true;
  else if constexpr (std::is_same_v<X, float>)
    return allow_tf32();
  else
    return false;
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
template <class A>
__global__ void __launch_bounds__(256) causal_softmax_kernel(A* alpha, int T) {
  const int64_t row = blockIdx.x;
  const int t = int(row % T);
  A* r = alpha + row * T;
  A mx = A(-INFINITY);
  for (int s = threadIdx.x; s < t; s += blockDim.x) mx = max(mx, r[s]);
  mx = block_max(mx);
  A sum = 0;
  for (int s = threadIdx.x; s < t; s += blockDim.x) sum += math::exp(r[s] - mx);
  sum = block_sum(sum);
  const A inv = t > 0 ? A(1) / sum : A(0);
  for (int s = threadIdx.x; s < T; s += blockDim.x) r[s] = s < t ? math::exp(r[s] - mx) * inv : A(0);
}

// ---- the two triangular solves --------------------------------------------------------
// Blocked as on the CPU, one row block of 64 per step: the host first adds everything the
// other blocks contribute with one batched cuBLAS GEMM (see use_tf32 for its precision), then a kernel with
// one block of kSolveThreads per (32 columns, batch) solves the 64-row triangle. Shared
// memory (in A elements): the diagonal alpha block Ad (64 x 65), the contribution of the
// other blocks Cs and the right-hand side Fs (64 x 33 each), the solved rows Ss (64 x 40:
// the 4 threads of a column read 4 distinct banks), gamma Gs.
constexpr int kRows = 64, kCols = 32, kSolveThreads = 128;
constexpr int kAd = 0, kCs = kAd + kRows * 65, kFs = kCs + kRows * 33, kSs = kFs + kRows * 33, kGs = kSs + kRows * 40,
              kSolveSmem = kGs + kRows;

// Loads the diagonal block alpha[r0:r0+nb, r0:r0+nb], the other blocks' contribution
// (rows of `carry`, or zero), the right-hand side rows and gamma.
template <class A, class X>
__device__ void load_block(A* sm, const A* alpha, const A* carry, bool has_carry, const X* rhs, const X* gamma, int r0,
                           int nb, int T, int D, int c0, int ncols) {
  for (int e = threadIdx.x; e < kRows * kRows; e += kSolveThreads) {
    const int r = e / kRows, j = e % kRows;
    sm[kAd + r * 65 + j] = r < nb && j < nb ? alpha[int64_t(r0 + r) * T + r0 + j] : A(0);
  }
  for (int e = threadIdx.x; e < kRows * kCols; e += kSolveThreads) {
    const int r = e / kCols, c = e % kCols;
    const bool in = r < nb && c < ncols;
    const int64_t o = int64_t(r0 + r) * D + c0 + c;
    sm[kFs + r * 33 + c] = in ? load(rhs + o) : A(0);
    sm[kCs + r * 33 + c] = in && has_carry ? carry[o] : A(0);
  }
  if (threadIdx.x < kRows) sm[kGs + threadIdx.x] = int(threadIdx.x) < nb ? load(gamma + r0 + threadIdx.x) : A(0);
}

// (S5) for rows [t0, t0 + nb): s_t = f_t + gamma_t ctx_t, where ctx already holds the
// earlier blocks' part of ctx_t = sum_{j<t} alpha[t, j] s_j. Writes ctx and s (A), and
// s_out (X) when X is not A.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_forward_block(const acc_t<X>* alpha, const X* gamma, const X* f, acc_t<X>* ctx, acc_t<X>* s, X* s_out, int T,
                        int D, int t0) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), nb = min(kRows, T - t0);
  const int64_t bd = int64_t(b) * T * D;
  alpha += int64_t(b) * T * T, gamma += int64_t(b) * T, f += bd, ctx += bd, s += bd, s_out += bd;
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;  // column col, terms j = part mod 4
  load_block(sm, alpha, ctx, t0 > 0, f, gamma, t0, nb, T, D, c0, ncols);
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
}

// (S6') for rows [s0, s1): df_j = ds_j + sum_{t>j} alpha[t, j] w_t with w_t = gamma_t df_t,
// where df already holds the later blocks' part of the sum. Writes df and w (A), and
// df_out (X) when X is not A.
template <class X>
__global__ void __launch_bounds__(kSolveThreads)
    solve_backward_block(const acc_t<X>* alpha, const X* gamma, const X* ds, acc_t<X>* df, X* df_out, acc_t<X>* w,
                         int T, int D, int s0, int s1) {
  using A = acc_t<X>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  A* sm = reinterpret_cast<A*>(smem_bytes);
  const int b = blockIdx.y, c0 = blockIdx.x * kCols, ncols = min(kCols, D - c0), nb = s1 - s0;
  const int64_t bd = int64_t(b) * T * D;
  alpha += int64_t(b) * T * T, gamma += int64_t(b) * T, ds += bd, df += bd, df_out += bd, w += bd;
  const int col = threadIdx.x / 4, part = threadIdx.x % 4;
  load_block(sm, alpha, df, s1 < T, ds, gamma, s0, nb, T, D, c0, ncols);
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
}

// (S7): dgamma_t = df_t . ctx_t, one warp per row; dg (A) and dg_out (X, when X is not A).
template <class X>
__global__ void __launch_bounds__(256)
    dgamma_kernel(const acc_t<X>* df, const acc_t<X>* ctx, acc_t<X>* dg, X* dg_out, int64_t rows, int D) {
  using A = acc_t<X>;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= rows) return;  // whole warps leave together
  const A sum = warp_dot(df + row * D, ctx + row * D, D);
  if (threadIdx.x % 32 == 0) {
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
    const DType adt = dtype_of<A>();
    const TensorOptions acc_opt{adt, dev};
    ops::FeedbackOut out{Tensor::empty({B, T, D}, q.options()), Tensor::empty({B, T, T}, acc_opt),
                         Tensor::empty({B, T, D}, acc_opt)};
    if (B == 0 || T == 0) return out;
    const Tensor s_acc = std::is_same_v<X, A> ? out.s : Tensor::empty({B, T, D}, acc_opt);
    const cudaStream_t st = stream(dev.index);
    A* alpha = ptr<A>(out.alpha);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    const int64_t TD = int64_t(T) * D, TT = int64_t(T) * T;
    gemm(dev.index, B, T, T, D, scale, {q.raw_data(), q.dtype(), D, TD}, {k.raw_data(), k.dtype(), D, TD, true}, alpha,
         adt, T, TT, false, "feedback_solve");  // logits; the softmax masks s >= t
    causal_softmax_kernel<A><<<unsigned(int64_t(B) * T), 256, 0, st>>>(alpha, T);
    SESSA_CUDA_LAUNCH_CHECK("feedback_solve");
    if (D > 0) {
      const size_t smem = kSolveSmem * sizeof(A);
      SESSA_CUDA_CHECK(
          cudaFuncSetAttribute(solve_forward_block<X>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "feedback_solve");
      const dim3 grid(blocks_for(D, kCols), unsigned(B));
      A *ctx = ptr<A>(out.ctx), *s = ptr<A>(s_acc);
      for (int t0 = 0; t0 < T; t0 += kRows) {
        const int nb = std::min(kRows, T - t0);
        if (t0 > 0)  // ctx[t0:t0+nb] = alpha[t0:t0+nb, 0:t0] s[0:t0]
          gemm(dev.index, B, nb, D, t0, 1.0, {alpha + int64_t(t0) * T, adt, T, TT}, {s, adt, D, TD},
               ctx + int64_t(t0) * D, adt, D, TD, use_tf32<X>(), "feedback_solve");
        solve_forward_block<X>
            <<<grid, kSolveThreads, smem, st>>>(alpha, ptr<X>(gamma), ptr<X>(f), ctx, s, ptr<X>(out.s), T, D, t0);
        SESSA_CUDA_LAUNCH_CHECK("feedback_solve");
      }
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
    SESSA_CHECK(
        saved.alpha.dtype() == adt && saved.ctx.dtype() == adt && saved.s.dtype() == q.dtype() &&
            saved.alpha.shape() == Shape({B, T, T}) && saved.ctx.shape() == q.shape() && saved.s.shape() == q.shape() &&
            saved.alpha.device() == dev && saved.ctx.device() == dev && saved.s.device() == dev,
        op,
        "saved tensors do not come from feedback_solve on " << q.str() << ": alpha " << saved.alpha.str() << ", ctx "
                                                            << saved.ctx.str() << ", s " << saved.s.str());
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
    const int64_t TD = int64_t(T) * D, TT = int64_t(T) * T;
    if (D > 0) {
      const size_t smem = kSolveSmem * sizeof(A);
      SESSA_CUDA_CHECK(
          cudaFuncSetAttribute(solve_backward_block<X>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
      const dim3 grid(blocks_for(D, kCols), unsigned(B));
      A *pdf = ptr<A>(df), *pw = ptr<A>(w);
      for (int s1 = T; s1 > 0; s1 -= kRows) {
        const int s0 = std::max(0, s1 - kRows), nb = s1 - s0;
        if (s1 < T)  // df[s0:s1] = alpha[s1:T, s0:s1]^T w[s1:T]
          gemm(dev.index, B, nb, D, T - s1, 1.0, {pa + int64_t(s1) * T + s0, adt, T, TT, true},
               {pw + int64_t(s1) * D, adt, D, TD}, pdf + int64_t(s0) * D, adt, D, TD, use_tf32<X>(), op);
        solve_backward_block<X>
            <<<grid, kSolveThreads, smem, st>>>(pa, ptr<X>(gamma), ptr<X>(ds), pdf, ptr<X>(g.df), pw, T, D, s0, s1);
        SESSA_CUDA_LAUNCH_CHECK(op);
      }
    }
    const int64_t rows = int64_t(B) * T;
    dgamma_kernel<X>
        <<<blocks_for(rows * 32), kThreads, 0, st>>>(ptr<A>(df), ptr<A>(ctx), ptr<A>(dg), ptr<X>(g.dgamma), rows, D);
    SESSA_CUDA_LAUNCH_CHECK(op);
    // Operands in the compute dtype: G exact; dq, dk as use_tf32 says.
    const Tensor s_a = ops::cast(s, adt), k_a = ops::cast(k, adt), q_a = ops::cast(q, adt);
    gemm(dev.index, B, T, T, D, 1.0, {df.raw_data(), adt, D, TD}, {s_a.raw_data(), adt, D, TD, true}, dl.raw_data(),
         adt, T, TT, false, op);
    dlogits_kernel<X><<<blocks_for(int64_t(B) * TT), kThreads, 0, st>>>(ptr<A>(dl), pa, ptr<X>(gamma), ptr<A>(dg), T,
                                                                        int64_t(B) * TT);
    SESSA_CUDA_LAUNCH_CHECK(op);
    const A scale = D > 0 ? A(1.0 / std::sqrt(double(D))) : A(0);
    const Tensor dq = same ? g.dq : Tensor::empty(q.shape(), acc_opt),
                 dk = same ? g.dk : Tensor::empty(k.shape(), acc_opt);
    gemm(dev.index, B, T, D, T, scale, {dl.raw_data(), adt, T, TT}, {k_a.raw_data(), adt, D, TD}, dq.raw_data(), adt, D,
         TD, use_tf32<X>(), op);
    gemm(dev.index, B, T, D, T, scale, {dl.raw_data(), adt, T, TT, true}, {q_a.raw_data(), adt, D, TD}, dk.raw_data(),
         adt, D, TD, use_tf32<X>(), op);
    if constexpr (!same) ops::copy_(g.dq, dq), ops::copy_(g.dk, dk);
    return g;
  });
}

}  // namespace sessa::cuda
