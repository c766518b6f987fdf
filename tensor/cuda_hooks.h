// The seam between the core and the CUDA backend (tensor/cuda/). Core code
// calls these; without the backend each one throws a clear "not built" error.
#pragma once
#include <cstddef>
#include <string>

#include "tensor/device.h"

namespace sessa::cuda {

void* alloc(size_t nbytes, int device);
void free(void* p, size_t nbytes, int device);
// Copies between any two devices (host<->device or device<->device).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);
int device_count();
std::string device_name(int device);  // e.g. "NVIDIA H100 80GB HBM3"
void synchronize(int device);
// Bytes the caching allocator has handed out at most since the last reset, and now.
size_t peak_memory(int device);
size_t current_memory(int device);
void reset_peak_memory(int device);

}  // namespace sessa::cuda

#if SESSA_HAS_CUDA
#define SESSA_CUDA_CALL(call) call
#else
#define SESSA_CUDA_CALL(call) SESSA_FAIL(__func__, "this binary was built without the CUDA backend")
#endif
