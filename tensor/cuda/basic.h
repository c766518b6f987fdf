// The basic tensor ops on CUDA: copies and fills, elementwise math, reductions,
// softmax, row indexing and the AdamW update. Each function is the CUDA half of the
// ops:: function of the same name; ops:: has already checked the arguments (shapes,
// dtypes, devices), so these only allocate, launch on cuda::stream(device) and return.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/ops.h"

namespace sessa::cuda {

// ---- elementwise.cu ----------------------------------------------------------------
// dst[i] = convert(src[i]), src broadcast to dst's shape, both on one device, any dtypes.
void copy_(const Tensor& dst, const Tensor& src);
void fill_(const Tensor& x, double value);
// a (op) b broadcast to out_shape (a new contiguous tensor); a and b share a dtype.
Tensor binary(ops::Binary op, const Tensor& a, const Tensor& b, const Shape& out_shape);
ops::MulGrads mul_grads(const Tensor& dy, const Tensor& a, const Tensor& b);  // one shape, contiguous (ops)
Tensor affine(const Tensor& x, double alpha, double beta);
void add_(const Tensor& dst, const Tensor& src, double alpha);         // dst += alpha * src
void add_(const Tensor& dst, const Tensor& src, const Tensor& alpha);  // alpha: 0-d, read on the device
Tensor unary(ops::Unary op, const Tensor& x);
Tensor unary_backward(ops::Unary op, const Tensor& x, const Tensor& dy);  // dy * f'(x)

// ---- reduce.cu ------------------------------------------------------------------------
// Sum over `dims` (wrapped, sorted, distinct) with the output shape already worked out.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, const Shape& out_shape);
// The same sum written into `out` (contiguous, of that shape, in x's dtype or its
// accumulation type: float32 for bfloat16), or added to what it holds (`add`).
void sum_into(const Tensor& out, const Tensor& x, const std::vector<int64_t>& dims, bool add);
// Max over `dim` (wrapped, non-empty): the value (amax, x's dtype) or its first index
// (argmax, int32).
Tensor amax(const Tensor& x, int64_t dim, const Shape& out_shape);
Tensor argmax(const Tensor& x, int64_t dim, const Shape& out_shape);
Tensor sum_of_squares(const Tensor& x);  // a 0-d float64 tensor on x's device, no host sync

// ---- softmax.cu (over the last dim) ---------------------------------------------------
Tensor softmax(const Tensor& x);
Tensor softmax_backward(const Tensor& y, const Tensor& dy);
Tensor log_softmax(const Tensor& x);
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);

// ---- index.cu -------------------------------------------------------------------------
// x and grad contiguous; index int32, contiguous, on x's (grad's) device. Ids are not
// range-checked on the host (ops:: checks them when they come from the host; ids made
// on the device come from the data loader, which checks them against the vocabulary);
// an id out of range traps the kernel instead of touching memory it does not own.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
void index_add_(const Tensor& dst, int64_t dim, const Tensor& index, const Tensor& grad);  // checked by ops

// ---- optim.cu -------------------------------------------------------------------------
// param, m, v: one floating dtype; grad: param's dtype or bfloat16. All contiguous.
void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const ops::AdamWHyper& h);

}  // namespace sessa::cuda
