// Elementwise ops: binary arithmetic with broadcasting, affine maps, in-place
// accumulation, and unary math with its derivative.
#include "tensor/cpu/loops.h"
#include "tensor/cuda/basic.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"
#include "tensor/scalar_math.h"

namespace sessa::ops {

namespace {

void check_same_device_dtype(const char* op, const Tensor& a, const Tensor& b) {
  SESSA_CHECK(a.device() == b.device(), op, "tensors on different devices: " << a.str() << " and " << b.str());
  SESSA_CHECK(a.dtype() == b.dtype(), op, "dtype mismatch: " << a.str() << " and " << b.str());
}

template <Binary op, class T>
inline T apply(T a, T b) {
  if constexpr (op == Binary::Add)
    return a + b;
  else if constexpr (op == Binary::Sub)
    return a - b;
  else if constexpr (op == Binary::Mul)
    return a * b;
  else
    return a / b;
}

template <Binary op>
void cpu_binary(const Tensor& out, const Tensor& a, const Tensor& b) {
  cpu::dispatch_float(out.dtype(), "binary", [&](auto tag) {
    using T = decltype(tag);
    T* y = out.data<T>();
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    if (a.is_contiguous() && b.is_contiguous() && a.shape() == b.shape()) {
      const int64_t n = out.numel();
#pragma omp parallel for simd if (n >= cpu::kParallelGrain)
      for (int64_t i = 0; i < n; ++i) y[i] = apply<op>(pa[i], pb[i]);
      return;
    }
    cpu::strided_loop<3>(out.shape(),
                         {out.strides(), broadcast_strides(a.shape(), a.strides(), out.shape()),
                          broadcast_strides(b.shape(), b.strides(), out.shape())},
                         [&](const auto& o) { y[o[0]] = apply<op>(pa[o[1]], pb[o[2]]); });
  });
}

}  // namespace

Tensor binary(Binary op, const Tensor& a, const Tensor& b) {
  const char* name = op == Binary::Add ? "add" : op == Binary::Sub ? "sub" : op == Binary::Mul ? "mul" : "div";
  check_same_device_dtype(name, a, b);
  if (a.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::binary(op, a, b, broadcast_shapes(a.shape(), b.shape(), name)));
  }
  Tensor out = Tensor::empty(broadcast_shapes(a.shape(), b.shape(), name), a.options());
  switch (op) {
    case Binary::Add:
      cpu_binary<Binary::Add>(out, a, b);
      break;
    case Binary::Sub:
      cpu_binary<Binary::Sub>(out, a, b);
      break;
    case Binary::Mul:
      cpu_binary<Binary::Mul>(out, a, b);
      break;
    case Binary::Div:
      cpu_binary<Binary::Div>(out, a, b);
      break;
  }
  return out;
}

MulGrads mul_grads(const Tensor& dy, const Tensor& a, const Tensor& b) {
  SESSA_CHECK(a.shape() == b.shape() && dy.shape() == a.shape(), "mul_grads",
              "needs dy, a and b of one shape, got " << dy.shape() << ", " << a.shape() << " and " << b.shape());
  check_same_device_dtype("mul_grads", a, b);
  check_same_device_dtype("mul_grads", dy, a);
  if (!(dy.is_contiguous() && a.is_contiguous() && b.is_contiguous())) return {mul(dy, b), mul(dy, a)};
  if (a.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::mul_grads(dy, a, b));
  }
  MulGrads g{empty_like(a), empty_like(b)};
  cpu::dispatch_float(a.dtype(), "mul_grads", [&](auto tag) {
    using T = decltype(tag);
    const T *pg = dy.data<T>(), *pa = a.data<T>(), *pb = b.data<T>();
    T *da = g.da.data<T>(), *db = g.db.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for simd if (n >= cpu::kParallelGrain)
    for (int64_t i = 0; i < n; ++i) da[i] = pg[i] * pb[i], db[i] = pg[i] * pa[i];
  });
  return g;
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::affine(x, alpha, beta));
  }
  Tensor out = empty_like(x);
  cpu::dispatch_float(x.dtype(), "affine", [&](auto tag) {
    using T = decltype(tag);
    T* y = out.data<T>();
    const T* px = x.data<T>();
    cpu::strided_loop<2>(out.shape(), {out.strides(), x.strides()},
                         [&](const auto& o) { y[o[0]] = T(alpha) * px[o[1]] + T(beta); });
  });
  return out;
}

