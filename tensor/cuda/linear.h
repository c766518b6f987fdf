// The fused linear layer on CUDA, each a single cuBLASLt GEMM with an epilogue, so no separate
// bias or residual kernel runs: the forward y = r + x W^T + b (BIAS epilogue, r as C with
// beta = 1), and the weight and bias gradients dW = dy^T x, db = column sums of dy (BGRADB).
// tensor/cuda/linear.cpp explains the layouts.
#pragma once
#include <optional>

#include "tensor/cuda/blas.h"
#include "tensor/tensor.h"

namespace sessa::cuda {

// ops::linear for CUDA tensors (arguments already checked by ops::linear); bias and residual
// may be undefined. Returns nothing when there is nothing to fuse or cuBLASLt has no fused
// kernel: neither bias nor residual, an empty dim, or no algorithm for this dtype, shape and
// alignment. ops::linear then runs matmul + adds.
std::optional<Tensor> linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual = {});

// dy (M, N) and x (M, K), both on one device in one dtype: dweight (N, K) = dy^T x and
// dbias (N) = the sum of dy's M rows, from one GEMM. Returns nothing for an empty dim or when
// cuBLASLt has no algorithm; ops::linear_backward then runs matmul + sum.
struct WeightBiasGrads {
  Tensor dweight, dbias;
};
std::optional<WeightBiasGrads> linear_weight_bias_grad(const Tensor& dy, const Tensor& x);

// Row-major float32 C (M x N, ld N) += op(A) op(B) with bfloat16 A (M x K) and B (K x N) given
// as GEMM operands: a weight gradient summed into a float32 .grad. One cuBLASLt matmul allowed
// only the in-place split-K reduction (the splits' partial products added into C itself, no
// workspace copy of the result; cuBLASLt still follows each such GEMM with its short
// splitKreduce kernel, ~9 us for a 768 x 768 weight on an H200). False (nothing written) when the operands
// are not bfloat16 or cuBLASLt has no such algorithm; tensor/cuda/blas.cpp then calls cuBLAS.
bool matmul_add_f32(int device, int64_t M, int64_t N, int64_t K, const GemmOperand& a, const GemmOperand& b, float* c);

}  // namespace sessa::cuda
