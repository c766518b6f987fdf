// LayerNorm over the last dim (D) on CUDA; rows are the other dims flattened.
//
// Forward, one block per row (two passes over the row, the second from cache):
//   mean = sum(x) / D,  rstd = 1 / sqrt(sum((x - mean)^2) / D + eps),
//   y = (x - mean) * rstd * weight + bias.
// Backward, with xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))          (per row, as forward)
//   dweight = sum_rows dy * xhat,  dbias = sum_rows dy          (over rows)
// Each backward block handles a fixed run of consecutive rows and keeps its column
// partial sums of dy * xhat and dy in shared memory (each thread owns its columns, so
// no atomics); a second kernel adds the partials of all blocks in a fixed order.
// Results are deterministic and depend only on the shapes.
//
// Mixed precision: x bfloat16 with float32 weight/bias. Statistics and partial sums
// are float (double for float64 inputs).
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/rowops.h"

namespace sessa::cuda {

namespace {

constexpr int64_t kMaxPartials = 1024;  // backward blocks (row runs) at most

template <class T, class W>
__global__ void layer_norm_forward_kernel(const T* __restrict__ x, const W* __restrict__ w, const W* __restrict__ b,
                                          T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                                          int64_t D, acc_t<T> eps) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  T* yr = y + row * D;
  A s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += load(xr + i);
  const A m = block_sum(s) / A(D);
  A ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const A d = load(xr + i) - m;
    ss += d * d;
  }
  const A rs = A(1) / math::sqrt(block_sum(ss) / A(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    store(yr + i, (load(xr + i) - m) * rs * A(load(w + i)) + A(load(b + i)));
  if (threadIdx.x == 0) mean[row] = m, rstd[row] = rs;
}

template <class T, class W>
__global__ void layer_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const W* __restrict__ w,
                                           const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                           T* __restrict__ dx, acc_t<T>* __restrict__ part_dw,
                                           acc_t<T>* __restrict__ part_db, int64_t rows, int64_t D,
                                           int64_t rows_per_block) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* sdw = reinterpret_cast<A*>(smem);  // column partials; thread k owns columns k, k + blockDim.x, ...
  A* sdb = sdw + D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) sdw[i] = 0, sdb[i] = 0;
  const int64_t r0 = blockIdx.x * rows_per_block, r1 = min(rows, r0 + rows_per_block);
  for (int64_t r = r0; r < r1; ++r) {
    const T *xr = x + r * D, *dyr = dy + r * D;
    const A m = mean[r], rs = rstd[r];
    A sg = 0, sgx = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      const A xh = (load(xr + i) - m) * rs, d = load(dyr + i), g = d * A(load(w + i));
      sg += g, sgx += g * xh;
      sdw[i] += d * xh, sdb[i] += d;
    }
    const A mg = block_sum(sg) / A(D), mgx = block_sum(sgx) / A(D);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      const A xh = (load(xr + i) - m) * rs, g = load(dyr + i) * A(load(w + i));
      store(dx + r * D + i, rs * (g - mg - xh * mgx));
    }
  }
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    part_dw[blockIdx.x * D + i] = sdw[i];
    part_db[blockIdx.x * D + i] = sdb[i];
  }
}

// dweight/dbias = sums of the partials over blocks. Block (32, 32): 32 columns, each
// summed by 32 threads over strided partial rows, then in shared memory.
template <class W, class A>
__global__ void layer_norm_param_grads_kernel(const A* __restrict__ part_dw, const A* __restrict__ part_db,
                                              W* __restrict__ dw, W* __restrict__ db, int64_t nparts, int64_t D) {
  __shared__ A sw[32][33], sb[32][33];
  const int64_t i = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A tw = 0, tb = 0;
  if (i < D)
    for (int64_t k = threadIdx.y; k < nparts; k += 32) tw += part_dw[k * D + i], tb += part_db[k * D + i];
  sw[threadIdx.y][threadIdx.x] = tw, sb[threadIdx.y][threadIdx.x] = tb;
  __syncthreads();
  if (threadIdx.y == 0 && i < D) {
    for (int k = 1; k < 32; ++k) tw += sw[k][threadIdx.x], tb += sb[k][threadIdx.x];
    store(dw + i, tw);
    store(db + i, tb);
  }
}

// Calls f(W{}) with the weight's element type: T, or float for bfloat16 x with float32 weights.
template <class T, class F>
void dispatch_weight(DType wt, F&& f) {
  if constexpr (std::is_same_v<T, bf16_t>)
    if (wt == DType::F32) return f(float{});
  f(T{});
}

