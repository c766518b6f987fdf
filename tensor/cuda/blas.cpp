// cuBLAS handles and ops::matmul on CUDA.
//
// A row-major R x C matrix with row stride ld is, to column-major cuBLAS, the C x R
// matrix X^T with leading dimension ld. So the row-major product C = op(A) op(B)
// (M x N) is the column-major product C^T = op(B)^T op(A)^T (N x M, ldc = N): B's
// memory is cuBLAS's first operand and A's the second. An operand whose memory holds
// the transpose (a transposed view) flips its cuBLAS transpose flag instead of being
// copied. A batch runs as one strided-batched GEMM when each operand's batch dims
// collapse to a single stride (0 for a shared 2-D weight); a batch of row-major inputs
// against a shared weight is one tall GEMM. Anything else is made contiguous first.
//
// Precision of ops::matmul: float32 in/out with float32 accumulation (TF32 tensor cores
// when allowed), bfloat16 in/out with float32 accumulation, float64 throughout. gemm
// serves other callers too (sessa/feedback.cu): mixed operand and output dtypes, any alpha.
#include "tensor/cuda/blas.h"

#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>
#include <optional>

#include "tensor/cuda/check.h"
#include "tensor/cuda/linear.h"
#include "tensor/cuda/runtime.h"
#include "tensor/gemm_view.h"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

std::atomic<bool> g_allow_tf32{true};

constexpr int kMaxDevices = 16;
constexpr size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends on Hopper

struct BlasState {
  std::mutex mu;
  cublasHandle_t handle[2] = {};  // by Lane
};

// An operand as cuBLAS reads it: the last two dims as a GemmView (tensor/gemm_view.h),
// batch item i starting batch_stride * i elements after the first.
struct Operand {
  GemmView view;
  int64_t batch_stride;
};

std::optional<Operand> as_operand(const Tensor& x) {
  // The batch dims (size-1 dims skipped) must step by one stride: stride, stride * n, ...
  int64_t stride = 0, span = 1;
  bool first = true;
  for (int64_t k = x.dim() - 3; k >= 0; --k) {
    const int64_t n = x.shape()[k];
    if (n == 1) continue;
    if (first)
      stride = x.strides()[k], first = false;
    else if (x.strides()[k] != stride * span)
      return std::nullopt;
    span *= n;
  }
  if (auto v = gemm_view(x)) return Operand{*v, stride};
  return std::nullopt;
}

Operand operand(const Tensor& x) {
  if (auto o = as_operand(x)) return *o;
  return *as_operand(ops::contiguous(x));
}

int as_int(int64_t v, const char* what, const char* op) {
  SESSA_CHECK(v <= INT_MAX, op, what << " = " << v << " exceeds the 32-bit range of cuBLAS");
  return int(v);
}

cudaDataType_t cuda_type(DType t, const char* op) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F64:
      return CUDA_R_64F;
    default:
      SESSA_FAIL(op, "unsupported dtype " << dtype_name(t) << " on cuda (float32, bfloat16 or float64 expected)");
  }
}

}  // namespace

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }
bool allow_tf32() { return g_allow_tf32; }

cublasContext* cublas_handle(int device, Lane lane) {
  static BlasState states[kMaxDevices];
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "cublas", "device index " << device << " out of range");
  cudaStream_t st = stream(device, lane);  // also makes `device` current
  BlasState& s = states[device];
  std::lock_guard lock(s.mu);
  cublasHandle_t& handle = s.handle[lane == Lane::main ? 0 : 1];
  if (!handle) {
    // Created once per device and lane and kept for the life of the process, with its workspace
    // (the lanes' GEMMs may run at the same time).
    void* workspace = nullptr;
    SESSA_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes), "cublas");
    SESSA_CUBLAS_CHECK(cublasCreate(&handle), "cublas");
    SESSA_CUBLAS_CHECK(cublasSetStream(handle, st), "cublas");
    SESSA_CUBLAS_CHECK(cublasSetWorkspace(handle, workspace, kWorkspaceBytes), "cublas");
  }
  return handle;
}

