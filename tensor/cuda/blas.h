// Matrix products on CUDA through cuBLAS: one handle per device and lane (lane.h), bound
// to that lane's stream with its own workspace. Row-major C = op(A) op(B) is computed
// as the column-major product C^T = op(B)^T op(A)^T (in gemm, the only place), so no
// operand is copied unless its layout has no leading dimension or its batch has no
// uniform stride.
#pragma once
#include "tensor/cuda/lane.h"
#include "tensor/tensor.h"

struct cublasContext;  // cublasHandle_t is cublasContext*

namespace sessa::cuda {

// float32 GEMMs may use TF32 tensor cores (the default). Tests turn this off to
// compare exact float32 products.
void set_allow_tf32(bool allow);
bool allow_tf32();

// The cuBLAS handle of `device` and `lane`, bound to cuda::stream(device, lane); sets `device` current.
cublasContext* cublas_handle(int device, Lane lane = Lane::main);

// ops::matmul and ops::matmul_add_ for CUDA tensors (arguments already checked by ops):
// out (=, or += when accumulate) op(a) @ op(b) over the last two dims; b is 2-D (shared by
// the batch) or has a's batch dims; out is contiguous with the product's shape.
void matmul_into(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate);

// One operand of gemm: `batch` row-major matrices in device memory, with row stride ld
// and batch item i starting batch_stride * i elements after `data` (0: one matrix shared
// by the batch); `trans` uses each matrix transposed. dtype float32, bfloat16 or float64.
struct GemmOperand {
  const void* data;
  DType dtype;
  int64_t ld;
  int64_t batch_stride = 0;
  bool trans = false;
};

// The one place that calls cuBLAS GEMMs (ops::matmul and the Sessa feedback solve use it):
// row-major C = alpha op(A) op(B), M x N with inner dim K, for `batch` items, on
// cuda::stream(device, lane). C (c_dtype, row stride ldc, batch stride c_batch_stride) is
// overwritten, or accumulated into (C = alpha op(A) op(B) + C) when `accumulate`. Accumulation is float64 when C is
// float64, else float32, on TF32 tensor cores when `tf32` (float32 operands). One item is a plain GEMM, more a
// strided-batched one. Every size must fit cuBLAS's 32-bit ints (a sessa::Error names `op`).
void gemm(int device, int64_t batch, int64_t M, int64_t N, int64_t K, double alpha, const GemmOperand& a,
          const GemmOperand& b, void* c, DType c_dtype, int64_t ldc, int64_t c_batch_stride, bool tf32, const char* op,
          bool accumulate = false, Lane lane = Lane::main);

// Row-major C (M x N, contiguous) = op(A) op(B), or += when `accumulate`, for an inner dim of
// 1 (A is M x 1, B is 1 x N): a rank-1 product, run as an elementwise kernel (outer.cu)
// instead of a GEMM. c_dtype is the operands' dtype, or float32 for bfloat16 operands.
void outer_into(int device, int64_t M, int64_t N, const GemmOperand& a, const GemmOperand& b, void* c, DType c_dtype,
                bool accumulate);

}  // namespace sessa::cuda

// Checks a cuBLAS call (include <cublas_v2.h> where it is used): a failure throws a
// sessa::Error naming the op, the call, the file and the line.
#define SESSA_CUBLAS_CHECK(call, op)                                                                                 \
  do {                                                                                                               \
    cublasStatus_t sessa_st_ = (call);                                                                               \
    if (sessa_st_ != CUBLAS_STATUS_SUCCESS)                                                                          \
      SESSA_FAIL(op,                                                                                                 \
                 #call << " failed: " << cublasGetStatusString(sessa_st_) << " at " << __FILE__ << ":" << __LINE__); \
  } while (0)
