// All parameters of a model in one flat buffer, and all their gradients in a
// second buffer of the same layout. Each parameter tensor (and its .grad) becomes
// a view into these buffers, so whole-model work runs as a few large launches:
// zeroing gradients, the gradient norm, the AdamW update, and the all-reduce of
// data parallelism (dist/).
//
// Layout: weight-decayed parameters first, then the rest, so decay is one boundary
// (decay_end). The buffer is cut into buckets of about `bucket_bytes`, formed from
// the end of the buffer because backward produces the gradients of the last layers
// first; a bucket can be reduced as soon as the gradients of its parameters are
// final. Each parameter starts on a 64-element boundary, and each bucket's length
// is a multiple of 64 x `shards`, so it splits into equal aligned shards (ZeRO-1).
// The padding between parameters is zero in data, gradient and optimizer state.
#pragma once
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nn/layers.h"
#include "nn/module.h"

namespace sessa::nn {

struct ParameterLayout {
  int64_t bucket_bytes = 32 << 20;
  int64_t shards = 1;
};

struct Range {  // elements [begin, end) of the flat buffer
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

class ParameterBuffer {
 public:
  // Copies the current values of `params` (all one dtype and device) into the buffer
  // and rebinds each module member to its view.
  explicit ParameterBuffer(std::vector<NamedParameter> params, ParameterLayout layout = {});
  ParameterBuffer(const ParameterBuffer&) = delete;
  ParameterBuffer& operator=(const ParameterBuffer&) = delete;

  struct Entry {
    NamedParameter param;
    Range range;  // its elements (numel = range.size())
  };
  const std::vector<Entry>& entries() const { return entries_; }
  // Buckets in the order backward completes them: the end of the buffer first.
  const std::vector<Range>& buckets() const { return buckets_; }
  // The bucket holding `leaf`'s elements, or -1 when it is not one of these parameters.
  int bucket_of(const Tensor& leaf) const;
  int64_t decay_end() const { return decay_end_; }  // [0, decay_end) is weight-decayed
  int64_t numel() const { return data_.numel(); }
  int64_t shards() const { return layout_.shards; }

  const Tensor& data() const { return data_; }  // 1-D
  const Tensor& grad() const { return grad_; }  // 1-D, same layout
  void zero_grad();                             // one fill over every gradient

  // Mixed precision: every parameter converted to `dtype` by one conversion of the whole
  // buffer into a second flat buffer, and each parameter's view of it by identity (for an
  // AutocastScope; nn/layers.h). The copies are current until the parameters next change:
  // the trainer refreshes them at the start of every step.
  const ComputeCopies& refresh_compute_copies(DType dtype);

  // (name, view shaped like the parameter) for each parameter, over any flat tensor
  // laid out like data() (the optimizer moments, a checkpoint buffer).
  std::vector<std::pair<std::string, Tensor>> views(const Tensor& flat) const;

 private:
  ParameterLayout layout_;
  std::vector<Entry> entries_;
  std::vector<Range> buckets_;
  std::unordered_map<const void*, int> bucket_of_leaf_;
  int64_t decay_end_ = 0;
  Tensor data_, grad_;
  Tensor compute_;  // the compute copy (refresh_compute_copies), allocated by its first call
  ComputeCopies compute_copies_;
};

}  // namespace sessa::nn
