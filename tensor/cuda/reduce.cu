// Reductions: sum over dims, amax/argmax over one dim, and the sum of squares
// behind gradient clipping.
//
// Plan (sum): x is read as an (outer, len, inner) array with the reduced elements
// along len. When x is contiguous and the reduced dims form one block (size-1 dims
// aside) that is x itself; otherwise the reduced dims are permuted to the back and
// copied, giving inner = 1, as on the CPU. inner == 1 reduces rows: one block per row,
// threads striding along it. inner > 1 reduces columns: an 8 x 32 block takes 8 packs of
// neighbouring columns (16 bytes each when inner and x allow: whole 128-byte rows) and 32
// threads down len, then adds its 32 partials. When that makes too few blocks to fill the
// GPU (a bias gradient: few long columns; sum_all: one long row) len is split into chunks
// whose partial sums go to a workspace, added in a fixed order, so results never depend on
// timing: for rows by a second kernel; for columns by the last block of each column group
// to finish (counted by a ticket; one launch instead of two), all its threads at once.
// Sums accumulate in float (double for double).
//
// amax/argmax reduce rows (the dim moved last when it is not already) with a block per
// row; ties go to the first index, as on the CPU. sum_of_squares reduces in double:
// a grid of block partials, then one block over the partials, then one copy to the host.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

// x as (outer, len, inner) with the reduced elements along len.
struct Reduce3 {
  Tensor x;  // contiguous
  int64_t outer = 1, len = 1, inner = 1;
};

// need_rows: only layouts with inner == 1 (the reduced dims permuted last otherwise).
Reduce3 as_reduce3(const Tensor& x, const std::vector<int64_t>& dims, bool need_rows) {
  const int64_t nd = x.dim();
  auto reduced = [&](int64_t d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); };
  if (x.is_contiguous() && !dims.empty()) {
    Reduce3 r{x};
    bool block = true;
    for (int64_t d = dims.front(); d <= dims.back(); ++d) block = block && (reduced(d) || x.shape()[size_t(d)] == 1);
    for (int64_t d = 0; d < nd; ++d)
      (d < dims.front() ? r.outer : d <= dims.back() ? r.len : r.inner) *= x.shape()[size_t(d)];
    if (block && (!need_rows || r.inner == 1)) return r;
  }
  Reduce3 r;
  std::vector<int64_t> order;
  for (int64_t d = 0; d < nd; ++d)
    if (!reduced(d)) order.push_back(d), r.outer *= x.shape()[size_t(d)];
  for (int64_t d : dims) order.push_back(d), r.len *= x.shape()[size_t(d)];
  r.x = ops::contiguous(ops::permute(x, order));
  return r;
}

// Splits len into `split` chunks of `chunk` so that about `target` blocks run, each
// chunk keeping at least `min_chunk` elements.
struct Split {
  int64_t split = 1, chunk = 1;
};
Split choose_split(int64_t base_blocks, int64_t len, int64_t target, int64_t min_chunk) {
  Split s;
  s.chunk = std::max<int64_t>(len, 1);
  if (base_blocks >= target) return s;
  const int64_t want =
      std::min<int64_t>({(target + base_blocks - 1) / base_blocks, (len + min_chunk - 1) / min_chunk, 65535});
  if (want <= 1) return s;
  s.chunk = (len + want - 1) / want;
  s.split = (len + s.chunk - 1) / s.chunk;
  return s;
}

// Row r, chunk blockIdx.y: the sum of x[r, chunk], to out[r] (one chunk) or partial[chunk][r].
template <class T>
__global__ void sum_rows_kernel(const T* x, int64_t len, int64_t chunk, T* out, acc_t<T>* partial) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x, begin = int64_t(blockIdx.y) * chunk, end = min(len, begin + chunk);
  const T* p = x + row * len;
  A acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += load(p + i);
  acc = block_sum(acc);
  if (threadIdx.x != 0) return;
  if (partial)
    partial[int64_t(blockIdx.y) * gridDim.x + row] = acc;
  else
    store(out + row, acc);
}