void check_params(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const DType xt = x.dtype(), wt = weight.dtype();
  SESSA_CHECK(weight.device() == x.device() && bias.device() == x.device(), op,
              "weight " << weight.str() << " and bias " << bias.str() << " must be on the device of " << x.str());
  SESSA_CHECK((wt == xt || (xt == DType::BF16 && wt == DType::F32)) && bias.dtype() == wt, op,
              "weight " << weight.str() << " and bias " << bias.str() << " must have the dtype of " << x.str()
                        << " (or float32 for bfloat16 input)");
}

}  // namespace

ops::LayerNormOut layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  check_params("layer_norm", x_in, weight, bias);
  Tensor x = ops::contiguous(x_in), w = ops::contiguous(weight), b = ops::contiguous(bias);
  const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  const TensorOptions stat_opt{acc_dtype(x.dtype()), x.device()};
  ops::LayerNormOut out{empty_like(x), Tensor::empty(stat_shape, stat_opt), Tensor::empty(stat_shape, stat_opt)};
  if (rows == 0) return out;
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_weight<T>(w.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      layer_norm_forward_kernel<T, W><<<unsigned(rows), row_threads_warps(D), 0, st>>>(
          ptr<T>(x), ptr<W>(w), ptr<W>(b), ptr<T>(out.y), ptr<A>(out.mean), ptr<A>(out.rstd), D, A(eps));
      SESSA_CUDA_LAUNCH_CHECK("layer_norm");
    });
  });
  return out;
}

ops::LayerNormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                        const Tensor& mean_in, const Tensor& rstd_in) {
  const char* op = "layer_norm_backward";
  check_params(op, x_in, weight, weight);
  const DType sdt = acc_dtype(x_in.dtype());
  SESSA_CHECK(dy_in.dtype() == x_in.dtype() && dy_in.device() == x_in.device(), op,
              "gradient " << dy_in.str() << " does not match input " << x_in.str());
  SESSA_CHECK(mean_in.dtype() == sdt && rstd_in.dtype() == sdt && mean_in.device() == x_in.device() &&
                  rstd_in.device() == x_in.device(),
              op,
              "mean " << mean_in.str() << " and rstd " << rstd_in.str() << " must be " << dtype_name(sdt) << " on "
                      << x_in.device().str());
  Tensor x = ops::contiguous(x_in), dy = ops::contiguous(dy_in), w = ops::contiguous(weight);
  Tensor mean = ops::contiguous(mean_in), rstd = ops::contiguous(rstd_in);
  const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
  SESSA_CHECK(mean.numel() == rows && rstd.numel() == rows, op,
              "mean " << mean.shape() << " and rstd " << rstd.shape() << " need " << rows << " rows");
  ops::LayerNormGrads g{empty_like(x), Tensor::empty({D}, w.options()), Tensor::empty({D}, w.options())};
  if (D == 0) return g;
  const int dev = x.device().index;
  cudaStream_t st = stream(dev);
  if (rows == 0) {  // no rows: zero parameter gradients (all-zero bytes in every float dtype)
    SESSA_CUDA_CHECK(cudaMemsetAsync(g.dweight.raw_data(), 0, size_t(D) * dtype_size(w.dtype()), st), op);
    SESSA_CUDA_CHECK(cudaMemsetAsync(g.dbias.raw_data(), 0, size_t(D) * dtype_size(w.dtype()), st), op);
    return g;
  }
  const int64_t rows_per_block = (rows + kMaxPartials - 1) / kMaxPartials;
  const int64_t nparts = (rows + rows_per_block - 1) / rows_per_block;
  Tensor parts = Tensor::empty({2, nparts, D}, {sdt, x.device()});
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_weight<T>(w.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      const size_t smem = size_t(2 * D) * sizeof(A);
      auto kernel = layer_norm_backward_kernel<T, W>;
      if (smem > 48 * 1024) {  // beyond the default limit: opt in, up to what the device allows
        int limit = 0;
        SESSA_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), op);
        SESSA_CHECK(
            smem <= size_t(limit), op,
            "last dim " << D << " is too large for the CUDA kernel (at most " << limit / (2 * sizeof(A)) << ")");
        SESSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
      }
      A* pdw = ptr<A>(parts);
      A* pdb = pdw + nparts * D;
      kernel<<<unsigned(nparts), row_threads_warps(D), smem, st>>>(ptr<T>(dy), ptr<T>(x), ptr<W>(w), ptr<A>(mean),
                                                                   ptr<A>(rstd), ptr<T>(g.dx), pdw, pdb, rows, D,
                                                                   rows_per_block);
      SESSA_CUDA_LAUNCH_CHECK(op);
      layer_norm_param_grads_kernel<W, A>
          <<<unsigned((D + 31) / 32), dim3(32, 32), 0, st>>>(pdw, pdb, ptr<W>(g.dweight), ptr<W>(g.dbias), nparts, D);
      SESSA_CUDA_LAUNCH_CHECK(op);
    });
  });
  return g;
}

}  // namespace sessa::cuda
