// Tensor maps (tensor/cuda/tma.h): cuTensorMapEncodeTiled, found once through
// cudaGetDriverEntryPointByVersion.
#include "tensor/cuda/tma.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "tensor/cuda/check.h"
#include "tensor/error.h"

namespace sessa::cuda {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 encoder(const char* op) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [op] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    SESSA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found),
                     op);
    SESSA_CHECK(found == cudaDriverEntryPointSuccess && f, op,
                "the CUDA driver has no cuTensorMapEncodeTiled (the copy engine's maps need a driver for CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

CUtensorMap tile_map(const void* base, int elem_bytes, int64_t B, int64_t heads, int64_t T, int64_t width,
                     const int64_t (&strides)[3], int rows, const char* op) {
  SESSA_CHECK(elem_bytes == 2 || elem_bytes == 4, op,
              "tile maps hold bfloat16 or float32, got " << elem_bytes << "-byte elements");
  const int64_t align = 16 / elem_bytes;  // elements per 16 bytes
  SESSA_CHECK(reinterpret_cast<uintptr_t>(base) % 16 == 0, op, "a tile map's base must be 16-byte aligned");
  const int64_t sizes[3] = {T, heads, B};
  cuuint64_t dims[4] = {cuuint64_t(width), cuuint64_t(T), cuuint64_t(heads), cuuint64_t(B)}, bytes[3];
  for (int i = 0; i < 3; ++i) {
    // A dimension of one entry is never stepped along: any valid stride describes it.
    const int64_t s = sizes[i] > 1 ? strides[i] : align;
    SESSA_CHECK(s > 0 && s % align == 0, op,
                "a tile map's strides must be positive multiples of " << align << " elements, got " << s);
    bytes[i] = cuuint64_t(s) * elem_bytes;
  }
  const cuuint32_t box[4] = {cuuint32_t(128 / elem_bytes), cuuint32_t(rows), 1, 1}, unit[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUtensorMapDataType type = elem_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  const CUresult r =
      encoder(op)(&map, type, 4, const_cast<void*>(base), dims, bytes, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  SESSA_CHECK(r == CUDA_SUCCESS, op,
              "cuTensorMapEncodeTiled failed (" << int(r) << ") for a (" << B << ", " << heads << ", " << T << ", "
                                                << width << ") tile map of " << rows << "-row boxes");
  return map;
}

}  // namespace sessa::cuda
