// dtype.cpp - one table of what each DType is called and how large it is; every
// lookup below reads it, so a new dtype is one row.
#include "tensor/dtype.h"

#include <iterator>

#include "tensor/error.h"

namespace sessa {

namespace {

struct DTypeInfo {
  DType dtype;
  size_t size;
  const char* name;        // dtype_name
  const char* short_name;  // accepted by dtype_from_name ("fp32"), as is st_name
  const char* st_name;     // safetensors' name
};

// In enum order: kInfo[size_t(t)] describes t.
constexpr DTypeInfo kInfo[] = {
    {DType::F32, 4, "float32", "fp32", "F32"},    {DType::F64, 8, "float64", "fp64", "F64"},
    {DType::BF16, 2, "bfloat16", "bf16", "BF16"}, {DType::I32, 4, "int32", "int32", "I32"},
    {DType::U16, 2, "uint16", "uint16", "U16"},
};

static_assert(
    [] {
      for (size_t i = 0; i < std::size(kInfo); ++i)
        if (size_t(kInfo[i].dtype) != i) return false;
      return true;
    }(),
    "kInfo rows must follow the DType enum order");

const DTypeInfo& info(DType t) {
  SESSA_CHECK(size_t(t) < std::size(kInfo), "dtype", "unknown dtype value " << int(t));
  return kInfo[size_t(t)];
}

}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
const char* dtype_name(DType t) { return info(t).name; }
const char* safetensors_dtype_name(DType t) { return info(t).st_name; }

DType dtype_from_name(const std::string& n) {
  for (const DTypeInfo& i : kInfo)
    if (n == i.name || n == i.short_name || n == i.st_name) return i.dtype;
  SESSA_FAIL("dtype", "unknown dtype name '" << n << "'");
}

bool is_floating(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16; }

DType accumulation_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

}  // namespace sessa
