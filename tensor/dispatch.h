// From a runtime DType to a C++ element type, for the CPU (tensor/cpu/loops.h) and CUDA
// (tensor/cuda/common.cuh) backends alike. The backends differ only in their bfloat16
// type, passed as Bf16: sessa::bf16 on the CPU, __nv_bfloat16 on CUDA.
#pragma once
#include <cstdint>
#include <type_traits>

#include "tensor/dtype.h"
#include "tensor/error.h"

namespace sessa {

// Calls f(T{}) for any dtype t, with T in {float, double, Bf16, int32_t, uint16_t}.
template <class Bf16, class F>
decltype(auto) dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      return f(float{});
    case DType::F64:
      return f(double{});
    case DType::BF16:
      return f(Bf16{});
    case DType::I32:
      return f(int32_t{});
    case DType::U16:
      return f(uint16_t{});
  }
  SESSA_FAIL("dispatch", "invalid dtype code " << int(t));
}

// Calls f(T{}) for a floating dtype t that `backend` computes in: float, double, and Bf16
// for bfloat16 unless Bf16 is void (a backend without bfloat16 arithmetic). Any other
// dtype fails, naming `op` and the backend.
template <class Bf16, class F>
decltype(auto) dispatch_float_dtype(DType t, const char* op, const char* backend, F&& f) {
  switch (t) {
    case DType::F32:
      return f(float{});
    case DType::F64:
      return f(double{});
    case DType::BF16:
      if constexpr (!std::is_void_v<Bf16>) return f(Bf16{});
      break;
    default:
      break;
  }
  SESSA_FAIL(op, "unsupported dtype " << dtype_name(t) << " on " << backend
                                      << (std::is_void_v<Bf16> ? " (float32 or float64 expected)"
                                                               : " (float32, bfloat16 or float64 expected)"));
}

}  // namespace sessa
