// ops::linear on CUDA: y = x W^T + b as one cuBLASLt matmul with CUBLASLT_EPILOGUE_BIAS.
//
// Layout (the mapping of tensor/cuda/blas.cpp): the row-major memory of an R x C matrix is,
// to column-major cuBLASLt, the C x R transpose. With x flattened to rows (M x K), W (N x K)
// and y (M x N):
//   D = y^T (N x M, ld N) = op(A) op(B) with
//   A = W's memory, column-major W^T (K x N), op = transpose  -> W   (N x K),
//   B = x's memory, column-major x^T (K x M), op = none       -> x^T (K x M).
// D's rows are the output features, so the bias (length N) is a per-row bias of D, which is
// exactly what the BIAS epilogue adds (broadcast over D's M columns, in the compute type,
// before D is rounded to its dtype).
//
// Precision: bfloat16 in/out (bias bfloat16) with float32 compute; float32 with TF32 tensor
// cores when cuda::allow_tf32(), exact float32 otherwise; float64 throughout.
//
// One cuBLASLt handle and workspace per device; every matmul runs on cuda::stream(device).
// The algorithm for a PlanKey is chosen once with cublasLtMatmulAlgoGetHeuristic and cached
// with its descriptors. A key for which the heuristic offers no algorithm (a dtype or an
// alignment without a fused kernel) is cached as such, and ops::linear runs matmul + add.
#include "tensor/cuda/linear.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "tensor/cuda/blas.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kMaxDevices = 16;
constexpr size_t kWorkspaceBytes = 32u << 20;  // as for the cuBLAS handles (tensor/cuda/blas.cpp)

// Owning cuBLASLt descriptors, each released by its own cublasLt*Destroy.
template <auto Destroy>
struct Destroyer {
  template <class T>
  void operator()(T* p) const {
    Destroy(p);
  }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, Destroyer<&cublasLtMatmulDescDestroy>>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, Destroyer<&cublasLtMatrixLayoutDestroy>>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, Destroyer<&cublasLtMatmulPreferenceDestroy>>;

// Everything the choice of algorithm depends on. Alignments are those of the buffers'
// addresses (capped at the 256 bytes the heuristic assumes by default): a view at an odd
// offset gets a plan of its own, restricted to kernels that can read it.
struct PlanKey {
  DType dtype;
  bool tf32;
  int64_t M, N, K, ldx, ldw;
  uint32_t align_x, align_w, align_y, align_b;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  MatmulDesc desc;
  Layout w, x, y;                            // A, B, and C = D
  std::optional<cublasLtMatmulAlgo_t> algo;  // none: no fused kernel for this key
};

struct LtState {
  std::mutex mu;  // guards the plans and the bias pointer set in a plan's descriptor
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;
};

struct LtTypes {
  cudaDataType_t data, scale;
  cublasComputeType_t compute;
};

std::optional<LtTypes> lt_types(DType t, bool tf32) {
  switch (t) {
    case DType::F32:
      return LtTypes{CUDA_R_32F, CUDA_R_32F, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
    case DType::BF16:
      return LtTypes{CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case DType::F64:
      return LtTypes{CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F};
    default:
      return std::nullopt;
  }
}

// The largest power of two dividing the address, at most 256.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return uint32_t(std::min<uintptr_t>(a & (~a + 1), 256));
}

// t as rows of `cols` elements with unit column stride and row stride ld >= cols, which is
// how cuBLASLt reads an operand; copied only when its layout has no such view.
struct Rows {
  Tensor t;
  int64_t ld;
};
Rows as_rows(const Tensor& t, int64_t cols) {
  const Tensor v = ops::reshape(t, {-1, cols});
  const int64_t ld = v.size(0) == 1 ? cols : v.strides()[0];
  if ((v.strides()[1] == 1 || cols == 1) && ld >= cols) return {v, ld};
  return {ops::contiguous(v), cols};
}

template <class T>
void set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& value) {
  SESSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)), "linear");
}
template <class T>
void set(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
  SESSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof(value)), "linear");
}

Layout layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t l = nullptr;
  SESSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), ld), "linear");
  return Layout(l);
}

