// LayerNorm over the last dim (D) on CUDA; rows are the other dims flattened.
//
// Forward, one warp per row (three passes over the row, the second and third from L1),
// in 16-byte packs of the row where D and the pointers allow:
//   mean = sum(x) / D,  rstd = 1 / sqrt(sum((x - mean)^2) / D + eps),
//   y = (x - mean) * rstd * weight + bias.
// Backward, with xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))          (per row, as forward;
//        added to dx's old value instead when kAddDx: a residual stream's gradient)
//   dweight = sum_rows dy * xhat,  dbias = sum_rows dy          (over rows)
// Each backward block handles a fixed run of consecutive rows, one warp per row, and
// keeps per-warp column partial sums of dy * xhat and dy in shared memory (each lane owns
// its columns, so no atomics); the block adds its warps' partials in a fixed order, and
// a second kernel adds the partials of all blocks in a fixed order.
// Results are deterministic and depend only on the shapes.
//
// Mixed precision: x bfloat16 with float32 weight/bias. Statistics and partial sums
// are float (double for float64 inputs).
#include <initializer_list>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/rowops.h"

namespace sessa::cuda {

namespace {

constexpr int64_t kMaxPartials = 1024;  // backward blocks (row runs) at most
constexpr int kRowWarps = 8;            // rows in flight per block (one warp each), at most

// Lane `lane` of a warp owns packs lane, lane + 32, ... of a row of D / P packs of P
// elements (16 bytes of x when D and the pointers allow, else 1); the weight's packs of
// P elements may be 32 bytes (float32 weights of bfloat16 rows).

// One warp per row, kRowWarps rows per block; three passes over the row (the second and
// third from L1): the mean, the variance about it, then y.
template <int P, class T, class W>
__global__ void __launch_bounds__(kRowWarps * 32)
    layer_norm_forward_kernel(const T* __restrict__ x, const W* __restrict__ w, const W* __restrict__ b,
                              T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd, int64_t rows,
                              int64_t D, acc_t<T> eps) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32, packs = D / P;
  if (row >= rows) return;
  const T* xr = x + row * D;
  A s = 0;
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T, P> px = load_pack<P>(xr, k * P);
#pragma unroll
    for (int e = 0; e < P; ++e) s += load(&px.v[e]);
  }
  const A m = warp_sum(s) / A(D);
  A ss = 0;
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T, P> px = load_pack<P>(xr, k * P);
#pragma unroll
    for (int e = 0; e < P; ++e) {
      const A d = load(&px.v[e]) - m;
      ss += d * d;
    }
  }
  const A rs = A(1) / math::sqrt(warp_sum(ss) / A(D) + eps);
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T, P> px = load_pack<P>(xr, k * P);
    const Pack<W, P> pw = load_pack<P>(w, k * P), pb = load_pack<P>(b, k * P);
    Pack<T, P> py;
#pragma unroll
    for (int e = 0; e < P; ++e) store(&py.v[e], (load(&px.v[e]) - m) * rs * A(load(&pw.v[e])) + A(load(&pb.v[e])));
    store_pack(y + row * D, k * P, py);
  }
  if (lane == 0) mean[row] = m, rstd[row] = rs;
}

