// Differentiable views, joins, indexing and casts: forward then backward.
#include "autograd/ops.h"

namespace sessa {

using autograd::record;

Tensor reshape(const Tensor& x, const Shape& shape) {
  return record("reshape", ops::reshape(x, shape), {x},
                [sx = x.shape()](const Tensor& g) { return std::vector<Tensor>{ops::reshape(g, sx)}; });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& order) {
  Tensor y = ops::permute(x, order);
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[size_t(wrap_dim(order[i], x.dim(), "permute"))] = int64_t(i);
  return record("permute", y, {x},
                [inverse](const Tensor& g) { return std::vector<Tensor>{ops::permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  return record("transpose", ops::transpose(x, d0, d1), {x},
                [d0, d1](const Tensor& g) { return std::vector<Tensor>{ops::transpose(g, d0, d1)}; });
}

// The gradient of a slice is zero outside it. It is added into the slice of its input's
// running sum when the engine has one (the second and later parts of a split activation,
// such as Mamba's x_proj output: no zero-padded full-size gradient per part and no full-size
// add), else written into zeros. A summing op below may add into that slice itself
// instead (the slices of a split weight, nn::Linear::forward_parts).
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  return autograd::record_view(
      "narrow", ops::narrow(x, dim, start, length), x,
      [dim, start, length, opt = x.options(), sx = x.shape()](const Tensor& g, const std::vector<Tensor>& sums) {
        if (sums[0].defined()) {
          ops::add_(ops::narrow(sums[0], dim, start, length), g);
          return std::vector<Tensor>{sums[0]};
        }
        Tensor full_grad = zeros(sx, opt);
        ops::copy_(ops::narrow(full_grad, dim, start, length), g);
        return std::vector<Tensor>{full_grad};
      },
      [dim, start, length](const Tensor& sum) { return ops::narrow(sum, dim, start, length); });
}

Tensor expand(const Tensor& x, const Shape& shape) {
  return record("expand", ops::expand(x, shape), {x},
                [sx = x.shape()](const Tensor& g) { return std::vector<Tensor>{ops::sum_to(g, sx)}; });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) { return reshape(x, ops::unsqueeze(x, dim).shape()); }
Tensor squeeze(const Tensor& x, int64_t dim) { return reshape(x, ops::squeeze(x, dim).shape()); }

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  return record("contiguous", ops::contiguous(x), {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  std::vector<int64_t> sizes;
  int64_t d = wrap_dim(dim, xs.at(0).dim(), "cat");
  for (const Tensor& x : xs) sizes.push_back(x.shape()[size_t(d)]);
  return record("cat", ops::cat(xs, d), xs, [d, sizes](const Tensor& g) {
    std::vector<Tensor> grads;
    int64_t at = 0;
    for (int64_t n : sizes) grads.push_back(ops::narrow(g, d, at, n)), at += n;
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& x, int64_t dim, const std::vector<int64_t>& sizes) {
  std::vector<Tensor> parts;
  int64_t at = 0;
  for (int64_t n : sizes) parts.push_back(narrow(x, dim, at, n)), at += n;
  SESSA_CHECK(at == x.size(dim), "split",
              "sizes add up to " << at << ", dim " << dim << " of " << x.shape() << " has " << x.size(dim));
  return parts;
}

// The gradient rows are scatter-added straight into what the engine sums x's gradient into
// when that is in the gradient's accumulation dtype (an embedding's float32 .grad: no zeroed
// (V, D) buffer, no second pass adding it), else into zeros of x's shape.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  auto backward = [dim, index, sx = x.shape()](const Tensor& g, const std::vector<Tensor>& sums) {
    const Tensor& sum = sums[0];
    const bool in_place = sum.defined() && sum.is_contiguous() && sum.dtype() == accumulation_dtype(g.dtype()) &&
                          sum.device() == g.device();  // what ops::index_add_ takes
    if (!in_place) return std::vector<Tensor>{ops::index_add(sx, dim, index, g)};
    ops::index_add_(sum, dim, index, g);
    return std::vector<Tensor>{sum};
  };
  return autograd::record_summing("index_select", ops::index_select(x, dim, index), {x}, backward);
}

// A leaf (a parameter under autocast) gets its gradient unconverted: the engine adds it
// into the leaf's gradient in the leaf's dtype, one pass instead of a cast and an add. A
// summing op below may add straight into the input's sum, in the input's dtype.
Tensor cast(const Tensor& x, DType dtype, const Tensor& value) {
  if (x.dtype() == dtype) return x;
  SESSA_CHECK(
      !value.defined() || (value.dtype() == dtype && value.shape() == x.shape() && value.device() == x.device()),
      "cast",
      "the converted value " << value.str() << " must be " << dtype_name(dtype) << " shaped " << x.shape() << " on "
                             << x.device().str() << " like its source");
  const bool to_leaf = x.requires_grad() && !x.grad_fn();
  return autograd::record_view(
      "cast", value.defined() ? value.detach() : ops::cast(x, dtype), x,
      [from = x.dtype(), to_leaf](const Tensor& g) { return std::vector<Tensor>{to_leaf ? g : ops::cast(g, from)}; },
      [](const Tensor& sum) { return sum; });
}

}  // namespace sessa
