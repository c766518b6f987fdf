// Tensor maps for Hopper's copy engine, host side: the descriptor a kernel's bulk tensor
// loads (tensor/cuda/tma.cuh) read a tile through. The driver's encoder is looked up at
// run time through the CUDA runtime, so nothing links against libcuda.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace sessa::cuda {

// A (B, heads, T, width) bfloat16 matrix with a contiguous last dimension, loaded as boxes
// of 64 columns x `rows` rows (one 128-byte swizzle column block of a wgmma tile,
// tensor/cuda/wgmma.cuh). `strides` are the elements between consecutive t, heads and B
// (positive multiples of 8 where that dimension has more than one entry); `base` is 16-byte
// aligned. Rows past T and columns past width read as zeros.
CUtensorMap bf16_tile_map(const void* base, int64_t B, int64_t heads, int64_t T, int64_t width,
                          const int64_t (&strides)[3], int rows, const char* op);

}  // namespace sessa::cuda
