// Error checking for CUDA runtime and cuBLAS calls: a failure throws a
// sessa::Error naming the call, the op, the file and the line.
#pragma once
#include <cuda_runtime.h>

#include "tensor/error.h"

#define SESSA_CUDA_CHECK(call, op)                                                                                     \
  do {                                                                                                                 \
    cudaError_t sessa_err_ = (call);                                                                                   \
    if (sessa_err_ != cudaSuccess)                                                                                     \
      SESSA_FAIL(op, #call << " failed: " << cudaGetErrorString(sessa_err_) << " at " << __FILE__ << ":" << __LINE__); \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define SESSA_CUDA_LAUNCH_CHECK(op) SESSA_CUDA_CHECK(cudaGetLastError(), op)
