// Data parallelism: every rank holds the whole model, trains on its own slice of
// the data, and the gradients are summed over the ranks bucket by bucket while
// backward is still running (the Trainer scales the loss by 1 / ranks, so the sum
// is the mean over the global batch). The optimizer step is then identical on
// every rank.
//
// With ZeRO stage 1 (`zero1`) the optimizer state is sharded: each bucket is
// reduce-scattered instead of all-reduced, rank r updates only its part r of each
// bucket (so it keeps AdamW moments for 1 / ranks of the parameters), and the
// updated parameters are all-gathered after the step. Same traffic as an
// all-reduce, less memory per GPU.
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "nn/gradient_sync.h"
#include "nn/trainer.h"

namespace sessa::dist {

class DataParallel : public nn::GradientSync {
 public:
  // `params` must be laid out with shards = world size when zero1 is on. Makes the
  // replicas start equal: rank 0's parameters are broadcast.
  DataParallel(World& world, std::unique_ptr<Communicator> comm, nn::ParameterBuffer& params, bool zero1);

  int replicas() const override { return comm_->size(); }
  std::vector<nn::Range> owned_ranges() const override;
  autograd::LeafReadyHook on_gradient_ready() override;
  void finish_gradients() override;
  void sum_over_shards_(const Tensor& value) override;
  void after_step() override;
  Tensor gather_owned(const Tensor& owned) override;
  double average(double value) override { return world_.sum(value) / double(world_.size()); }

 private:
  Tensor bucket(const Tensor& flat, size_t b) const;
  void bucket_ready(size_t b);

  World& world_;
  std::unique_ptr<Communicator> comm_;
  nn::ParameterBuffer& params_;
  bool zero1_;
  std::vector<int> waiting_for_;  // per bucket: parameters whose gradient is not final yet
  std::vector<bool> ready_;       // per bucket, in this backward
  size_t next_to_reduce_ = 0;     // buckets are reduced in order, the same on every rank
};

// Makes `options` train data-parallel over `world` on this rank's `device` (nothing
// for a world of one process).
void enable_data_parallel(nn::TrainerOptions& options, World& world, Device device, bool zero1);

}  // namespace sessa::dist
