// Matrix products through the blocked CPU GEMM (tensor/cpu/gemm.h), or cuBLAS for CUDA
// tensors (tensor/cuda/blas.cpp). Transposed views are passed to GEMM as transposed
// operands instead of being copied.
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda_hooks.h"
#include "tensor/gemm_view.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

GemmView as_gemm_operand(const Tensor& x) {
  if (auto v = gemm_view(x)) return *v;
  return *gemm_view(contiguous(x));
}

// Element offset of batch item `b` (row-major over the leading dims).
int64_t batch_offset(const Tensor& x, int64_t b, int64_t batch_dims) {
  int64_t off = x.offset();
  for (int64_t d = batch_dims - 1; d >= 0; --d) {
    off += (b % x.shape()[d]) * x.strides()[d];
    b /= x.shape()[d];
  }
  return off;
}

// The product's shape after checking the operands (op: the caller's name).
Shape product_shape(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  SESSA_CHECK(a.dim() >= 2 && b.dim() >= 2, op, "operands need >= 2 dims, got " << a.shape() << " and " << b.shape());
  SESSA_CHECK(a.device() == b.device() && a.dtype() == b.dtype(), op,
              "operands differ in device or dtype: " << a.str() << " and " << b.str());
  const int64_t M = a.size(trans_a ? -1 : -2), K = a.size(trans_a ? -2 : -1);
  const int64_t Kb = b.size(trans_b ? -1 : -2), N = b.size(trans_b ? -2 : -1);
  SESSA_CHECK(
      K == Kb, op,
      "inner dimensions differ: " << a.shape() << (trans_a ? "^T" : "") << " @ " << b.shape() << (trans_b ? "^T" : ""));
  Shape shape(a.shape().begin(), a.shape().end() - 2);
  SESSA_CHECK(b.dim() == 2 || Shape(b.shape().begin(), b.shape().end() - 2) == shape, op,
              "batch dims differ: " << a.shape() << " @ " << b.shape());
  shape.push_back(M);
  shape.push_back(N);
  return shape;
}

// out (=, or += when accumulate) op(a) @ op(b); out contiguous of the product's shape.
void matmul_into(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate) {
  if (a.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::matmul_into(out, a, b, trans_a, trans_b, accumulate));
  }
  const int64_t M = a.size(trans_a ? -1 : -2), K = a.size(trans_a ? -2 : -1), N = b.size(trans_b ? -2 : -1);
  const int64_t batch_dims = a.dim() - 2, batch = numel(Shape(a.shape().begin(), a.shape().end() - 2));

  // A shared 2-D weight against a batch of row-major inputs is one tall GEMM.
  Tensor a_eff = a;
  int64_t a_batch = batch, M_eff = M;
  if (b.dim() == 2 && !trans_a && batch > 1) {
    if (auto flat = try_view(a, {batch * M, K})) a_eff = *flat, a_batch = 1, M_eff = batch * M;
  }
  GemmView va = as_gemm_operand(a_eff), vb = as_gemm_operand(b);
  cpu::dispatch_float(a.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    T* base_a = static_cast<T*>(va.t.storage()->data());
    T* base_b = static_cast<T*>(vb.t.storage()->data());
    T* c = out.data<T>();
    for (int64_t i = 0; i < a_batch; ++i) {
      const T* pa = base_a + batch_offset(va.t, i, va.t.dim() - 2);
      const T* pb = base_b + (vb.t.dim() == 2 ? vb.t.offset() : batch_offset(vb.t, i, batch_dims));
      cpu::gemm<T>(trans_a != va.stored_transposed, trans_b != vb.stored_transposed, M_eff, N, K, T(1), pa, va.ld, pb,
                   vb.ld, T(accumulate ? 1 : 0), c + i * M_eff * N, N);
    }
  });
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = Tensor::empty(product_shape("matmul", a, b, trans_a, trans_b), a.options());
  matmul_into(out, a, b, trans_a, trans_b, false);
  return out;
}

void matmul_add_(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const Shape shape = product_shape("matmul_add_", a, b, trans_a, trans_b);
  const bool wider_sum = a.dtype() == DType::BF16 && c.dtype() == DType::F32;  // float32 sum of bfloat16 products
  SESSA_CHECK(
      c.shape() == shape && (c.dtype() == a.dtype() || wider_sum) && c.device() == a.device() && c.is_contiguous(),
      "matmul_add_",
      "the sum " << c.str() << " is not a contiguous " << dtype_name(a.dtype()) << shape << " on " << a.device().str()
                 << " (the product's shape, dtype and device; float32 also for bfloat16)");
  matmul_into(c, a, b, trans_a, trans_b, true);
}

}  // namespace sessa::ops
