// The fused linear forward on CUDA: y = x W^T + b as one cuBLASLt GEMM whose epilogue adds
// the bias, so no separate bias kernel runs (tensor/cuda/linear.cpp explains the layout).
#pragma once
#include <optional>

#include "tensor/tensor.h"

namespace sessa::cuda {

// ops::linear for CUDA tensors (arguments already checked by ops::linear). Returns nothing
// when there is nothing to fuse or cuBLASLt has no fused kernel: no bias, an empty dim, or
// no algorithm for this dtype, shape and alignment. ops::linear then runs matmul + add.
std::optional<Tensor> linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

}  // namespace sessa::cuda
