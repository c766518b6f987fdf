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
// Precision: float32 in/out with float32 accumulation (TF32 tensor cores when
// allowed), bfloat16 in/out with float32 accumulation, float64 throughout.
#include "tensor/cuda/blas.h"

#include <cublas_v2.h>

#include <atomic>
#include <climits>
#include <mutex>
#include <optional>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

std::atomic<bool> g_allow_tf32{true};

constexpr int kMaxDevices = 16;
constexpr size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends on Hopper

struct BlasState {
  std::mutex mu;
  cublasHandle_t handle = nullptr;
};

// An operand as cuBLAS reads it: the last two dims (R x C) sit in memory either
// row-major (row stride ld >= C) or transposed (memory holds C x R, row stride ld >= R),
// and batch item i starts batch_stride * i elements after the first.
struct Operand {
  Tensor t;
  int64_t ld;
  bool stored_transposed;
  int64_t batch_stride;
};

std::optional<Operand> as_operand(const Tensor& x) {
  const int64_t d = x.dim(), R = x.shape()[d - 2], C = x.shape()[d - 1];
  const int64_t sr = x.strides()[d - 2], sc = x.strides()[d - 1];
  const int64_t rmax = std::max<int64_t>(R, 1), cmax = std::max<int64_t>(C, 1);
  // The batch dims (size-1 dims skipped) must step by one stride: stride, stride * n, ...
  int64_t stride = 0, span = 1;
  bool first = true;
  for (int64_t k = d - 3; k >= 0; --k) {
    const int64_t n = x.shape()[k];
    if (n == 1) continue;
    if (first)
      stride = x.strides()[k], first = false;
    else if (x.strides()[k] != stride * span)
      return std::nullopt;
    span *= n;
  }
  if (sc == 1 || C == 1) {
    const int64_t ld = R == 1 ? cmax : sr;
    if (ld >= cmax) return Operand{x, ld, false, stride};
  }
  if (sr == 1 || R == 1) {
    const int64_t ld = C == 1 ? rmax : sc;
    if (ld >= rmax) return Operand{x, ld, true, stride};
  }
  return std::nullopt;
}

Operand operand(const Tensor& x) {
  if (auto o = as_operand(x)) return *o;
  return *as_operand(ops::contiguous(x));
}

int as_int(int64_t v, const char* what) {
  SESSA_CHECK(v <= INT_MAX, "matmul", what << " = " << v << " exceeds the 32-bit range of cuBLAS");
  return int(v);
}

}  // namespace

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }
bool allow_tf32() { return g_allow_tf32; }

cublasContext* cublas_handle(int device) {
  static BlasState states[kMaxDevices];
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "cublas", "device index " << device << " out of range");
  cudaStream_t st = stream(device);  // also makes `device` current
  BlasState& s = states[device];
  std::lock_guard lock(s.mu);
  if (!s.handle) {
    // Created once per device and kept for the life of the process, with its workspace.
    void* workspace = nullptr;
    SESSA_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes), "cublas");
    SESSA_CUBLAS_CHECK(cublasCreate(&s.handle), "cublas");
    SESSA_CUBLAS_CHECK(cublasSetStream(s.handle, st), "cublas");
    SESSA_CUBLAS_CHECK(cublasSetWorkspace(s.handle, workspace, kWorkspaceBytes), "cublas");
  }
  return s.handle;
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const int64_t M = a.size(trans_a ? -1 : -2), K = a.size(trans_a ? -2 : -1), N = b.size(trans_b ? -2 : -1);
  Shape out_shape(a.shape().begin(), a.shape().end() - 2);
  const int64_t batch = numel(out_shape);
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.options());
  const int dev = a.device().index;
  if (out.numel() == 0) return out;
  if (K == 0) {  // an empty sum: zeros (all-zero bytes in every float dtype)
    SESSA_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, size_t(out.numel()) * dtype_size(out.dtype()), stream(dev)),
                     "matmul");
    return out;
  }

  // A shared 2-D weight against a batch of row-major inputs is one tall GEMM.
  Tensor a_eff = a;
  int64_t a_batch = batch, M_eff = M;
  if (b.dim() == 2 && !trans_a && batch > 1) {
    if (auto flat = ops::try_view(a, {batch * M, K})) a_eff = *flat, a_batch = 1, M_eff = batch * M;
  }
  const Operand oa = operand(a_eff), ob = operand(b);
  const cublasOperation_t op_a = (trans_a != oa.stored_transposed) ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = (trans_b != ob.stored_transposed) ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = as_int(N, "N"), n = as_int(M_eff, "rows of A"), k = as_int(K, "K");
  const int lda = as_int(oa.ld, "lda"), ldb = as_int(ob.ld, "ldb"), batches = as_int(a_batch, "batch");
  const int64_t stride_a = oa.batch_stride, stride_b = b.dim() == 2 ? 0 : ob.batch_stride, stride_c = M * N;

  cudaDataType_t type;
  cublasComputeType_t compute;
  const float alpha32 = 1.f, beta32 = 0.f;
  const double alpha64 = 1.0, beta64 = 0.0;
  const void *alpha = &alpha32, *beta = &beta32;
  switch (a.dtype()) {
    case DType::F32:
      type = CUDA_R_32F, compute = allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::BF16:
      type = CUDA_R_16BF, compute = CUBLAS_COMPUTE_32F;
      break;
    case DType::F64:
      type = CUDA_R_64F, compute = CUBLAS_COMPUTE_64F, alpha = &alpha64, beta = &beta64;
      break;
    default:
      SESSA_FAIL("matmul", "unsupported dtype " << dtype_name(a.dtype()) << " on cuda");
  }
  cublasHandle_t h = cublas_handle(dev);
  const void *pa = oa.t.raw_data(), *pb = ob.t.raw_data();
  void* pc = out.raw_data();
  if (batches == 1) {
    SESSA_CUBLAS_CHECK(cublasGemmEx(h, op_b, op_a, m, n, k, alpha, pb, type, ldb, pa, type, lda, beta, pc, type, m,
                                    compute, CUBLAS_GEMM_DEFAULT),
                       "matmul");
  } else {
    SESSA_CUBLAS_CHECK(
        cublasGemmStridedBatchedEx(h, op_b, op_a, m, n, k, alpha, pb, type, ldb, stride_b, pa, type, lda, stride_a,
                                   beta, pc, type, m, stride_c, batches, compute, CUBLAS_GEMM_DEFAULT),
        "matmul");
  }
  return out;
}

}  // namespace sessa::cuda
