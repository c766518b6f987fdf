// ops::linear on CUDA as single cuBLASLt matmuls with fused epilogues:
//   forward   y = r + x W^T + b   the BIAS epilogue adds b, beta = 1 adds the residual r (C = r);
//   backward  dW = dy^T x, db = sum of dy's rows   one GEMM whose BGRADB epilogue writes db.
//
// Layout (the mapping of tensor/cuda/blas.cpp): the row-major memory of an R x C matrix is,
// to column-major cuBLASLt, the C x R transpose. With x flattened to rows (M x K), W (N x K)
// and y, dy (M x N):
//   forward:  D = y^T (N x M, ld N) = op(A) op(B) + beta C with
//     A = W's memory, column-major W^T (K x N), op = transpose  -> W   (N x K),
//     B = x's memory, column-major x^T (K x M), op = none       -> x^T (K x M),
//     C = r's memory, column-major r^T (N x M) like D; beta = 1 with a residual, else 0 (C = D).
//   D's rows are the output features, so the bias (length N) is a per-row bias of D, which is
//   exactly what the BIAS epilogue adds (broadcast over D's M columns, in the compute type,
//   before D is rounded to its dtype).
//   weight gradient:  D = dW^T (K x N, ld K) = op(A) op(B) with
//     A = x's memory,  column-major x^T (K x M),  op = none      -> x^T (K x M),
//     B = dy's memory, column-major dy^T (N x M), op = transpose -> dy  (M x N).
//   The GEMM's k is M (the rows), and db (length N) is the sum of op(B) = dy over k for each of
//   D's N columns: exactly BGRADB ("bias size = columns of D, reduction over k"). BGRADA would
//   reduce A over k, giving a length-K vector: the wrong operand here.
//
// Precision: bfloat16 in/out (bias, residual and bias gradient bfloat16) with float32 compute
// (r + x W^T + b and db are formed in float32, then rounded once); float32 with TF32 tensor
// cores when cuda::allow_tf32(), exact float32 otherwise; float64 throughout.
//
// One cuBLASLt handle and workspace per device; every matmul runs on cuda::stream(device).
// The algorithm for a PlanKey is chosen once with cublasLtMatmulAlgoGetHeuristic and cached
// with its descriptors. A key for which the heuristic offers no algorithm (a dtype, epilogue
// or alignment without a fused kernel) is cached as such, and the caller (tensor/ops/linear.cpp)
// runs the unfused ops instead.
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

// One column-major cuBLASLt call D (m x n, ld m) = op(A) op(B) with an epilogue: everything
// the choice of algorithm depends on. Callers state the call (epilogue through ldb);
// lt_matmul fills in the rest from the types and buffers. Alignments are those of the
// buffers' addresses (capped at the 256 bytes the heuristic assumes by default): a view at an
// odd offset gets a plan of its own, restricted to kernels that can read it.
struct PlanKey {
  uint32_t epilogue;  // a cublasLtEpilogue_t: DEFAULT, BIAS or BGRADB
  DType dtype;        // of A and B (and of C, D unless f32_out)
  bool tf32 = false, trans_a = false, trans_b = false;
  bool f32_out = false;  // C and D float32 (bfloat16 A, B): split-K only in place (matmul_add_f32)
  bool add_c = false;    // D = op(A) op(B) + C (beta = 1), C laid out as D
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0;
  uint32_t align_a = 0, align_b = 0, align_c = 0, align_d = 0, align_bias = 0;
  auto operator<=>(const PlanKey&) const = default;
};

// The buffers of one call: `c`, when given, is added as C (beta = 1); `bias` is read (BIAS),
// written (BGRADB) or null (DEFAULT).
struct Operands {
  const void *a, *b, *c;
  void *d, *bias;
};

struct Plan {
  MatmulDesc desc;
  Layout a, b, d;                            // C is laid out as D
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
  set(desc, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(k.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N));
  set(desc, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, k.epilogue);
  if (k.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    set(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(t.data));
    set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  p.a = k.trans_a ? layout(t.data, k.k, k.m, k.lda) : layout(t.data, k.m, k.k, k.lda);
  p.b = k.trans_b ? layout(t.data, k.n, k.k, k.ldb) : layout(t.data, k.k, k.n, k.ldb);
  p.d = layout(k.f32_out ? CUDA_R_32F : t.data, k.m, k.n, k.m);

  cublasLtMatmulPreference_t pref_raw = nullptr;
  SESSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_raw), "linear");
  const Preference pref(pref_raw);  // what the heuristic may choose from
  set(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.align_a);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.align_b);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.add_c ? k.align_c : k.align_d);
  set(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.align_d);
  // Split-K partial products added straight into D (counters in the workspace) instead of
  // into a workspace copy of the result (cuBLASLt still runs its short splitKreduce after).
  if (k.f32_out)
    set(pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, uint32_t(CUBLASLT_REDUCTION_SCHEME_INPLACE));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, desc, p.a.get(), p.b.get(), p.d.get(), p.d.get(),
                                                           pref.get(), 1, &result, &found);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS)
    p.algo = result.algo;
  else if (st != CUBLAS_STATUS_NOT_SUPPORTED)
    SESSA_FAIL("linear", "cublasLtMatmulAlgoGetHeuristic failed: " << cublasGetStatusString(st) << " for m=" << k.m
                                                                   << " n=" << k.n << " k=" << k.k
                                                                   << " epilogue=" << k.epilogue);
  return p;
}

// The state of `device`; its users hold its mutex.
LtState& lt_state(int device) {
  static LtState states[kMaxDevices];
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "linear", "device index " << device << " out of range");
  return states[device];
}

