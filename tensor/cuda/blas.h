// Matrix products on CUDA through cuBLAS: one handle per device, bound to
// cuda::stream(device) with its own workspace. Row-major C = op(A) op(B) is computed
// as the column-major product C^T = op(B)^T op(A)^T, so no operand is copied unless
// its layout has no leading dimension or its batch has no uniform stride.
#pragma once
#include "tensor/tensor.h"

struct cublasContext;  // cublasHandle_t is cublasContext*

namespace sessa::cuda {

// float32 GEMMs may use TF32 tensor cores (the default). Tests turn this off to
// compare exact float32 products.
void set_allow_tf32(bool allow);
bool allow_tf32();

// The cuBLAS handle of `device`, bound to cuda::stream(device); sets `device` current.
cublasContext* cublas_handle(int device);

// ops::matmul for CUDA tensors (arguments already checked by ops::matmul):
// op(a) @ op(b) over the last two dims; b is 2-D (shared by the batch) or has a's batch dims.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);

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
