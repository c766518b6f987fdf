// What the GPU kernel benchmarks share (bench_mamba_scan, bench_mamba_conv, bench_cross_entropy): a checked
// CUDA call, the median of CUDA-event times of a callable on the engine's main stream after a
// warm-up, a device-to-device copy of the same bytes as the bandwidth to compare against, and
// the relative error of a GPU result against a CPU reference. CUDA builds only.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tensor/cuda/runtime.h"
#include "tensor/tensor.h"

namespace sessa::gpu_timing {

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "benchmark: %s failed: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median milliseconds of f over `reps` runs on device 0's main stream (one warm-up run first,
// which also fills the allocator's cache).
template <class Fn>
double time_ms(Fn&& f, int reps) {
  cudaStream_t st = cuda::stream(0);
  cudaEvent_t a, b;
  cuda_ok(cudaEventCreate(&a), "cudaEventCreate");
  cuda_ok(cudaEventCreate(&b), "cudaEventCreate");
  f();
  cuda_ok(cudaStreamSynchronize(st), "warm-up");
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    cuda_ok(cudaEventRecord(a, st), "cudaEventRecord");
    f();
    cuda_ok(cudaEventRecord(b, st), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(b), "cudaEventSynchronize");
    float m = 0;
    cuda_ok(cudaEventElapsedTime(&m, a, b), "cudaEventElapsedTime");
    ms.push_back(m);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median milliseconds of a device-to-device copy of `bytes` (half of them read, half written:
// the copy moves bytes / 2 one way).
inline double copy_ms(double bytes, int reps) {
  const size_t size = size_t(bytes / 2);
  void *src = nullptr, *dst = nullptr;
  cuda_ok(cudaMalloc(&src, size), "cudaMalloc"), cuda_ok(cudaMalloc(&dst, size), "cudaMalloc");
  cuda_ok(cudaMemset(src, 0, size), "cudaMemset");
  const double ms = time_ms(
      [&] { cuda_ok(cudaMemcpyAsync(dst, src, size, cudaMemcpyDeviceToDevice, cuda::stream(0)), "copy"); }, reps);
  cudaFree(src), cudaFree(dst);
  return ms;
}

// max |a - ref| / max(1, max |ref|), both brought to float64 on the host (NaN propagates).
inline double max_rel(const Tensor& a, const Tensor& ref) {
  auto va = a.to(Device::cpu()).to(DType::F64).to_vector<double>();
  auto vr = ref.to(Device::cpu()).to(DType::F64).to_vector<double>();
  double diff = 0, scale = 1;
  for (size_t i = 0; i < va.size(); ++i) {
    if (!(std::abs(va[i] - vr[i]) <= diff)) diff = std::abs(va[i] - vr[i]);
    scale = std::max(scale, std::abs(vr[i]));
  }
  return diff / scale;
}

}  // namespace sessa::gpu_timing