// Block (8, 32): the kCols = 8 P columns c0 .. c0 + kCols - 1 of slab o (thread x reads P
// neighbouring ones as one pack: a warp reads whole 128-byte rows, four at a time), rows of
// chunk blockIdx.y (thread y every 32nd). Then thread t of the block adds the 32 partials of
// column c0 + t. One chunk: it writes out. Several: it writes its chunk's partial; the last
// block of the column group to arrive (tickets[blockIdx.x], counted atomically after a
// fence, and zeroed again by it) adds the chunks' partials the same way: thread (x, y) the
// chunks y, y + 32, ... of its P columns, then the 32 sums per column (a fixed order: the
// result does not depend on which block came last). out is O: T, or acc_t<T> (a float32
// sum of bfloat16 columns); with `add` the sums are added to what out holds.
constexpr int kColLanes = 8, kColDepth = 32;

// Thread t < kCols: the sum over y of part[y][t] (what the block's threads left there).
template <class A, int kCols>
__device__ A sum_block_column(A (&part)[kColDepth][kCols], int t) {
  A sum = 0;
#pragma unroll 8
  for (int k = 0; k < kColDepth; ++k) sum += part[k][t];
  return sum;
}

template <class T, class O, int P>
__global__ void __launch_bounds__(kColLanes* kColDepth)
    sum_cols_kernel(const T* x, int64_t len, int64_t inner, int64_t col_blocks, int64_t chunk, O* out, bool add,
                    acc_t<T>* partial, int64_t n_out, unsigned* tickets) {
  using A = acc_t<T>;
  constexpr int kCols = kColLanes * P;
  static_assert(kCols <= kColLanes * kColDepth, "a thread per column for the last sums");
  __shared__ A part[kColDepth][kCols];
  __shared__ bool last;
  const int64_t o = blockIdx.x / col_blocks, c0 = (blockIdx.x % col_blocks) * kCols, c = c0 + threadIdx.x * P;
  const int64_t begin = int64_t(blockIdx.y) * chunk, end = min(len, begin + chunk);
  A acc[P] = {};
  auto add_row = [&](const Pack<T, P>& v) {
#pragma unroll
    for (int k = 0; k < P; ++k) acc[k] += load(&v.v[k]);
  };
  if (c < inner) {  // (inner is a multiple of P) two rows' loads in flight, then the odd one
    const T* col = x + o * len * inner + c;
    int64_t r = begin + threadIdx.y;
    for (; r + kColDepth < end; r += 2 * kColDepth) {
      const Pack<T, P> v0 = load_pack<P>(col, r * inner), v1 = load_pack<P>(col, (r + kColDepth) * inner);
      add_row(v0), add_row(v1);
    }
    if (r < end) add_row(load_pack<P>(col, r * inner));
  }
#pragma unroll
  for (int k = 0; k < P; ++k) part[threadIdx.y][threadIdx.x * P + k] = acc[k];
  __syncthreads();
  const int t = threadIdx.y * kColLanes + threadIdx.x;
  const bool mine = t < kCols && c0 + t < inner;
  const int64_t at = o * inner + c0 + t;  // this thread's column in out
  const A sum = mine ? sum_block_column(part, t) : A(0);
  if (gridDim.y == 1) {
    if (mine) store(out + at, add ? load(out + at) + sum : sum);
    return;
  }
  if (mine) partial[int64_t(blockIdx.y) * n_out + at] = sum;
  __threadfence();  // the partial is visible before the ticket counts it
  __syncthreads();
  if (t == 0) last = atomicAdd(tickets + blockIdx.x, 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  A total[P] = {};
  if (c < inner)  // L2 reads (__ldcg): the other blocks' partials, not this SM's L1
    for (int64_t z = threadIdx.y; z < gridDim.y; z += kColDepth)
#pragma unroll
      for (int k = 0; k < P; ++k) total[k] += __ldcg(partial + z * n_out + o * inner + c + k);
#pragma unroll
  for (int k = 0; k < P; ++k) part[threadIdx.y][threadIdx.x * P + k] = total[k];
  __syncthreads();
  if (mine) {
    const A sum_all = sum_block_column(part, t);
    store(out + at, add ? load(out + at) + sum_all : sum_all);
  }
  if (t == 0) tickets[blockIdx.x] = 0;
}

// The column sums' tickets: zero between launches (each group's last block zeroes its own).
// Per device, for launches on its main lane only (every sum runs there, one after another).
constexpr int64_t kMaxTickets = 4096;
constexpr int kMaxDevices = 16;
unsigned* col_tickets(int device) {
  static std::mutex mu;
  static Tensor tickets[kMaxDevices];
  std::lock_guard lock(mu);
  SESSA_CHECK(device >= 0 && device < kMaxDevices, "sum", "device index " << device << " out of range");
  if (!tickets[device].defined()) tickets[device] = zeros({kMaxTickets}, {DType::I32, Device::cuda(device)});
  return reinterpret_cast<unsigned*>(tickets[device].raw_data());
}

// out[i] = sum over chunks of partial[chunk][i], in chunk order.
template <class T>
__global__ void sum_partials_kernel(const acc_t<T>* partial, int64_t split, int64_t n_out, T* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_out) return;
  acc_t<T> acc = 0;
  for (int64_t z = 0; z < split; ++z) acc += partial[z * n_out + i];
  store(out + i, acc);
}

