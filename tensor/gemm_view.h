// How a GEMM reads the last two dims (R x C) of a tensor without copying, shared by
// ops::matmul on the CPU (tensor/ops/matmul.cpp) and on cuBLAS (tensor/cuda/blas.cpp).
// The matrix sits in memory either row-major (row stride ld >= C, unit column stride) or
// transposed (memory holds the C x R transpose row-major: unit row stride, ld >= R);
// a GEMM takes the second kind as a transposed operand instead of a copy.
#pragma once
#include <algorithm>
#include <optional>

#include "tensor/ops.h"

namespace sessa {

struct GemmView {
  Tensor t;
  int64_t ld;
  bool stored_transposed;  // memory holds the C x R transpose, row-major
};

// x's last two dims as a GemmView; none when neither layout fits.
inline std::optional<GemmView> gemm_view(const Tensor& x) {
  const int64_t d = x.dim(), R = x.shape()[d - 2], C = x.shape()[d - 1];
  const int64_t sr = x.strides()[d - 2], sc = x.strides()[d - 1];
  const int64_t rmax = std::max<int64_t>(R, 1), cmax = std::max<int64_t>(C, 1);
  if (sc == 1 || C == 1) {
    const int64_t ld = R == 1 ? cmax : sr;
    if (ld >= cmax) return GemmView{x, ld, false};
  }
  if (sr == 1 || R == 1) {
    const int64_t ld = C == 1 ? rmax : sc;
    if (ld >= rmax) return GemmView{x, ld, true};
  }
  return std::nullopt;
}

}  // namespace sessa
