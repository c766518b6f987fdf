// Shapes and strides: small vectors of int64 with the helpers every op needs.
#pragma once
#include <cstdint>
#include <ostream>
#include <vector>

namespace sessa {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
// Turns a possibly negative dimension index into [0, ndim); throws naming `op`.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);
// NumPy broadcasting of two shapes; throws naming `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Strides that read a tensor of `shape`/`strides` as if it had shape `target` (0 on broadcast dims).
Shape broadcast_strides(const Shape& shape, const Shape& strides, const Shape& target);

// A shape seen as (outer, rows, inner) around dimension d: the product of the dims
// before d, d itself, and the product of the dims after d (used by row indexing).
struct AroundDim {
  int64_t outer = 1, rows = 1, inner = 1;
};
AroundDim around(const Shape& s, int64_t d);

std::ostream& operator<<(std::ostream& os, const Shape& s);  // prints [2, 3, 4]

}  // namespace sessa