// The max of row blockIdx.x and its first index; either output may be null.
template <class T>
__global__ void max_rows_kernel(const T* x, int64_t len, T* values, int32_t* indices) {
  using A = acc_t<T>;
  __shared__ A best_v[32];
  __shared__ int64_t best_i[32];
  const T* p = x + int64_t(blockIdx.x) * len;
  A v = -INFINITY;
  int64_t at = INT64_MAX;  // no element yet: loses every comparison
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const A e = load(p + i);
    if (e > v || at == INT64_MAX) v = e, at = i;
  }
  auto take = [&](A v2, int64_t at2) {
    if (v2 > v || (v2 == v && at2 < at)) v = v2, at = at2;
  };
  for (int o = 16; o > 0; o >>= 1) take(__shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, at, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) best_v[warp] = v, best_i[warp] = at;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < int(blockDim.x / 32); ++w) take(best_v[w], best_i[w]);
  if (values) store(values + blockIdx.x, v);
  if (indices) indices[blockIdx.x] = int32_t(at);
}

// partial[blockIdx.x] = the block's share of sum x^2, in double; packs of W elements (16
// bytes when x allows), then the n % W tail.
template <int W, class T>
__global__ void sum_squares_kernel(const T* x, int64_t n, double* partial) {
  const int64_t packs = n / W, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  double acc = 0;
  for (int64_t i = first; i < packs; i += stride) {
    const Pack<T, W> p = load_pack<W>(x, i * W);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const double v = double(load(&p.v[e]));
      acc += v * v;
    }
  }
  for (int64_t i = W * packs + first; i < n; i += stride) {
    const double v = double(load(x + i));
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Shared by amax and argmax: rows with `dim` last, one block each.
void max_rows(const Tensor& x, int64_t dim, const Tensor* values, const Tensor* indices, const char* op) {
  const Reduce3 r = as_reduce3(x, {dim}, true);
  const int64_t rows = r.outer;
  if (rows == 0) return;
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    max_rows_kernel<T><<<unsigned(rows), row_threads_pow2(r.len), 0, stream(x.device().index)>>>(
        ptr<const T>(r.x), r.len, values ? ptr<T>(*values) : nullptr, indices ? ptr<int32_t>(*indices) : nullptr);
    SESSA_CUDA_LAUNCH_CHECK(op);
  });
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, x.options());
  sum_into(out, x, dims, false);
  return out;
}

