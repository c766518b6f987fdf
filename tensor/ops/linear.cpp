// The linear layer y = r + x W^T + b over the last dim, forward and backward; the bias b and the
// residual r (a residual connection, x + proj(h) in a block) are optional. On CUDA the forward
// is one cuBLASLt GEMM, the bias added in its epilogue and r read as C with beta = 1
// (tensor/cuda/linear.cpp); the CPU, and the CUDA cases cuBLASLt cannot fuse, run matmul then
// broadcast adds. The residual's gradient is dy itself (autograd/ops_math.cpp).
//
// Backward, with x and dy flattened to rows, x (M, K), dy (M, N), W (N, K):
//   dx = dy W,  dW = dy^T x,  db = sum over the M rows of dy.
// Each may be added into a running sum in place (one GEMM with beta = 1; for dW under
// training, the parameter's own float32 .grad). dx is ops::matmul (cuBLAS on CUDA). A new dW
// with a bias on CUDA comes with db from one cuBLASLt GEMM whose BGRADB epilogue writes db;
// otherwise dW is ops::matmul (or matmul_add_) and db the column sum ops::sum (or sum_add_).
#include "tensor/cuda/linear.h"

#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

// x (..., K) as M rows against weight (N, K); y has shape (..., N).
struct Dims {
  int64_t M, K, N;
  Shape y_shape;
};

// Checks x against weight for `op`.
Dims dims(const Tensor& x, const Tensor& weight, const char* op) {
  SESSA_CHECK(x.dim() >= 1, op, "input needs at least 1 dim, got " << x.shape());
  SESSA_CHECK(weight.dim() == 2 && weight.size(1) == x.size(-1), op,
              "input " << x.shape() << " needs a weight of shape [out, " << x.size(-1) << "], got " << weight.shape());
  SESSA_CHECK(x.device() == weight.device() && x.dtype() == weight.dtype(), op,
              "input and weight differ in device or dtype: " << x.str() << " and " << weight.str());
  Shape y_shape = x.shape();
  y_shape.back() = weight.size(0);
  return {numel(Shape(x.shape().begin(), x.shape().end() - 1)), weight.size(1), weight.size(0), y_shape};
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  const Dims d = dims(x, weight, "linear");
  if (bias.defined()) {
    SESSA_CHECK(
        bias.shape() == Shape{weight.size(0)}, "linear",
        "weight " << weight.shape() << " needs a bias of shape [" << weight.size(0) << "], got " << bias.shape());
    SESSA_CHECK(bias.device() == x.device() && bias.dtype() == x.dtype(), "linear",
                "input and bias differ in device or dtype: " << x.str() << " and " << bias.str());
  }
  if (residual.defined()) {
    SESSA_CHECK(residual.shape() == d.y_shape, "linear",
                "the residual must have the output's shape " << d.y_shape << ", got " << residual.shape());
    SESSA_CHECK(residual.device() == x.device() && residual.dtype() == x.dtype(), "linear",
                "input and residual differ in device or dtype: " << x.str() << " and " << residual.str());
  }
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(if (auto y = cuda::linear(x, weight, bias, residual)) return *y);
  }
  Tensor y = reshape(matmul(reshape(x, {d.M, d.K}), weight, false, true), d.y_shape);
  if (bias.defined()) y = add(y, bias);
  return residual.defined() ? add(residual, y) : y;
}

LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                            const LinearGrads& sums) {
  const Dims d = dims(x, weight, "linear_backward");
  SESSA_CHECK(grad_y.shape() == d.y_shape, "linear_backward",
              "gradient " << grad_y.shape() << " does not match the output " << d.y_shape);
  const Tensor dy = reshape(grad_y, {d.M, d.N}), x2 = reshape(x, {d.M, d.K});
  // Whether `sum` can take a gradient of `shape` in place.
  const auto fits = [&](const Tensor& sum, const Shape& shape) {
    return sum.defined() && sum.shape() == shape && sum.device() == x.device() && sum.is_contiguous() &&
           (sum.dtype() == x.dtype() || (sum.dtype() == DType::F32 && x.dtype() == DType::BF16));
  };
  LinearGrads g;
  if (fits(sums.dx, x.shape())) {
    matmul_add_(reshape(sums.dx, {d.M, d.K}), dy, weight);
    g.dx = sums.dx;
  } else {
    g.dx = reshape(matmul(dy, weight), x.shape());
  }
  if (fits(sums.dweight, weight.shape())) {
    matmul_add_(sums.dweight, dy, x2, true, false);
    g.dweight = sums.dweight;
  } else {
    std::optional<cuda::WeightBiasGrads> fused;
    if (has_bias && x.is_cuda()) SESSA_CUDA_CALL(fused = cuda::linear_weight_bias_grad(dy, x2));
    if (fused) return {g.dx, fused->dweight, fused->dbias};
    g.dweight = matmul(dy, x2, true, false);
  }
  if (has_bias && fits(sums.dbias, Shape{d.N})) {
    sum_add_(sums.dbias, dy, {0});  // (in float32 under autocast: no bfloat16 db)
    g.dbias = sums.dbias;
  } else if (has_bias) {
    g.dbias = sum(dy, {0});
  }
  return g;
}

}  // namespace sessa::ops
