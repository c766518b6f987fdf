// GPU checks of the Mamba kernels that the op table (tests/op_table.cpp, driven by
// test_ops.cpp) cannot say. Its entries causal_conv1d and selective_scan compare forward
// and backward with the CPU in float32, bfloat16 and float64 (tap groups, T < K, padded
// state sizes, long scans, strided Bm/Cm views) and require bitwise reproducible runs.
#include "nn/mamba_ops.h"
#include "tests/cuda/parity.h"

namespace sessa::test {

TEST_CASE("cuda selective_scan rejects a state larger than 64") {
  Generator gen(51);
  Tensor u = cpu_randn({1, 2, 3}, gen).to(gpu()), A = cpu_randn({3, 65}, gen).to(gpu());
  Tensor Bm = cpu_randn({1, 2, 65}, gen).to(gpu()), D = cpu_randn({3}, gen).to(gpu());
  check_error([&] { ops::selective_scan(u, u, A, Bm, Bm, D); }, {"selective_scan", "64"});
}

}  // namespace sessa::test