// A block of W warps (as many of kRowWarps as the shared memory allows for D) handles a
// run of rows_per_block consecutive rows, its warps taking every W-th one. Per row: pass
// 1 sums g and g xhat (warp sums) and adds dy xhat, dy to the warp's own column partials
// in shared memory (each lane its own packs of columns: no atomics, no barriers); pass 2
// writes dx. At the end the warps' partials are added in warp order into the block's row
// of part_dw, part_db.
template <int P, bool kAddDx, class T, class W>
__global__ void __launch_bounds__(kRowWarps * 32)
    layer_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const W* __restrict__ w,
                               const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd, T* __restrict__ dx,
                               acc_t<T>* __restrict__ part_dw, acc_t<T>* __restrict__ part_db, int64_t rows, int64_t D,
                               int64_t rows_per_block) {
  using A = acc_t<T>;
  extern __shared__ __align__(32) unsigned char smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  A* sdw = reinterpret_cast<A*>(smem) + warp * 2 * D;  // this warp's column partials
  A* sdb = sdw + D;
  const int64_t packs = D / P, r0 = blockIdx.x * rows_per_block, r1 = min(rows, r0 + rows_per_block);
  for (int64_t k = lane; k < packs; k += 32)  // each lane zeroes the packs it owns: no other lane reads them
    store_pack(sdw, k * P, Pack<A, P>{}), store_pack(sdb, k * P, Pack<A, P>{});
  for (int64_t r = r0 + warp; r < r1; r += warps) {
    const T *xr = x + r * D, *dyr = dy + r * D;
    const A m = mean[r], rs = rstd[r];
    A sg = 0, sgx = 0;
    for (int64_t k = lane; k < packs; k += 32) {
      const Pack<T, P> px = load_pack<P>(xr, k * P), pd = load_pack<P>(dyr, k * P);
      const Pack<W, P> pw = load_pack<P>(w, k * P);
      Pack<A, P> cw = load_pack<P>(sdw, k * P), cb = load_pack<P>(sdb, k * P);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const A xh = (load(&px.v[e]) - m) * rs, d = load(&pd.v[e]), g = d * A(load(&pw.v[e]));
        sg += g, sgx += g * xh;
        cw.v[e] += d * xh, cb.v[e] += d;
      }
      store_pack(sdw, k * P, cw), store_pack(sdb, k * P, cb);
    }
    const A mg = warp_sum(sg) / A(D), mgx = warp_sum(sgx) / A(D);
    for (int64_t k = lane; k < packs; k += 32) {
      const Pack<T, P> px = load_pack<P>(xr, k * P), pd = load_pack<P>(dyr, k * P);
      const Pack<W, P> pw = load_pack<P>(w, k * P);
      Pack<T, P> out;
      if constexpr (kAddDx) out = load_pack<P>(dx + r * D, k * P);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const A xh = (load(&px.v[e]) - m) * rs, g = load(&pd.v[e]) * A(load(&pw.v[e]));
        const A d = rs * (g - mg - xh * mgx);
        store(&out.v[e], kAddDx ? load(&out.v[e]) + d : d);
      }
      store_pack(dx + r * D, k * P, out);
    }
  }
  __syncthreads();
  const A* all = reinterpret_cast<const A*>(smem);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    A tw = 0, tb = 0;
    for (int v = 0; v < warps; ++v) tw += all[v * 2 * D + i], tb += all[v * 2 * D + D + i];
    part_dw[blockIdx.x * D + i] = tw;
    part_db[blockIdx.x * D + i] = tb;
  }
}

// Whether D and every pointer (rows of T, parameters of W) allow packs of kPackOf<T>.
template <class T, class W>
bool rows_packed(int64_t D, std::initializer_list<const void*> rows, std::initializer_list<const void*> params) {
  constexpr int P = kPackOf<T>;
  bool ok = D % P == 0;
  for (const void* p : rows) ok = ok && pack_aligned<P>(static_cast<const T*>(p));
  for (const void* p : params) ok = ok && pack_aligned<P>(static_cast<const W*>(p));
  return ok;
}

// dweight/dbias = sums of the partials over blocks. Block (32, 32): 32 columns, each
// summed by 32 threads over strided partial rows, then in shared memory.
template <class W, class A>
__global__ void layer_norm_param_grads_kernel(const A* __restrict__ part_dw, const A* __restrict__ part_db,
                                              W* __restrict__ dw, W* __restrict__ db, bool add_dw, bool add_db,
                                              int64_t nparts, int64_t D) {
  __shared__ A sw[32][33], sb[32][33];
  const int64_t i = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A tw = 0, tb = 0;
  if (i < D)
    for (int64_t k = threadIdx.y; k < nparts; k += 32) tw += part_dw[k * D + i], tb += part_db[k * D + i];
  sw[threadIdx.y][threadIdx.x] = tw, sb[threadIdx.y][threadIdx.x] = tb;
  __syncthreads();
  if (threadIdx.y == 0 && i < D) {
    for (int k = 1; k < 32; ++k) tw += sw[k][threadIdx.x], tb += sb[k][threadIdx.x];
    store(dw + i, add_dw ? load(dw + i) + tw : tw);  // (added into a parameter's .grad)
    store(db + i, add_db ? load(db + i) + tb : tb);
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
  const TensorOptions stat_opt{accumulation_dtype(x.dtype()), x.device()};
  ops::LayerNormOut out{empty_like(x), Tensor::empty(stat_shape, stat_opt), Tensor::empty(stat_shape, stat_opt)};
  if (rows == 0) return out;
  cudaStream_t st = stream(x.device().index);
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_weight<T>(w.dtype(), [&](auto wtag) {
      using W = decltype(wtag);
      const bool packed = rows_packed<T, W>(D, {x.raw_data(), out.y.raw_data()}, {w.raw_data(), b.raw_data()});
      with_pack<kPackOf<T>>(packed, [&](auto pack) {
        layer_norm_forward_kernel<decltype(pack)::value, T, W>
            <<<unsigned((rows + kRowWarps - 1) / kRowWarps), kRowWarps * 32, 0, st>>>(
                ptr<T>(x), ptr<W>(w), ptr<W>(b), ptr<T>(out.y), ptr<A>(out.mean), ptr<A>(out.rstd), rows, D, A(eps));
      });
      SESSA_CUDA_LAUNCH_CHECK("layer_norm");
    });
  });
  return out;
}

