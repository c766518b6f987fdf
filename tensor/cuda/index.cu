// Row indexing: index_select (embedding lookup) and index_add (its backward).
//
// Both see a tensor as (outer, rows, inner) around the indexed dim, so a "row" is
// `inner` contiguous elements. Blocks are 2-D: threadIdx.x runs along a row and
// threadIdx.y over several rows, so short and long rows both fill the block.
// index_select copies rows as raw bytes, in the widest word (16 bytes down to 1) that
// the row size and the pointers allow: it works for every dtype. index_add_ adds each
// gradient row into its target row with atomicAdd, in float32 (double for double), into a
// zeroed buffer (ops::index_add) or straight into an embedding's .grad. The order of
// the atomic additions varies, so sums of repeated ids may differ in the last bit
// between runs. An id outside [0, rows) traps the kernel (the error surfaces at the
// next synchronisation) instead of reading or writing out of bounds.
#include <cstdint>

#include "tensor/cuda/basic.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

// Block shape for rows of `len` elements: x along the row (a power of two up to 256),
// y over rows, 256 threads in all.
dim3 row_block(int64_t len) {
  unsigned x = 1;
  while (x < 256 && x < len) x *= 2;
  return dim3(x, 256 / x);
}
unsigned row_grid(int64_t n_rows, dim3 block) { return unsigned((n_rows + block.y - 1) / block.y); }

__device__ __forceinline__ int64_t checked_id(const int32_t* ids, int64_t i, int64_t rows) {
  const int32_t id = ids[i];
  if (id < 0 || id >= rows) __trap();
  return id;
}

// dst row r = o * n + i is src row (o, ids[i]); rows are `units` words of type U.
template <class U>
__global__ void gather_rows_kernel(const U* src, const int32_t* ids, int64_t n, int64_t rows, int64_t units,
                                   int64_t n_out_rows, U* dst) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (r >= n_out_rows) return;
  const int64_t o = r / n, id = checked_id(ids, r % n, rows);
  const U* s = src + (o * rows + id) * units;
  U* d = dst + r * units;
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) d[u] = s[u];
}

// out row (o, ids[i]) += grad row r = o * n + i, elementwise with atomics.
template <class T, class A>
__global__ void scatter_add_rows_kernel(const T* grad, const int32_t* ids, int64_t n, int64_t rows, int64_t inner,
                                        int64_t n_grad_rows, A* out) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (r >= n_grad_rows) return;
  const int64_t o = r / n, id = checked_id(ids, r % n, rows);
  const T* g = grad + r * inner;
  A* d = out + (o * rows + id) * inner;
  for (int64_t c = threadIdx.x; c < inner; c += blockDim.x) atomicAdd(d + c, A(load(g + c)));
}

template <class U>
void gather(const Tensor& x, const Tensor& index, const AroundDim& a, const Tensor& out, int64_t row_bytes) {
  const int64_t units = row_bytes / int64_t(sizeof(U)), n = index.numel(), n_out_rows = a.outer * n;
  const dim3 block = row_block(units);
  gather_rows_kernel<U><<<row_grid(n_out_rows, block), block, 0, stream(x.device().index)>>>(
      ptr<const U>(x), ptr<const int32_t>(index), n, a.rows, units, n_out_rows, ptr<U>(out));
  SESSA_CUDA_LAUNCH_CHECK("index_select");
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  Shape out_shape(x.shape().begin(), x.shape().begin() + dim);
  out_shape.insert(out_shape.end(), index.shape().begin(), index.shape().end());
  out_shape.insert(out_shape.end(), x.shape().begin() + dim + 1, x.shape().end());
  Tensor out = Tensor::empty(out_shape, x.options());
  if (out.numel() == 0) return out;
  const AroundDim a = around(x.shape(), dim);
  const int64_t row_bytes = a.inner * int64_t(dtype_size(x.dtype()));
  // The widest word dividing the row size and both base addresses (out's is 256-byte aligned).
  const uint64_t align = uint64_t(row_bytes) | reinterpret_cast<uintptr_t>(x.raw_data());
  if (align % 16 == 0)
    gather<uint4>(x, index, a, out, row_bytes);
  else if (align % 8 == 0)
    gather<uint2>(x, index, a, out, row_bytes);
  else if (align % 4 == 0)
    gather<uint32_t>(x, index, a, out, row_bytes);
  else if (align % 2 == 0)
    gather<uint16_t>(x, index, a, out, row_bytes);
  else
    gather<uint8_t>(x, index, a, out, row_bytes);
  return out;
}

void index_add_(const Tensor& dst, int64_t dim, const Tensor& index, const Tensor& grad) {
  const AroundDim a = around(dst.shape(), dim);
  const int64_t n = index.numel(), n_grad_rows = a.outer * n;
  if (n_grad_rows == 0 || a.inner == 0) return;
  dispatch_float(grad.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const dim3 block = row_block(a.inner);
    scatter_add_rows_kernel<T, A><<<row_grid(n_grad_rows, block), block, 0, stream(grad.device().index)>>>(
        ptr<const T>(grad), ptr<const int32_t>(index), n, a.rows, a.inner, n_grad_rows, ptr<A>(dst));
    SESSA_CUDA_LAUNCH_CHECK("index_add");
  });
}

}  // namespace sessa::cuda