namespace {
void check_accumulate(const Tensor& dst, const Tensor& src) {
  SESSA_CHECK(dst.device() == src.device(), "add_",
              "tensors on different devices: " << dst.str() << " and " << src.str());
  SESSA_CHECK(broadcast_shapes(dst.shape(), src.shape(), "add_") == dst.shape(), "add_",
              "cannot accumulate " << src.shape() << " into " << dst.shape());
}
}  // namespace

void add_(const Tensor& dst, const Tensor& src, double alpha) {
  check_accumulate(dst, src);
  if (dst.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::add_(dst, src, alpha));
  }
  cpu::dispatch_float(dst.dtype(), "add_", [&](auto dst_tag) {
    using T = decltype(dst_tag);
    cpu::dispatch_float(src.dtype(), "add_", [&](auto src_tag) {
      using S = decltype(src_tag);
      T* d = dst.data<T>();
      const S* s = src.data<S>();
      cpu::strided_loop<2>(dst.shape(), {dst.strides(), broadcast_strides(src.shape(), src.strides(), dst.shape())},
                           [&](const auto& o) { d[o[0]] += T(alpha) * T(s[o[1]]); });
    });
  });
}

void add_(const Tensor& dst, const Tensor& src, const Tensor& alpha) {
  SESSA_CHECK(alpha.numel() == 1 && is_floating(alpha.dtype()) && alpha.device() == dst.device(), "add_",
              "alpha must be one float element on the device of " << dst.str() << ", got " << alpha.str());
  check_accumulate(dst, src);
  if (dst.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::add_(dst, src, ops::reshape(alpha, {})));
  }
  add_(dst, src, alpha.item());
}

const char* unary_name(Unary op) {
  static const char* names[] = {"neg",     "exp",  "log",  "sqrt", "square",  "tanh",
                                "sigmoid", "relu", "gelu", "silu", "softplus"};
  return names[int(op)];
}

Tensor unary(Unary op, const Tensor& x) {
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::unary(op, x));
  }
  Tensor out = empty_like(x);
  cpu::dispatch_float(x.dtype(), unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    T* y = out.data<T>();
    const T* px = x.data<T>();
    math::dispatch_unary(op, [&](auto op_tag) {
      cpu::strided_loop<2>(out.shape(), {out.strides(), x.strides()},
                           [&](const auto& o) { y[o[0]] = math::unary_value<op_tag.value>(px[o[1]]); });
    });
  });
  return out;
}

Tensor unary_backward(Unary op, const Tensor& x, const Tensor& dy) {
  check_same_device_dtype(unary_name(op), x, dy);
  SESSA_CHECK(x.shape() == dy.shape(), unary_name(op),
              "gradient shape " << dy.shape() << " != input shape " << x.shape());
  if (x.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::unary_backward(op, x, dy));
  }
  Tensor dx = empty_like(x);
  cpu::dispatch_float(x.dtype(), unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    T* g = dx.data<T>();
    const T* px = x.data<T>();
    const T* pdy = dy.data<T>();
    math::dispatch_unary(op, [&](auto op_tag) {
      cpu::strided_loop<3>(dx.shape(), {dx.strides(), x.strides(), dy.strides()}, [&](const auto& o) {
        g[o[0]] = pdy[o[2]] * math::unary_derivative<op_tag.value>(px[o[1]]);
      });
    });
  });
  return dx;
}

}  // namespace sessa::ops