ops::LayerNormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& weight,
                                        const Tensor& mean_in, const Tensor& rstd_in, const ops::LayerNormGrads& sums) {
  const char* op = "layer_norm_backward";
  check_params(op, x_in, weight, weight);
  const DType sdt = accumulation_dtype(x_in.dtype());
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
  // The gradients go into the sums given (added) or new tensors (written).
  const bool add_dx = sums.dx.defined(), add_dw = sums.dweight.defined(), add_db = sums.dbias.defined();
  ops::LayerNormGrads g{add_dx ? sums.dx : empty_like(x), add_dw ? sums.dweight : Tensor::empty({D}, w.options()),
                        add_db ? sums.dbias : Tensor::empty({D}, w.options())};
  if (D == 0) return g;
  const int dev = x.device().index;
  cudaStream_t st = stream(dev);
  if (rows == 0) {  // no rows: zero parameter gradients (all-zero bytes in every float dtype)
    if (!add_dw) SESSA_CUDA_CHECK(cudaMemsetAsync(g.dweight.raw_data(), 0, size_t(D) * dtype_size(w.dtype()), st), op);
    if (!add_db) SESSA_CUDA_CHECK(cudaMemsetAsync(g.dbias.raw_data(), 0, size_t(D) * dtype_size(w.dtype()), st), op);
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
      // Each warp's column partials: as many warps as the shared memory holds, up to kRowWarps.
      const size_t per_warp = 2 * size_t(D) * sizeof(A);
      int limit = 0;
      SESSA_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), op);
      SESSA_CHECK(per_warp <= size_t(limit), op,
                  "last dim " << D << " is too large for the CUDA kernel (at most " << limit / (2 * sizeof(A)) << ")");
      const int warps = int(std::min<size_t>(kRowWarps, size_t(limit) / per_warp));
      const size_t smem = warps * per_warp;
      A* pdw = ptr<A>(parts);
      A* pdb = pdw + nparts * D;
      const bool packed = rows_packed<T, W>(D, {dy.raw_data(), x.raw_data(), g.dx.raw_data()}, {w.raw_data()});
      const auto launch = [&](auto pack, auto add) {
        auto kernel = layer_norm_backward_kernel<decltype(pack)::value, decltype(add)::value, T, W>;
        allow_dynamic_smem(kernel, smem, op);
        kernel<<<unsigned(nparts), warps * 32, smem, st>>>(ptr<T>(dy), ptr<T>(x), ptr<W>(w), ptr<A>(mean), ptr<A>(rstd),
                                                           ptr<T>(g.dx), pdw, pdb, rows, D, rows_per_block);
      };
      with_pack<kPackOf<T>>(packed, [&](auto pack) {
        if (add_dx)
          launch(pack, std::true_type{});
        else
          launch(pack, std::false_type{});
      });
      SESSA_CUDA_LAUNCH_CHECK(op);
      layer_norm_param_grads_kernel<W, A><<<unsigned((D + 31) / 32), dim3(32, 32), 0, st>>>(
          pdw, pdb, ptr<W>(g.dweight), ptr<W>(g.dbias), add_dw, add_db, nparts, D);
      SESSA_CUDA_LAUNCH_CHECK(op);
    });
  });
  return g;
}

}  // namespace sessa::cuda
