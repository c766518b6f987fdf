// CPU loop helpers shared by the kernels: float dtype dispatch, a parallel loop
// over the elements of N strided tensors that share one (broadcast) shape.
#pragma once
#include <array>
#include <cstdint>
#include <utility>

#include "tensor/dispatch.h"
#include "tensor/tensor.h"

namespace sessa::cpu {

// Below this many elements a loop runs on one thread (thread start-up costs more).
constexpr int64_t kParallelGrain = 1 << 15;

// Calls f(T{}) with T the C++ type of a floating dtype (float or double: the CPU has no
// bfloat16 arithmetic). Any dtype: sessa::dispatch_dtype<bf16> (tensor/dispatch.h).
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  return dispatch_float_dtype<void>(t, op, "cpu", std::forward<F>(f));
}

// For every index of `shape`, calls body(off) where off[k] is the element offset
// in tensor k (strides[k] are that tensor's strides, already broadcast to `shape`).
// Rows of the last dimension are distributed across OpenMP threads.
template <size_t N, class Body>
void strided_loop(const Shape& shape, const std::array<Shape, N>& strides, Body&& body) {
  const int64_t total = numel(shape);
  if (total == 0) return;
  const int64_t ndim = int64_t(shape.size());
  if (ndim == 0) {
    body(std::array<int64_t, N>{});
    return;
  }
  const int64_t inner = shape[ndim - 1];
  const int64_t rows = total / inner;
  std::array<int64_t, N> inner_stride;
  for (size_t k = 0; k < N; ++k) inner_stride[k] = strides[k][ndim - 1];
#pragma omp parallel for schedule(static) if (total >= kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    std::array<int64_t, N> off{};
    int64_t rem = r;
    for (int64_t d = ndim - 2; d >= 0; --d) {
      int64_t c = rem % shape[d];
      rem /= shape[d];
      for (size_t k = 0; k < N; ++k) off[k] += c * strides[k][d];
    }
    for (int64_t i = 0; i < inner; ++i) {
      body(off);
      for (size_t k = 0; k < N; ++k) off[k] += inner_stride[k];
    }
  }
}

// Converts between element types (through float for bf16).
template <class To, class From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>)
    return v;
  else if constexpr (std::is_same_v<From, bf16>)
    return static_cast<To>(static_cast<float>(v));
  else if constexpr (std::is_same_v<To, bf16>)
    return bf16(static_cast<float>(v));
  else
    return static_cast<To>(v);
}

}  // namespace sessa::cpu