// Runs the call `call` describes (epilogue, dtype, transposes, sizes and leading dims) on the
// buffers `o`, on `device`'s stream; the rest of its plan key follows from them: TF32 from
// `types`, add_c from whether `o.c` is given, the alignments from the addresses. False
// (nothing written) when cuBLASLt has no algorithm for it.
bool lt_matmul(int device, const PlanKey& call, const LtTypes& types, const Operands& o) {
  PlanKey key = call;
  key.tf32 = types.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  key.add_c = o.c != nullptr;
  key.align_a = alignment(o.a), key.align_b = alignment(o.b), key.align_c = alignment(o.c);
  key.align_d = alignment(o.d), key.align_bias = alignment(o.bias);  // alignment(nullptr) is 0
  cudaStream_t st = stream(device);                                  // also makes `device` current
  LtState& s = lt_state(device);
  std::lock_guard lock(s.mu);
  if (!s.handle) {  // created once per device and kept for the life of the process
    SESSA_CUDA_CHECK(cudaMalloc(&s.workspace, kWorkspaceBytes), "linear");
    SESSA_CUBLAS_CHECK(cublasLtCreate(&s.handle), "linear");
  }
  auto it = s.plans.find(key);
  if (it == s.plans.end()) it = s.plans.emplace(key, make_plan(s.handle, key, types, o.bias)).first;
  const Plan& p = it->second;
  if (!p.algo) return false;

  if (key.epilogue != CUBLASLT_EPILOGUE_DEFAULT) set(p.desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, o.bias);
  const float one32 = 1.f, zero32 = 0.f;
  const double one64 = 1.0, zero64 = 0.0;
  const bool f64 = key.dtype == DType::F64;  // (the scale type: float32 for float32 and bfloat16)
  const void* one = f64 ? static_cast<const void*>(&one64) : &one32;
  const void* zero = f64 ? static_cast<const void*>(&zero64) : &zero32;
  const void* beta = key.add_c ? one : zero;
  const void* c = key.add_c ? o.c : o.d;
  SESSA_CUBLAS_CHECK(cublasLtMatmul(s.handle, p.desc.get(), one, o.a, p.a.get(), o.b, p.b.get(), beta, c, p.d.get(),
                                    o.d, p.d.get(), &*p.algo, s.workspace, kWorkspaceBytes, st),
                     "linear");
  return true;
}

}  // namespace

std::optional<Tensor> linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  const int64_t K = weight.size(1), N = weight.size(0), M = numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const auto types = lt_types(x.dtype(), allow_tf32());
  if ((!bias.defined() && !residual.defined()) || !types || M == 0 || N == 0 || K == 0) return std::nullopt;

  const Rows xr = as_rows(x, K), wr = as_rows(weight, K);
  const Tensor b = bias.defined() ? ops::contiguous(bias) : Tensor{};
  const Tensor r = residual.defined() ? ops::contiguous(residual) : Tensor{};  // C is laid out as D
  Shape y_shape = x.shape();
  y_shape.back() = N;
  Tensor y = Tensor::empty(y_shape, x.options());
  const void* r_data = r.defined() ? r.raw_data() : nullptr;
  void* b_data = b.defined() ? b.raw_data() : nullptr;
  const PlanKey call{.epilogue = b.defined() ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT,
                     .dtype = x.dtype(),
                     .trans_a = true,
                     .m = N,
                     .n = M,
                     .k = K,
                     .lda = wr.ld,
                     .ldb = xr.ld};
  const Operands o{.a = wr.t.raw_data(), .b = xr.t.raw_data(), .c = r_data, .d = y.raw_data(), .bias = b_data};
  if (!lt_matmul(x.device().index, call, *types, o)) return std::nullopt;
  return y;
}

std::optional<WeightBiasGrads> linear_weight_bias_grad(const Tensor& dy, const Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), N = dy.size(1);
  const auto types = lt_types(x.dtype(), allow_tf32());
  if (!types || dy.dtype() != x.dtype() || M == 0 || N == 0 || K == 0) return std::nullopt;

  const Rows xr = as_rows(x, K), dyr = as_rows(dy, N);
  WeightBiasGrads g{Tensor::empty({N, K}, x.options()), Tensor::empty({N}, x.options())};
  const PlanKey call{.epilogue = CUBLASLT_EPILOGUE_BGRADB,
                     .dtype = x.dtype(),
                     .trans_b = true,
                     .m = K,
                     .n = N,
                     .k = M,
                     .lda = xr.ld,
                     .ldb = dyr.ld};
  const Operands o{
      .a = xr.t.raw_data(), .b = dyr.t.raw_data(), .c = nullptr, .d = g.dweight.raw_data(), .bias = g.dbias.raw_data()};
  if (!lt_matmul(x.device().index, call, *types, o)) return std::nullopt;
  return g;
}

bool matmul_add_f32(int device, int64_t M, int64_t N, int64_t K, const GemmOperand& a, const GemmOperand& b, float* c) {
  if (a.dtype != DType::BF16 || b.dtype != DType::BF16 || M == 0 || N == 0 || K == 0) return false;
  // Row-major C (M x N) is column-major C^T (N x M) = op(B)^T op(A)^T: B's memory first.
  const PlanKey call{.epilogue = CUBLASLT_EPILOGUE_DEFAULT,
                     .dtype = DType::BF16,
                     .trans_a = b.trans,
                     .trans_b = a.trans,
                     .f32_out = true,
                     .m = N,
                     .n = M,
                     .k = K,
                     .lda = b.ld,
                     .ldb = a.ld};
  const Operands o{.a = b.data, .b = a.data, .c = c, .d = c, .bias = nullptr};
  return lt_matmul(device, call, *lt_types(DType::BF16, false), o);
}

}  // namespace sessa::cuda