// Descriptors for k and the heuristic's first choice (the bias pointer is part of what the
// heuristic reads: it derives the bias alignment from it).
Plan make_plan(cublasLtHandle_t handle, const PlanKey& k, const LtTypes& t, const void* bias) {
  Plan p;
  cublasLtMatmulDesc_t desc = nullptr;
  SESSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, t.compute, t.scale), "linear");
  p.desc.reset(desc);
  set(desc, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(CUBLAS_OP_T));
  set(desc, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(CUBLAS_OP_N));
  set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t(CUBLASLT_EPILOGUE_BIAS));
  set(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(t.data));
  set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  p.w = layout(t.data, k.K, k.N, k.ldw);
  p.x = layout(t.data, k.K, k.M, k.ldx);
  p.y = layout(t.data, k.N, k.M, k.N);

  cublasLtMatmulPreference_t pref_raw = nullptr;
  SESSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_raw), "linear");
  const Preference pref(pref_raw);  // what the heuristic may choose from
  set(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.align_w);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.align_x);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.align_y);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.align_y);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, desc, p.w.get(), p.x.get(), p.y.get(), p.y.get(),
                                                           pref.get(), 1, &result, &found);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS)
    p.algo = result.algo;
  else if (st != CUBLAS_STATUS_NOT_SUPPORTED)
    SESSA_FAIL("linear", "cublasLtMatmulAlgoGetHeuristic failed: " << cublasGetStatusString(st) << " for M=" << k.M
                                                                   << " N=" << k.N << " K=" << k.K);
  return p;
}

// The state of `device`; its users hold its mutex.
LtState& lt_state(int device) {
  static LtState states[kMaxDevices];
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "linear", "device index " << device << " out of range");
  return states[device];
}

}  // namespace

std::optional<Tensor> linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t K = weight.size(1), N = weight.size(0), M = numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const auto types = lt_types(x.dtype(), allow_tf32());
  if (!bias.defined() || !types || M == 0 || N == 0 || K == 0) return std::nullopt;

  const Rows xr = as_rows(x, K), wr = as_rows(weight, K);
  const Tensor b = ops::contiguous(bias);
  Shape y_shape = x.shape();
  y_shape.back() = N;
  Tensor y = Tensor::empty(y_shape, x.options());
  const PlanKey key{.dtype = x.dtype(),
                    .tf32 = types->compute == CUBLAS_COMPUTE_32F_FAST_TF32,
                    .M = M,
                    .N = N,
                    .K = K,
                    .ldx = xr.ld,
                    .ldw = wr.ld,
                    .align_x = alignment(xr.t.raw_data()),
                    .align_w = alignment(wr.t.raw_data()),
                    .align_y = alignment(y.raw_data()),
                    .align_b = alignment(b.raw_data())};

  const int dev = x.device().index;
  cudaStream_t st = stream(dev);  // also makes `dev` current
  LtState& s = lt_state(dev);
  std::lock_guard lock(s.mu);
  if (!s.handle) {  // created once per device and kept for the life of the process
    SESSA_CUDA_CHECK(cudaMalloc(&s.workspace, kWorkspaceBytes), "linear");
    SESSA_CUBLAS_CHECK(cublasLtCreate(&s.handle), "linear");
  }
  auto it = s.plans.find(key);
  if (it == s.plans.end()) it = s.plans.emplace(key, make_plan(s.handle, key, *types, b.raw_data())).first;
  const Plan& p = it->second;
  if (!p.algo) return std::nullopt;

  set(p.desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, b.raw_data());
  const float one32 = 1.f, zero32 = 0.f;
  const double one64 = 1.0, zero64 = 0.0;
  const bool f64 = x.dtype() == DType::F64;
  const void* one = f64 ? static_cast<const void*>(&one64) : &one32;
  const void* zero = f64 ? static_cast<const void*>(&zero64) : &zero32;
  SESSA_CUBLAS_CHECK(
      cublasLtMatmul(s.handle, p.desc.get(), one, wr.t.raw_data(), p.w.get(), xr.t.raw_data(), p.x.get(), zero,
                     y.raw_data(), p.y.get(), y.raw_data(), p.y.get(), &*p.algo, s.workspace, kWorkspaceBytes, st),
      "linear");
  return y;
}

}  // namespace sessa::cuda
