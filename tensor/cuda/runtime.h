// Per-device CUDA state shared by the kernels: the stream every op runs on, and
// memory statistics of the caching allocator.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "tensor/cuda_hooks.h"

namespace sessa::cuda {

cudaStream_t stream(int device);  // sets `device` current, returns its stream

struct MemoryStats {
  size_t in_use = 0;        // bytes handed out to tensors now
  size_t peak = 0;          // most bytes ever handed out at once
  size_t reserved = 0;      // bytes held from cudaMalloc (in use + cached)
  size_t cuda_mallocs = 0;  // number of cudaMalloc calls so far
};
MemoryStats memory_stats(int device);
// Tests: fill every block handed out with 0xFF bytes (NaN in float32 and bfloat16),
// so an output element a kernel forgot to write fails the comparison.
void set_poison(bool on);

}  // namespace sessa::cuda