void gemm(int device, int64_t batch, int64_t M, int64_t N, int64_t K, double alpha, const GemmOperand& a,
          const GemmOperand& b, void* c, DType c_dtype, int64_t ldc, int64_t c_batch_stride, bool tf32, const char* op,
          bool accumulate, Lane lane) {
  const bool f64 = c_dtype == DType::F64, f32_operands = a.dtype == DType::F32 && b.dtype == DType::F32;
  const cublasComputeType_t compute = f64                    ? CUBLAS_COMPUTE_64F
                                      : tf32 && f32_operands ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                             : CUBLAS_COMPUTE_32F;
  const float alpha32 = float(alpha), beta32 = accumulate ? 1.f : 0.f;
  const double alpha64 = alpha, beta64 = accumulate ? 1.0 : 0.0;
  const void* pa = f64 ? static_cast<const void*>(&alpha64) : &alpha32;
  const void* pb = f64 ? static_cast<const void*>(&beta64) : &beta32;
  // Column-major: C^T (N x M) = op(B)^T (N x K) op(A)^T (K x M), B first.
  const int m = as_int(N, "N", op), n = as_int(M, "M", op), k = as_int(K, "K", op);
  const int lda = as_int(a.ld, "lda", op), ldb = as_int(b.ld, "ldb", op), ldc32 = as_int(ldc, "ldc", op);
  const int batches = as_int(batch, "batch", op);
  const cublasOperation_t op_a = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t ta = cuda_type(a.dtype, op), tb = cuda_type(b.dtype, op), tc = cuda_type(c_dtype, op);
  cublasHandle_t h = cublas_handle(device, lane);
  if (batches == 1) {
    SESSA_CUBLAS_CHECK(cublasGemmEx(h, op_b, op_a, m, n, k, pa, b.data, tb, ldb, a.data, ta, lda, pb, c, tc, ldc32,
                                    compute, CUBLAS_GEMM_DEFAULT),
                       op);
  } else {
    SESSA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, op_b, op_a, m, n, k, pa, b.data, tb, ldb, b.batch_stride, a.data,
                                                  ta, lda, a.batch_stride, pb, c, tc, ldc32, c_batch_stride, batches,
                                                  compute, CUBLAS_GEMM_DEFAULT),
                       op);
  }
}

void matmul_into(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate) {
  const int64_t M = a.size(trans_a ? -1 : -2), K = a.size(trans_a ? -2 : -1), N = b.size(trans_b ? -2 : -1);
  const int64_t batch = out.numel() / std::max<int64_t>(M * N, 1);
  const int dev = a.device().index;
  if (out.numel() == 0) return;
  if (K == 0) {  // an empty sum: zeros (all-zero bytes in every float dtype), or nothing to add
    if (!accumulate)
      SESSA_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, size_t(out.numel()) * dtype_size(out.dtype()), stream(dev)),
                       "matmul");
    return;
  }

  // A shared 2-D weight against a batch of row-major inputs is one tall GEMM.
  Tensor a_eff = a;
  int64_t a_batch = batch, M_eff = M;
  if (b.dim() == 2 && !trans_a && batch > 1) {
    if (auto flat = ops::try_view(a, {batch * M, K})) a_eff = *flat, a_batch = 1, M_eff = batch * M;
  }
  const Operand oa = operand(a_eff), ob = operand(b);
  const GemmOperand ga{oa.view.t.raw_data(), a.dtype(), oa.view.ld, oa.batch_stride,
                       trans_a != oa.view.stored_transposed};
  const GemmOperand gb{ob.view.t.raw_data(), b.dtype(), ob.view.ld, b.dim() == 2 ? 0 : ob.batch_stride,
                       trans_b != ob.view.stored_transposed};
  if (K == 1 && a_batch == 1) {  // a rank-1 product: bandwidth, not a GEMM's tiles
    outer_into(dev, M_eff, N, ga, gb, out.raw_data(), out.dtype(), accumulate);
    return;
  }
  // A bfloat16 product summed into float32 (a weight gradient into its .grad): cuBLASLt with
  // the split-K sums added in place (tensor/cuda/linear.h).
  if (accumulate && a_batch == 1 && out.dtype() == DType::F32 &&
      matmul_add_f32(dev, M_eff, N, K, ga, gb, static_cast<float*>(out.raw_data())))
    return;
  gemm(dev, a_batch, M_eff, N, K, 1.0, ga, gb, out.raw_data(), out.dtype(), N, M * N,
       a.dtype() == DType::F32 && allow_tf32(), "matmul", accumulate);
}

}  // namespace sessa::cuda
