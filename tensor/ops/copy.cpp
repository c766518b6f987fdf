// Copies, casts, device transfers and fills.
#include <cstring>

#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

// dst[i] = convert(src[i]) on the host, src broadcast to dst's shape.
void cpu_copy(const Tensor& dst, const Tensor& src) {
  Shape src_strides = broadcast_strides(src.shape(), src.strides(), dst.shape());
  dispatch_dtype<bf16>(dst.dtype(), [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_dtype<bf16>(src.dtype(), [&](auto src_tag) {
      using S = decltype(src_tag);
      D* out = static_cast<D*>(dst.raw_data());
      const S* in = static_cast<const S*>(src.raw_data());
      if constexpr (std::is_same_v<D, S>) {
        if (dst.is_contiguous() && src.is_contiguous() && dst.shape() == src.shape()) {
          std::memcpy(static_cast<void*>(out), in, size_t(dst.numel()) * sizeof(D));
          return;
        }
      }
      cpu::strided_loop<2>(dst.shape(), {dst.strides(), src_strides},
                           [&](const auto& off) { out[off[0]] = cpu::convert<D>(in[off[1]]); });
    });
  });
}

}  // namespace

void copy_(const Tensor& dst, const Tensor& src) {
  broadcast_shapes(dst.shape(), src.shape(), "copy_");
  SESSA_CHECK(numel(broadcast_shapes(dst.shape(), src.shape(), "copy_")) == dst.numel(), "copy_",
              "cannot copy " << src.shape() << " into " << dst.shape());
  if (dst.device() == src.device()) {
    if (dst.device().is_cpu()) return cpu_copy(dst, src);
    SESSA_CUDA_CALL(return cuda::copy_(dst, src));
  }
  // Across devices: move src's bytes as they are, then cast/lay out on the destination.
  Tensor packed = contiguous(src);
  Tensor staged = Tensor::empty(packed.shape(), {packed.dtype(), dst.device()});
  SESSA_CUDA_CALL(cuda::copy_bytes(staged.raw_data(), staged.device(), packed.raw_data(), packed.device(),
                                   size_t(packed.numel()) * dtype_size(packed.dtype())));
  copy_(dst, staged);
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : clone(x); }

Tensor unit_last_stride(const Tensor& x) { return x.dim() == 0 || x.strides().back() == 1 ? x : clone(x); }

Tensor clone(const Tensor& x) {
  Tensor y = empty_like(x);
  copy_(y, x);
  return y;
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = Tensor::empty(x.shape(), {dtype, x.device()});
  copy_(y, x);
  return y;
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  Tensor y = Tensor::empty(x.shape(), {x.dtype(), device});
  copy_(y, x);
  return y;
}

void fill_(const Tensor& x, double value) {
  if (x.device().is_cpu()) {
    dispatch_dtype<bf16>(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T v = cpu::convert<T>(value);
      T* p = static_cast<T*>(x.raw_data());
      cpu::strided_loop<1>(x.shape(), {x.strides()}, [&](const auto& off) { p[off[0]] = v; });
    });
    return;
  }
  SESSA_CUDA_CALL(cuda::fill_(x, value));
}

}  // namespace sessa::ops
