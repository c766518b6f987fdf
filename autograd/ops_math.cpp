// Differentiable arithmetic, reductions, matmul, linear and softmax: forward then backward.
#include <numeric>

#include "autograd/ops.h"

namespace sessa {

using autograd::record;
using autograd::record_summing;

Tensor add(const Tensor& a, const Tensor& b) {
  return record("add", ops::add(a, b), {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return std::vector<Tensor>{ops::sum_to(g, sa), ops::sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record("sub", ops::sub(a, b), {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return std::vector<Tensor>{ops::sum_to(g, sa), ops::sum_to(ops::affine(g, -1, 0), sb)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record("mul", ops::mul(a, b), {a, b}, [a = a.detach(), b = b.detach()](const Tensor& g) {
    if (a.shape() == b.shape() && g.shape() == a.shape() && g.dtype() == a.dtype()) {  // both in one pass
      ops::MulGrads d = ops::mul_grads(g, a, b);
      return std::vector<Tensor>{d.da, d.db};
    }
    return std::vector<Tensor>{ops::sum_to(ops::mul(g, b), a.shape()), ops::sum_to(ops::mul(g, a), b.shape())};
  });
}

// d(a/b)/da = 1/b, d(a/b)/db = -(a/b)/b
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = ops::div(a, b);
  return record("div", y, {a, b}, [sa = a.shape(), b = b.detach(), y = y.detach()](const Tensor& g) {
    Tensor ga = ops::div(g, b);
    return std::vector<Tensor>{ops::sum_to(ga, sa), ops::sum_to(ops::affine(ops::mul(ga, y), -1, 0), b.shape())};
  });
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  return record("affine", ops::affine(x, alpha, beta), {x},
                [alpha](const Tensor& g) { return std::vector<Tensor>{ops::affine(g, alpha, 0)}; });
}

Tensor unary(ops::Unary op, const Tensor& x) {
  return record(ops::unary_name(op), ops::unary(op, x), {x},
                [op, x = x.detach()](const Tensor& g) { return std::vector<Tensor>{ops::unary_backward(op, x, g)}; });
}

// The gradient of a reduction is the output gradient broadcast back over the reduced dims.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  Shape kept = x.shape();  // x's shape with the reduced dims set to 1
  for (int64_t d : dims) kept[size_t(wrap_dim(d, x.dim(), "sum"))] = 1;
  return record("sum", ops::sum(x, dims, keepdim), {x}, [kept, sx = x.shape()](const Tensor& g) {
    return std::vector<Tensor>{ops::expand(ops::reshape(g, kept), sx)};
  });
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[size_t(wrap_dim(d, x.dim(), "mean"))];
  return affine(sum(x, dims, keepdim), 1.0 / double(std::max<int64_t>(count, 1)), 0.0);
}

Tensor sum_all(const Tensor& x) {
  return record("sum_all", ops::sum_all(x), {x},
                [sx = x.shape()](const Tensor& g) { return std::vector<Tensor>{ops::expand(g, sx)}; });
}

Tensor mean_all(const Tensor& x) { return affine(sum_all(x), 1.0 / double(std::max<int64_t>(x.numel(), 1)), 0.0); }

// C = op(A) op(B). With G = dC:  dA = G op(B)^T (transposed back when A was read
// transposed), dB = op(A)^T G (likewise); a 2-D B shared over a batch sums dB over it.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor c = ops::matmul(a, b, trans_a, trans_b);
  return record("matmul", c, {a, b}, [a = a.detach(), b = b.detach(), trans_a, trans_b](const Tensor& g) {
    Tensor ga = ops::matmul(g, b, false, !trans_b);
    if (trans_a) ga = ops::transpose(ga, -1, -2);
    Tensor gb;
    if (b.dim() == 2 && a.dim() > 2 && !trans_a) {  // one tall GEMM over the flattened batch
      Tensor a2 = ops::reshape(a, {-1, a.size(-1)}), g2 = ops::reshape(g, {-1, g.size(-1)});
      gb = trans_b ? ops::matmul(g2, a2, true, false) : ops::matmul(a2, g2, true, false);
    } else {
      gb = ops::matmul(a, g, !trans_a, false);
      if (trans_b) gb = ops::transpose(gb, -1, -2);
      if (b.dim() == 2 && a.dim() > 2) {
        std::vector<int64_t> batch(size_t(a.dim() - 2));
        std::iota(batch.begin(), batch.end(), 0);
        gb = ops::sum(gb, batch);
      }
    }
    return std::vector<Tensor>{ga, gb};
  });
}

// One node for the fused forward (cuBLASLt with bias epilogue and residual C on CUDA); backward
// in ops::linear_backward, and dr = dy: the residual's gradient is the output's, passed on as is.
// Each gradient goes straight into its sum when the engine has one (autograd/node.h): dx into
// the running sum for x (x feeding several layers: one GEMM with beta = 1 instead of a GEMM and
// an add), dW and db into the parameters' own .grad, through autocast's cast and
// forward_parts' slices (no bfloat16 dW, no add into the float32 .grad).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  Tensor y = ops::linear(x, weight, bias, residual);
  return record_summing("linear", y, {x, weight, bias, residual},
                        [x = x.detach(), w = weight.detach(), has_bias = bias.defined(),
                         has_residual = residual.defined()](const Tensor& g, const std::vector<Tensor>& sums) {
                          auto grads = ops::linear_backward(g, x, w, has_bias, {sums[0], sums[1], sums[2]});
                          return std::vector<Tensor>{grads.dx, grads.dweight, grads.dbias, has_residual ? g : Tensor{}};
                        });
}

Tensor softmax(const Tensor& x) {
  Tensor y = ops::softmax(x);
  return record("softmax", y, {x},
                [y = y.detach()](const Tensor& g) { return std::vector<Tensor>{ops::softmax_backward(y, g)}; });
}

Tensor log_softmax(const Tensor& x) {
  Tensor y = ops::log_softmax(x);
  return record("log_softmax", y, {x},
                [y = y.detach()](const Tensor& g) { return std::vector<Tensor>{ops::log_softmax_backward(y, g)}; });
}

}  // namespace sessa
