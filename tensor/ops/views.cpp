// View ops: new shape/strides/offset over the same storage; nothing is copied.
#include <algorithm>
#include <numeric>
#include <optional>

#include "tensor/ops.h"

namespace sessa::ops {

namespace {

Tensor restride(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  return Tensor::make_view(x.storage(), std::move(shape), std::move(strides), offset, x.dtype());
}

// Replaces one -1 entry by whatever makes the element counts agree.
Shape infer_shape(Shape shape, int64_t total, const char* op, const Shape& from) {
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      SESSA_CHECK(infer_at < 0, op, "only one -1 allowed in " << shape);
      infer_at = int64_t(i);
    } else {
      SESSA_CHECK(shape[i] >= 0, op, "negative size in " << shape);
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    SESSA_CHECK(known > 0 && total % known == 0, op, "cannot view " << from << " as " << shape);
    shape[size_t(infer_at)] = total / known;
  }
  SESSA_CHECK(numel(shape) == total, op, "cannot view " << from << " (" << total << " elements) as " << shape);
  return shape;
}

// Strides that let the (shape, strides) layout be read as `target` without a copy,
// if any. Walks the old dims from the innermost, grouping runs of dims that are
// contiguous with each other ("chunks"); each chunk may be re-split freely.
std::optional<Shape> view_strides(const Shape& shape, const Shape& strides, const Shape& target) {
  if (numel(shape) == 0 || shape.empty()) return contiguous_strides(target);
  Shape out(target.size());
  int64_t view_d = int64_t(target.size()) - 1;
  int64_t chunk_stride = strides.back();
  int64_t chunk_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    chunk_numel *= shape[d];
    bool chunk_ends = d == 0 || (shape[d - 1] != 1 && strides[d - 1] != chunk_numel * chunk_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < chunk_numel || target[view_d] == 1)) {
      out[view_d] = view_numel * chunk_stride;
      view_numel *= target[view_d];
      --view_d;
    }
    if (view_numel != chunk_numel) return std::nullopt;
    if (d > 0) {
      chunk_stride = strides[d - 1];
      chunk_numel = view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

}  // namespace

Tensor view(const Tensor& x, Shape shape) {
  shape = infer_shape(std::move(shape), x.numel(), "view", x.shape());
  auto st = view_strides(x.shape(), x.strides(), shape);
  SESSA_CHECK(st.has_value(), "view",
              "cannot view a tensor of shape " << x.shape() << " and strides " << x.strides() << " as " << shape
                                               << " without a copy (use reshape)");
  return restride(x, shape, *st, x.offset());
}

std::optional<Tensor> try_view(const Tensor& x, Shape shape) {
  shape = infer_shape(std::move(shape), x.numel(), "view", x.shape());
  if (auto st = view_strides(x.shape(), x.strides(), shape)) return restride(x, shape, *st, x.offset());
  return std::nullopt;
}

Tensor reshape(const Tensor& x, Shape shape) {
  if (auto v = try_view(x, shape)) return *v;
  return view(contiguous(x), std::move(shape));
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& order) {
  SESSA_CHECK(int64_t(order.size()) == x.dim(), "permute",
              "order has " << order.size() << " entries for shape " << x.shape());
  Shape shape(order.size()), strides(order.size());
  std::vector<bool> seen(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t d = wrap_dim(order[i], x.dim(), "permute");
    SESSA_CHECK(!seen[size_t(d)], "permute", "dimension " << d << " repeated");
    seen[size_t(d)] = true;
    shape[i] = x.shape()[size_t(d)];
    strides[i] = x.strides()[size_t(d)];
  }
  return restride(x, shape, strides, x.offset());
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> order(size_t(x.dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_dim(d0, x.dim(), "transpose"))], order[size_t(wrap_dim(d1, x.dim(), "transpose"))]);
  return permute(x, order);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  int64_t d = wrap_dim(dim, x.dim(), "narrow");
  SESSA_CHECK(start >= 0 && length >= 0 && start + length <= x.shape()[d], "narrow",
              "range [" << start << ", " << start + length << ") out of bounds for dim " << d << " of " << x.shape());
  Shape shape = x.shape();
  shape[d] = length;
  return restride(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
}

Tensor expand(const Tensor& x, const Shape& shape) {
  SESSA_CHECK(shape.size() >= x.shape().size(), "expand", "cannot expand " << x.shape() << " to " << shape);
  size_t lead = shape.size() - x.shape().size();
  for (size_t i = 0; i < x.shape().size(); ++i)
    SESSA_CHECK(x.shape()[i] == 1 || x.shape()[i] == shape[lead + i], "expand",
                "cannot expand " << x.shape() << " to " << shape);
  return restride(x, shape, broadcast_strides(x.shape(), x.strides(), shape), x.offset());
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape(), strides = x.strides();
  int64_t stride = d < x.dim() ? shape[d] * strides[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  return restride(x, shape, strides, x.offset());
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim(), "squeeze");
  SESSA_CHECK(x.shape()[d] == 1, "squeeze", "dimension " << d << " of " << x.shape() << " is not 1");
  Shape shape = x.shape(), strides = x.strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  return restride(x, shape, strides, x.offset());
}

}  // namespace sessa::ops
