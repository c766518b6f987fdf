// The feedback gate's CUDA kernels (sessa/gate.h): gamma = gamma_max tanh(z + b) over the (B, T)
// gate projection, and its backward. z is small (B T elements), so each is a grid-stride
// pass in the arithmetic type (float, double for double); the bias's gradient, a sum over
// every element, is a block partial per block of the backward pass and then one block that
// adds the partials in block order (deterministic: the grid depends only on B T).
#include <algorithm>
#include <type_traits>

#include "sessa/gate.h"
#include "tensor/cuda/common.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

constexpr int kGateBlocks = 128;  // at most, for the backward's partial sums

template <class T, class B>
__global__ void gate_forward_kernel(const T* __restrict__ z, const B* __restrict__ bias, T* __restrict__ gamma,
                                    int64_t n, acc_t<T> gamma_max) {
  using A = acc_t<T>;
  const A b = A(load(bias));
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store(gamma + i, gamma_max * math::tanh(load(z + i) + b));
}

// dz = dgamma gamma_max (1 - tanh^2(z + b)); partial[blockIdx.x] = the block's sum of dz (the
// values before rounding to T).
template <class T, class B>
__global__ void gate_backward_kernel(const T* __restrict__ dgamma, const T* __restrict__ z, const B* __restrict__ bias,
                                     T* __restrict__ dz, acc_t<T>* __restrict__ partial, int64_t n,
                                     acc_t<T> gamma_max) {
  using A = acc_t<T>;
  const A b = A(load(bias));
  A sum = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const A u = math::tanh(load(z + i) + b), d = load(dgamma + i) * gamma_max * (A(1) - u * u);
    store(dz + i, d);
    sum += d;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// dbias (+)= the sum of `blocks` partials, one block, in a fixed order.
template <class A, class B>
__global__ void gate_bias_grad_kernel(const A* __restrict__ partial, int blocks, B* __restrict__ dbias, bool add) {
  A sum = 0;
  for (int k = threadIdx.x; k < blocks; k += blockDim.x) sum += partial[k];
  sum = block_sum(sum);
  if (threadIdx.x == 0) store(dbias, add ? A(load(dbias)) + sum : sum);
}

// f(T{}, B{}): z's element type and the bias's (T, or float beside bfloat16).
template <class F>
void dispatch_gate(const Tensor& z, const Tensor& bias, const char* op, F&& f) {
  dispatch_float(z.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bf16_t>)
      if (bias.dtype() == DType::F32) return f(T{}, float{});
    f(T{}, T{});
  });
}

}  // namespace

Tensor gate_forward(const Tensor& z_in, const Tensor& bias, double gamma_max) {
  const Tensor z = ops::contiguous(z_in);
  Tensor gamma = Tensor::empty(z.shape(), z.options());
  const int64_t n = z.numel();
  if (n == 0) return gamma;
  dispatch_gate(z, bias, "gate", [&](auto tag, auto bias_tag) {
    using T = decltype(tag);
    using B = decltype(bias_tag);
    gate_forward_kernel<T, B><<<grid_stride_blocks(n), kThreads, 0, stream(z.device().index)>>>(
        ptr<T>(z), ptr<B>(bias), ptr<T>(gamma), n, acc_t<T>(gamma_max));
  });
  SESSA_CUDA_LAUNCH_CHECK("gate");
  return gamma;
}

layer::GateGrads gate_backward(const Tensor& dgamma_in, const Tensor& z_in, const Tensor& bias, double gamma_max,
                               const Tensor& dbias_sum) {
  const char* op = "gate_backward";
  const Tensor z = ops::contiguous(z_in), dgamma = ops::contiguous(dgamma_in);
  const bool add = dbias_sum.defined();
  layer::GateGrads g{Tensor::empty(z.shape(), z.options()), add ? dbias_sum : Tensor::empty({}, bias.options())};
  const int64_t n = z.numel();
  const int blocks = int(std::min<int64_t>(blocks_for(n), kGateBlocks));
  const cudaStream_t st = stream(z.device().index);
  dispatch_gate(z, bias, op, [&](auto tag, auto bias_tag) {
    using T = decltype(tag);
    using B = decltype(bias_tag);
    using A = acc_t<T>;
    const Tensor partial = Tensor::empty({blocks}, {dtype_of<A>(), z.device()});
    gate_backward_kernel<T, B><<<unsigned(blocks), kThreads, 0, st>>>(ptr<T>(dgamma), ptr<T>(z), ptr<B>(bias),
                                                                      ptr<T>(g.dz), ptr<A>(partial), n, A(gamma_max));
    gate_bias_grad_kernel<A, B><<<1, kThreads, 0, st>>>(ptr<A>(partial), blocks, ptr<B>(g.dbias), add);
  });
  SESSA_CUDA_LAUNCH_CHECK(op);
  return g;
}

}  // namespace sessa::cuda
