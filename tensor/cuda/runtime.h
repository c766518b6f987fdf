// Per-device CUDA state shared by the kernels: the streams ops run on, and memory
// statistics of the caching allocator.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "tensor/cuda/lane.h"
#include "tensor/cuda_hooks.h"

namespace sessa::cuda {

cudaStream_t stream(int device, Lane lane = Lane::main);  // sets `device` current, returns the lane's stream
int sm_count(int device);                                 // streaming multiprocessors of `device`

// Orders work between the lanes of one device: record(lane) marks the work issued on `lane` so
// far, wait(lane) makes work issued later on `lane` wait for the last marked work. An event may
// be recorded again once the waits on its previous record are issued (CUDA events).
class LaneEvent {
 public:
  explicit LaneEvent(int device);
  ~LaneEvent();
  LaneEvent(const LaneEvent&) = delete;
  LaneEvent& operator=(const LaneEvent&) = delete;
  void record(Lane lane);
  void wait(Lane lane) const;

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

// Forks the priority lane from the main lane of `device` (it waits for the work issued on main
// so far) and, when destroyed, joins it back (main waits for everything issued on the priority
// lane by then), also when the op throws.
class LaneFork {
 public:
  explicit LaneFork(int device);
  ~LaneFork();
  LaneFork(const LaneFork&) = delete;
  LaneFork& operator=(const LaneFork&) = delete;

 private:
  LaneEvent event_;
};

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
