// Seeded random tensors. A Generator is a (seed, offset) pair: each draw of n
// numbers uses counters offset .. offset+n-1 and advances the offset by n.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sessa {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t o) { offset_ = o; }
  // Reserves n counters and returns the first.
  uint64_t advance(uint64_t n) {
    uint64_t first = offset_;
    offset_ += n;
    return first;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, TensorOptions opt = {});
Tensor normal(const Shape& shape, double mean, double stddev, Generator& gen, TensorOptions opt = {});

}  // namespace sessa
