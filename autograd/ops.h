// Differentiable tensor ops: each computes with tensor/ops and, when an input
// requires grad, records a node whose backward is written beside it in
// autograd/ops_*.cpp. This is the API models are written in.
#pragma once
#include <vector>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sessa {

// ---- elementwise (NumPy broadcasting) ----------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor affine(const Tensor& x, double alpha, double beta);  // alpha * x + beta
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator*(const Tensor& a, double s) { return affine(a, s, 0.0); }
inline Tensor operator*(double s, const Tensor& a) { return affine(a, s, 0.0); }
inline Tensor operator+(const Tensor& a, double s) { return affine(a, 1.0, s); }
inline Tensor operator-(const Tensor& a) { return affine(a, -1.0, 0.0); }

Tensor unary(ops::Unary op, const Tensor& x);
inline Tensor exp(const Tensor& x) { return sessa::unary(ops::Unary::Exp, x); }
inline Tensor log(const Tensor& x) { return sessa::unary(ops::Unary::Log, x); }
inline Tensor sqrt(const Tensor& x) { return sessa::unary(ops::Unary::Sqrt, x); }
inline Tensor square(const Tensor& x) { return sessa::unary(ops::Unary::Square, x); }
inline Tensor tanh(const Tensor& x) { return sessa::unary(ops::Unary::Tanh, x); }
inline Tensor sigmoid(const Tensor& x) { return sessa::unary(ops::Unary::Sigmoid, x); }
inline Tensor relu(const Tensor& x) { return sessa::unary(ops::Unary::Relu, x); }
inline Tensor gelu(const Tensor& x) { return sessa::unary(ops::Unary::Gelu, x); }  // exact erf form
inline Tensor silu(const Tensor& x) { return sessa::unary(ops::Unary::Silu, x); }
inline Tensor softplus(const Tensor& x) { return sessa::unary(ops::Unary::Softplus, x); }

// ---- reductions -------------------------------------------------------------------------
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& x);
Tensor mean_all(const Tensor& x);

// ---- linear algebra and softmax ------------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// y = r + x W^T + b over the last dim as one node: x (..., in), weight (out, in), bias (out) or
// undefined, residual r (..., out) or undefined (a residual connection added inside the GEMM).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual = {});
Tensor softmax(const Tensor& x);      // over the last dim
Tensor log_softmax(const Tensor& x);  // over the last dim

// ---- shape ------------------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor permute(const Tensor& x, const std::vector<int64_t>& order);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor contiguous(const Tensor& x);
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, int64_t dim, const std::vector<int64_t>& sizes);  // narrow views
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);  // embedding lookup when dim = 0
// `value`, when given, is x already converted (a parameter's compute copy, nn::ComputeCopies):
// the op records the cast with it as its result instead of converting x again.
Tensor cast(const Tensor& x, DType dtype, const Tensor& value = {});

}  // namespace sessa
