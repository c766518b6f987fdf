// main() of the GPU test program: skips everything, in one line, without a GPU;
// otherwise poisons fresh device memory so unwritten outputs fail, and runs doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "tensor/cuda/runtime.h"
#include "tensor/device.h"

int main(int argc, char** argv) {
  if (!sessa::cuda_available()) {
    std::printf("test_cuda: no CUDA GPU visible, GPU parity tests skipped\n");
    return 0;
  }
  sessa::cuda::set_poison(true);
  doctest::Context context(argc, argv);
  return context.run();
}
