// The caching allocator, streams and copies. Freed blocks go to a per-device
// pool keyed by their (rounded) size and are handed out again for the same
// size, so a training loop whose shapes repeat stops calling cudaMalloc after
// its first step. All work is ordered on one stream per device (the main lane; an op that
// uses the priority lane joins back before returning, lane.h), so a block freed on
// the host can be reused at once: later kernels are ordered after earlier ones.
#include "tensor/cuda/runtime.h"

#include <map>
#include <mutex>
#include <vector>

#include "tensor/cuda/check.h"
#include "tensor/cuda_hooks.h"

namespace sessa::cuda {

namespace {

constexpr int kMaxDevices = 16;
constexpr size_t kSmallRound = 512;       // small blocks: multiples of 512 B
constexpr size_t kLargeRound = 2u << 20;  // large blocks: multiples of 2 MiB
constexpr size_t kSmallLimit = 1u << 20;
bool g_poison = false;

size_t round_size(size_t n) {
  size_t unit = n <= kSmallLimit ? kSmallRound : kLargeRound;
  return (std::max<size_t>(n, 1) + unit - 1) / unit * unit;
}

struct DeviceState {
  std::mutex mu;
  std::multimap<size_t, void*> cached;  // free blocks by rounded size
  MemoryStats stats;
  cudaStream_t stream = nullptr, priority_stream = nullptr;
};
DeviceState& state(int device) {
  static DeviceState states[kMaxDevices];
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "cuda", "device index " << device << " out of range");
  return states[device];
}

void release_cache(DeviceState& s) {
  for (auto& [size, p] : s.cached) {
    cudaFree(p);
    s.stats.reserved -= size;
  }
  s.cached.clear();
}

}  // namespace

cudaStream_t stream(int device, Lane lane) {
  SESSA_CUDA_CHECK(cudaSetDevice(device), "cuda stream");
  DeviceState& s = state(device);
  std::lock_guard lock(s.mu);
  if (lane == Lane::priority) {
    if (!s.priority_stream) {
      int lowest = 0, highest = 0;  // numerically: the highest priority is the smallest number
      SESSA_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest), "cuda stream");
      SESSA_CUDA_CHECK(cudaStreamCreateWithPriority(&s.priority_stream, cudaStreamNonBlocking, highest), "cuda stream");
    }
    return s.priority_stream;
  }
  if (!s.stream) SESSA_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cuda stream");
  return s.stream;
}

LaneEvent::LaneEvent(int device) : device_(device) {
  SESSA_CUDA_CHECK(cudaSetDevice(device), "cuda event");
  SESSA_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cuda event");
}

LaneEvent::~LaneEvent() { cudaEventDestroy(event_); }  // safe while pending: released once it completes

void LaneEvent::record(Lane lane) { SESSA_CUDA_CHECK(cudaEventRecord(event_, stream(device_, lane)), "cuda event"); }

void LaneEvent::wait(Lane lane) const {
  SESSA_CUDA_CHECK(cudaStreamWaitEvent(stream(device_, lane), event_, 0), "cuda event");
}

LaneFork::LaneFork(int device) : event_(device) {
  event_.record(Lane::main);
  event_.wait(Lane::priority);
}

LaneFork::~LaneFork() {
  try {
    event_.record(Lane::priority);
    event_.wait(Lane::main);
  } catch (...) {  // a destructor must not throw; the failure will surface at the next CUDA call
  }
}

void* alloc(size_t nbytes, int device) {
  const size_t size = round_size(nbytes);
  cudaStream_t st = stream(device);  // before taking the lock: stream() takes it too
  DeviceState& s = state(device);
  std::lock_guard lock(s.mu);
  void* p = nullptr;
  if (auto it = s.cached.find(size); it != s.cached.end()) {
    p = it->second;
    s.cached.erase(it);
  } else {
    SESSA_CUDA_CHECK(cudaSetDevice(device), "alloc");
    if (cudaMalloc(&p, size) != cudaSuccess) {  // out of memory: give the cache back and retry once
      cudaGetLastError();
      release_cache(s);
      if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        SESSA_FAIL("alloc", "CUDA out of memory on cuda:" << device << " allocating " << nbytes << " bytes ("
                                                          << s.stats.in_use << " in use by tensors, " << free_b
                                                          << " free of " << total_b << ")");
      }
    }
    s.stats.reserved += size;
    ++s.stats.cuda_mallocs;
  }
  s.stats.in_use += size;
  s.stats.peak = std::max(s.stats.peak, s.stats.in_use);
  if (g_poison) SESSA_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, size, st), "alloc");
  return p;
}

void free(void* p, size_t nbytes, int device) {
  DeviceState& s = state(device);
  std::lock_guard lock(s.mu);
  const size_t size = round_size(nbytes);
  s.cached.emplace(size, p);
  s.stats.in_use -= size;
}

MemoryStats memory_stats(int device) {
  DeviceState& s = state(device);
  std::lock_guard lock(s.mu);
  return s.stats;
}

size_t peak_memory(int device) { return memory_stats(device).peak; }
size_t current_memory(int device) { return memory_stats(device).in_use; }

void reset_peak_memory(int device) {
  DeviceState& s = state(device);
  std::lock_guard lock(s.mu);
  s.stats.peak = s.stats.in_use;
}

void set_poison(bool on) { g_poison = on; }

void synchronize(int device) { SESSA_CUDA_CHECK(cudaStreamSynchronize(stream(device)), "synchronize"); }

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  const int dev = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
  cudaStream_t st = stream(dev);
  SESSA_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, st), "copy");
  // Host memory is pageable: wait so the host buffer may be reused or read at once.
  if (dst_dev.is_cpu() || src_dev.is_cpu()) SESSA_CUDA_CHECK(cudaStreamSynchronize(st), "copy");
}

int sm_count(int device) {
  int n = 0;
  SESSA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "sm_count");
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  SESSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device), "device_name");
  return prop.name;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace sessa::cuda