void sum_into(const Tensor& out, const Tensor& x, const std::vector<int64_t>& dims, bool add) {
  if (out.numel() == 0) return;
  const Reduce3 r = as_reduce3(x, dims, false);
  const int device = x.device().index;
  const int64_t target = 4 * int64_t(sm_count(device)), n_out = r.outer * r.inner;
  cudaStream_t st = stream(device);
  dispatch_float(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (r.inner == 1 && out.dtype() != x.dtype()) {  // rows into float32: summed from float32 values
      sum_into(out, ops::cast(x, out.dtype()), dims, add);
      return;
    }
    if (r.inner == 1) {  // rows
      const Tensor dst = add ? Tensor::empty(out.shape(), x.options()) : out;
      const Split s = choose_split(r.outer, r.len, target, 2048);
      Tensor ws;
      if (s.split > 1) ws = Tensor::empty({s.split, n_out}, {dtype_of<A>(), x.device()});
      A* partial = s.split > 1 ? ptr<A>(ws) : nullptr;
      const dim3 grid(unsigned(r.outer), unsigned(s.split));
      sum_rows_kernel<T>
          <<<grid, row_threads_pow2(s.chunk), 0, st>>>(ptr<const T>(r.x), r.len, s.chunk, ptr<T>(dst), partial);
      SESSA_CUDA_LAUNCH_CHECK("sum");
      if (s.split > 1) {
        sum_partials_kernel<T><<<blocks_for(n_out), kThreads, 0, st>>>(partial, s.split, n_out, ptr<T>(dst));
        SESSA_CUDA_LAUNCH_CHECK("sum");
      }
      if (add) add_(out, dst, 1.0);
      return;
    }
    constexpr int P = kPackOf<T>;
    with_pack<P>(r.inner % P == 0 && pack_aligned<P>(ptr<const T>(r.x)), [&](auto pack) {
      constexpr int kP = decltype(pack)::value;
      const int64_t col_blocks = (r.inner + kColLanes * kP - 1) / (kColLanes * kP);
      // Four blocks per SM, chunks of at least 128 rows. (Split only while the column groups
      // number fewer than that: the tickets suffice.)
      const Split s = choose_split(r.outer * col_blocks, r.len, std::min(target, kMaxTickets), 128);
      Tensor ws;
      if (s.split > 1) ws = Tensor::empty({s.split, n_out}, {dtype_of<A>(), x.device()});
      const dim3 grid(unsigned(r.outer * col_blocks), unsigned(s.split)), block(kColLanes, kColDepth);
      A* partial = s.split > 1 ? ptr<A>(ws) : nullptr;
      unsigned* tickets = s.split > 1 ? col_tickets(device) : nullptr;
      if (out.dtype() == x.dtype())
        sum_cols_kernel<T, T, kP><<<grid, block, 0, st>>>(ptr<const T>(r.x), r.len, r.inner, col_blocks, s.chunk,
                                                          ptr<T>(out), add, partial, n_out, tickets);
      else  // (the accumulation type: a float32 sum of bfloat16 columns)
        sum_cols_kernel<T, A, kP><<<grid, block, 0, st>>>(ptr<const T>(r.x), r.len, r.inner, col_blocks, s.chunk,
                                                          ptr<A>(out), add, partial, n_out, tickets);
      SESSA_CUDA_LAUNCH_CHECK("sum");
    });
  });
}

Tensor amax(const Tensor& x, int64_t dim, const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, x.options());
  max_rows(x, dim, &out, nullptr, "amax");
  return out;
}

Tensor argmax(const Tensor& x, int64_t dim, const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, {DType::I32, x.device()});
  max_rows(x, dim, nullptr, &out, "argmax");
  return out;
}

Tensor sum_of_squares(const Tensor& x_in) {
  if (x_in.numel() == 0) return zeros({}, {DType::F64, x_in.device()});
  const Tensor x = ops::contiguous(x_in);
  const int device = x.device().index;
  const int64_t n = x.numel();
  const int64_t blocks = std::min<int64_t>(blocks_for(n), 8 * int64_t(sm_count(device)));
  Tensor partial = Tensor::empty({blocks}, {DType::F64, x.device()});
  Tensor total = Tensor::empty({}, {DType::F64, x.device()});
  cudaStream_t st = stream(device);
  dispatch_float(x.dtype(), "sum_of_squares", [&](auto tag) {
    using T = decltype(tag);
    with_pack<kPackOf<T>>(pack_aligned<kPackOf<T>>(ptr<const T>(x)), [&](auto pack) {
      sum_squares_kernel<decltype(pack)::value, T>
          <<<unsigned(blocks), kThreads, 0, st>>>(ptr<const T>(x), n, ptr<double>(partial));
    });
    SESSA_CUDA_LAUNCH_CHECK("sum_of_squares");
  });
  sum_rows_kernel<double>
      <<<1, row_threads_pow2(blocks), 0, st>>>(ptr<const double>(partial), blocks, blocks, ptr<double>(total), nullptr);
  SESSA_CUDA_LAUNCH_CHECK("sum_of_squares");
  return total;
}

}  // namespace sessa::cuda
