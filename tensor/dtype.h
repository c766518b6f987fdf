// Element types a tensor can hold, and the bfloat16 value type.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

namespace sessa {

enum class DType : uint8_t { F32, F64, BF16, I32, U16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);                 // "float32", ...
const char* safetensors_dtype_name(DType t);     // "F32", "BF16", ... (data/safetensors.h)
DType dtype_from_name(const std::string& name);  // accepts "float32"/"fp32"/"F32"/..., throws otherwise
bool is_floating(DType t);
// The dtype that sums of floating t accumulate in: float64 for float64, else float32.
DType accumulation_dtype(DType t);

// bfloat16: the upper 16 bits of an IEEE float32. Conversion rounds to nearest even.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = 0x7fc0;
      return;
    }  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = static_cast<uint16_t>(u >> 16);
  }
  explicit operator float() const { return std::bit_cast<float>(uint32_t(bits) << 16); }
};

// Maps a C++ element type to its DType.
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::BF16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<uint16_t>() {
  return DType::U16;
}

}  // namespace sessa
