// Helpers for CPU-vs-GPU parity tests: the same op on both devices, compared with
// a relative bound per dtype (fp32 ~1e-5, bf16 ~1e-2).
#pragma once
#include <doctest/doctest.h>

#include "tensor/cuda/blas.h"
#include "tensor/ops.h"
#include "tensor/random.h"
#include "tests/helpers.h"

namespace sessa::test {

inline Device gpu() { return Device::cuda(0); }
inline Tensor host(const Tensor& t) { return t.to(Device::cpu()); }

// Exact float32 GEMMs inside a scope; TF32 (the default) again after it.
struct NoTf32 {
  NoTf32() { cuda::set_allow_tf32(false); }
  ~NoTf32() { cuda::set_allow_tf32(true); }
};
inline double tolerance(DType t) { return t == DType::BF16 ? 2e-2 : t == DType::F64 ? 1e-12 : 2e-5; }

// Normal(0, scale) on the CPU in float32, for use on both devices.
inline Tensor cpu_randn(const Shape& shape, Generator& gen, double scale = 1.0) {
  return normal(shape, 0.0, scale, gen, {DType::F32});
}

// Whether a and b hold the same values bit for bit (both undefined counts as equal): the
// check behind "two GPU runs agree" (NaNs never compare equal, so none may appear).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  return host(a).to(DType::F64).to_vector<double>() == host(b).to(DType::F64).to_vector<double>();
}

// Compares a GPU result with the CPU reference (both brought to float64 on the host).
inline void check_close(const Tensor& gpu_result, const Tensor& cpu_ref, DType dtype, const char* what) {
  expect_close(gpu_result, cpu_ref, tolerance(dtype), what);
}

}  // namespace sessa::test
