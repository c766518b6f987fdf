// mamba_partials.cuh - the second pass of the Mamba kernels' deterministic parameter
// reductions, shared by nn/mamba_conv.cu (dw and dbias) and nn/mamba_scan.cu (dA and dD).
// The first pass leaves `splits` partial sums, each a (K + 1, C) table, c fastest: row
// j < K holds column j of a (C, K) weight, row K a (C) vector. This pass sums the
// splits in a fixed order (so the result is bitwise reproducible) and writes
// weight[c, j] and vector[c].
#pragma once
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {
namespace {

template <class F>
__global__ void sum_split_partials_kernel(const acc_t<F>* __restrict__ partial, F* __restrict__ weight,
                                          F* __restrict__ vector, int splits, int C, int K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (row j, channel c)
  if (i >= int64_t(K + 1) * C) return;
  const int j = int(i / C), c = int(i % C);
  acc_t<F> s = 0;
  for (int z = 0; z < splits; ++z) s += partial[int64_t(z) * (K + 1) * C + i];
  store(j < K ? weight + int64_t(c) * K + j : vector + c, s);
}

// partial (splits, K + 1, C) -> weight (C, K), vector (C), on `stream`; `op` names the
// caller in a launch error.
template <class F>
void sum_split_partials(const acc_t<F>* partial, F* weight, F* vector, int splits, int C, int K, cudaStream_t stream,
                        const char* op) {
  sum_split_partials_kernel<F>
      <<<blocks_for(int64_t(K + 1) * C), kThreads, 0, stream>>>(partial, weight, vector, splits, C, K);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

}  // namespace
}  // namespace sessa::cuda
