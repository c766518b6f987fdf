// Tensor maps for Hopper's copy engine, host side: the descriptor a kernel's bulk tensor
// loads (tensor/cuda/tma.cuh) read a tile through. The driver's encoder is looked up at
// run time through the CUDA runtime, so nothing links against libcuda.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace sessa::cuda {

// A (B, heads, T, width) matrix of elem_bytes-byte elements (bfloat16 or float32) with a
// contiguous last dimension, as boxes of 128 bytes of columns (64 bfloat16, 32 float32)
// x `rows` rows in the 128-byte swizzle (for bfloat16, one column block of a wgmma tile,
// tensor/cuda/wgmma.cuh). `strides` are the elements between consecutive t, heads and B
// (positive, 16 bytes' worth of elements apart where that dimension has more than one
// entry); `base` is 16-byte aligned. Loads read rows past T and columns past width as
// zeros; reductions skip them.
CUtensorMap tile_map(const void* base, int elem_bytes, int64_t B, int64_t heads, int64_t T, int64_t width,
                     const int64_t (&strides)[3], int rows, const char* op);

}  // namespace sessa::cuda
