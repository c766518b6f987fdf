#include "tensor/dtype.h"

#include "tensor/error.h"

namespace sessa {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::BF16:
      return 2;
    case DType::I32:
      return 4;
    case DType::U16:
      return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "float32";
    case DType::F64:
      return "float64";
    case DType::BF16:
      return "bfloat16";
    case DType::I32:
      return "int32";
    case DType::U16:
      return "uint16";
  }
  return "?";
}

DType dtype_from_name(const std::string& n) {
  if (n == "float32" || n == "fp32" || n == "F32") return DType::F32;
  if (n == "float64" || n == "fp64" || n == "F64") return DType::F64;
  if (n == "bfloat16" || n == "bf16" || n == "BF16") return DType::BF16;
  if (n == "int32" || n == "I32") return DType::I32;
  if (n == "uint16" || n == "U16") return DType::U16;
  SESSA_FAIL("dtype", "unknown dtype name '" << n << "'");
}

bool is_floating(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16; }

}  // namespace sessa
