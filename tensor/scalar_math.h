// Scalar math shared by the CPU kernels (g++) and the CUDA kernels (nvcc): float and
// double overloads of the libm functions the kernels use, and the table of unary ops
// (ops::Unary) next to their derivatives, as used by ops::unary and ops::unary_backward
// on both backends.
//
// Every function is SESSA_HD: __host__ __device__ __forceinline__ under nvcc, plain
// inline under g++. The float overloads call the float functions (expf, ...) and the
// double overloads the double ones, on the host (glibc, the same functions std::exp
// picks) and on the device (CUDA's libdevice), so a float kernel never computes in
// double and no fast-math intrinsic (__expf) sneaks in: kernels that want one say so.
#pragma once
#include <cmath>
#include <type_traits>

#include "tensor/ops.h"

#if defined(__CUDACC__)
#define SESSA_HD __host__ __device__ __forceinline__
#else
#define SESSA_HD inline
#endif

namespace sessa::math {

// log2(e) and ln(2): exp(x) = 2^(x log2 e), log(x) = log2(x) ln 2 (kernels on exp2 / log2).
constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

SESSA_HD float exp(float x) { return ::expf(x); }
SESSA_HD double exp(double x) { return ::exp(x); }
SESSA_HD float expm1(float x) { return ::expm1f(x); }
SESSA_HD double expm1(double x) { return ::expm1(x); }
SESSA_HD float log(float x) { return ::logf(x); }
SESSA_HD double log(double x) { return ::log(x); }
SESSA_HD float log1p(float x) { return ::log1pf(x); }
SESSA_HD double log1p(double x) { return ::log1p(x); }
SESSA_HD float sqrt(float x) { return ::sqrtf(x); }
SESSA_HD double sqrt(double x) { return ::sqrt(x); }
SESSA_HD float tanh(float x) { return ::tanhf(x); }
SESSA_HD double tanh(double x) { return ::tanh(x); }
SESSA_HD float erf(float x) { return ::erff(x); }
SESSA_HD double erf(double x) { return ::erf(x); }

template <class T>
SESSA_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// f(x) for the unary op `op`.
template <ops::Unary op, class T>
SESSA_HD T unary_value(T x) {
  using ops::Unary;
  if constexpr (op == Unary::Neg)
    return -x;
  else if constexpr (op == Unary::Exp)
    return exp(x);
  else if constexpr (op == Unary::Log)
    return log(x);
  else if constexpr (op == Unary::Sqrt)
    return sqrt(x);
  else if constexpr (op == Unary::Square)
    return x * x;
  else if constexpr (op == Unary::Tanh)
    return tanh(x);
  else if constexpr (op == Unary::Sigmoid)
    return sigmoid(x);
  else if constexpr (op == Unary::Relu)
    return x > T(0) ? x : T(0);
  else if constexpr (op == Unary::Gelu)
    return T(0.5) * x * (T(1) + erf(x * T(M_SQRT1_2)));  // exact (erf) GELU
  else if constexpr (op == Unary::Silu)
    return x * sigmoid(x);
  else if constexpr (op == Unary::Softplus)
    return x > T(20) ? x : log1p(exp(x));
}

// f'(x)
template <ops::Unary op, class T>
SESSA_HD T unary_derivative(T x) {
  using ops::Unary;
  if constexpr (op == Unary::Neg)
    return T(-1);
  else if constexpr (op == Unary::Exp)
    return exp(x);
  else if constexpr (op == Unary::Log)
    return T(1) / x;
  else if constexpr (op == Unary::Sqrt)
    return T(0.5) / sqrt(x);
  else if constexpr (op == Unary::Square)
    return T(2) * x;
  else if constexpr (op == Unary::Tanh) {
    const T t = tanh(x);
    return T(1) - t * t;
  } else if constexpr (op == Unary::Sigmoid) {
    const T s = sigmoid(x);
    return s * (T(1) - s);
  } else if constexpr (op == Unary::Relu)
    return x > T(0) ? T(1) : T(0);
  else if constexpr (op == Unary::Gelu) {  // Phi(x) + x * phi(x)
    const T cdf = T(0.5) * (T(1) + erf(x * T(M_SQRT1_2)));
    const T pdf = exp(T(-0.5) * x * x) * T(0.3989422804014327);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
  } else if constexpr (op == Unary::Silu) {
    const T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  } else if constexpr (op == Unary::Softplus)
    return sigmoid(x);
}

// Calls f(std::integral_constant<Unary, op>{}) for the runtime `op` (host code).
template <class F>
void dispatch_unary(ops::Unary op, F&& f) {
  using ops::Unary;
  switch (op) {
// clang-format off
#define SESSA_UNARY_CASE(name) case Unary::name: f(std::integral_constant<Unary, Unary::name>{}); break;
    SESSA_UNARY_CASE(Neg) SESSA_UNARY_CASE(Exp) SESSA_UNARY_CASE(Log) SESSA_UNARY_CASE(Sqrt)
    SESSA_UNARY_CASE(Square) SESSA_UNARY_CASE(Tanh) SESSA_UNARY_CASE(Sigmoid) SESSA_UNARY_CASE(Relu)
    SESSA_UNARY_CASE(Gelu) SESSA_UNARY_CASE(Silu) SESSA_UNARY_CASE(Softplus)
#undef SESSA_UNARY_CASE
    // clang-format on
  }
}

}  // namespace sessa::math
