// Each unary function next to its derivative, as used by ops::unary and
// ops::unary_backward. Shared by the CPU kernels (and mirrored by the CUDA ones).
#pragma once
#include <cmath>
#include <type_traits>

#include "tensor/ops.h"

namespace sessa::cpu {

template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <ops::Unary op, class T>
inline T unary_value(T x) {
  using ops::Unary;
  if constexpr (op == Unary::Neg)
    return -x;
  else if constexpr (op == Unary::Exp)
    return std::exp(x);
  else if constexpr (op == Unary::Log)
    return std::log(x);
  else if constexpr (op == Unary::Sqrt)
    return std::sqrt(x);
  else if constexpr (op == Unary::Square)
    return x * x;
  else if constexpr (op == Unary::Tanh)
    return std::tanh(x);
  else if constexpr (op == Unary::Sigmoid)
    return sigmoid(x);
  else if constexpr (op == Unary::Relu)
    return x > T(0) ? x : T(0);
  else if constexpr (op == Unary::Gelu)
    return T(0.5) * x * (T(1) + std::erf(x * T(M_SQRT1_2)));  // exact (erf) GELU
  else if constexpr (op == Unary::Silu)
    return x * sigmoid(x);
  else if constexpr (op == Unary::Softplus)
    return x > T(20) ? x : std::log1p(std::exp(x));
}

// f'(x)
template <ops::Unary op, class T>
inline T unary_derivative(T x) {
  using ops::Unary;
  if constexpr (op == Unary::Neg)
    return T(-1);
  else if constexpr (op == Unary::Exp)
    return std::exp(x);
  else if constexpr (op == Unary::Log)
    return T(1) / x;
  else if constexpr (op == Unary::Sqrt)
    return T(0.5) / std::sqrt(x);
  else if constexpr (op == Unary::Square)
    return T(2) * x;
  else if constexpr (op == Unary::Tanh) {
    T t = std::tanh(x);
    return T(1) - t * t;
  } else if constexpr (op == Unary::Sigmoid) {
    T s = sigmoid(x);
    return s * (T(1) - s);
  } else if constexpr (op == Unary::Relu)
    return x > T(0) ? T(1) : T(0);
  else if constexpr (op == Unary::Gelu) {  // Phi(x) + x * phi(x)
    T cdf = T(0.5) * (T(1) + std::erf(x * T(M_SQRT1_2)));
    T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
  } else if constexpr (op == Unary::Silu) {
    T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  } else if constexpr (op == Unary::Softplus)
    return sigmoid(x);
}

// Calls f(std::integral_constant<Unary, op>{}) for the runtime `op`.
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

}  // namespace sessa::cpu
