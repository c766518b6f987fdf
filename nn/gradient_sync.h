// What the Trainer needs from data parallelism, as an interface: dist/ implements
// it over NCCL or MPI (dist/data_parallel.h); without one, training runs in a single
// process. The Trainer scales each replica's loss by 1 / replicas(), so the summed
// gradients are the mean over the global batch.
#pragma once
#include <vector>

#include "autograd/node.h"
#include "nn/parameter_buffer.h"

namespace sessa::nn {

class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual int replicas() const = 0;
  // Elements of the parameter buffer this replica's optimizer updates: all of them,
  // or its shard under ZeRO-1.
  virtual std::vector<Range> owned_ranges() const = 0;
  // For the backward of the last micro-batch: reduces each bucket of gradients as
  // soon as they are final, while backward goes on.
  virtual autograd::LeafReadyHook on_gradient_ready() = 0;
  // After that backward: reduces what is left; the owned gradients are then summed
  // over replicas.
  virtual void finish_gradients() = 0;
  // Sums a per-shard 0-d device tensor over the replicas in place (nothing to do
  // when every replica owns the whole buffer).
  virtual void sum_over_shards_(const Tensor& value) = 0;
  // After the optimizer step: every replica gets the updated parameters.
  virtual void after_step() = 0;
  // A flat tensor laid out like the parameter buffer from each replica's owned part
  // (the optimizer moments, for a checkpoint). Every replica must call it.
  virtual Tensor gather_owned(const Tensor& owned) = 0;
  // The mean of a host value over the replicas (the loss to report).
  virtual double average(double value) = 0;
};

}  // namespace sessa::nn
