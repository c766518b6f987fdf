#include "tensor/random.h"

#include <vector>

#include "tensor/philox.h"

namespace sessa {

namespace {
// Values are made on the host in double and moved to opt.device: initialisation
// is rare, and this keeps CPU and GPU tensors bit-identical for one seed.
template <class Draw>
Tensor generate(const Shape& shape, Generator& gen, TensorOptions opt, Draw draw) {
  const int64_t n = numel(shape);
  const uint64_t first = gen.advance(uint64_t(n));
  std::vector<double> v(static_cast<size_t>(n));
#pragma omp parallel for if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = draw(gen.seed(), first + uint64_t(i));
  return from_vector(v, shape, opt);
}
}  // namespace

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, TensorOptions opt) {
  return generate(shape, gen, opt, [=](uint64_t s, uint64_t c) { return low + (high - low) * philox::uniform(s, c); });
}

Tensor normal(const Shape& shape, double mean, double stddev, Generator& gen, TensorOptions opt) {
  return generate(shape, gen, opt, [=](uint64_t s, uint64_t c) { return mean + stddev * philox::normal(s, c); });
}

}  // namespace sessa
