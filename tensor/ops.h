// Raw tensor ops: compute and return new tensors, record no autograd history.
// Each op checks its inputs (throwing an error that names the op and the shapes),
// then dispatches to the CPU kernel or, for CUDA tensors, the CUDA kernel.
// Backward kernels sit beside their forward ops. The differentiable versions
// that models call live in autograd/ops.h.
#pragma once
#include <optional>
#include <vector>

#include "tensor/tensor.h"

namespace sessa::ops {

// ---- views: share storage, copy nothing ---------------------------------------
Tensor view(const Tensor& x, Shape shape);                     // needs a compatible layout; one -1 allowed
Tensor reshape(const Tensor& x, Shape shape);                  // view when possible, else a copy
std::optional<Tensor> try_view(const Tensor& x, Shape shape);  // the view, if one exists
Tensor permute(const Tensor& x, const std::vector<int64_t>& order);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor expand(const Tensor& x, const Shape& shape);  // broadcast to shape (stride 0)
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);

// ---- copies and conversions ------------------------------------------------------
void copy_(const Tensor& dst, const Tensor& src);  // broadcasting, casting, cross-device
Tensor contiguous(const Tensor& x);                // x itself when already contiguous
Tensor unit_last_stride(const Tensor& x);          // x itself when its last stride is 1 (kernels taking row strides)
Tensor clone(const Tensor& x);
Tensor cast(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);
void fill_(const Tensor& x, double value);

// ---- elementwise ------------------------------------------------------------------
enum class Binary { Add, Sub, Mul, Div };
Tensor binary(Binary op, const Tensor& a, const Tensor& b);  // NumPy broadcasting
inline Tensor add(const Tensor& a, const Tensor& b) { return binary(Binary::Add, a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return binary(Binary::Sub, a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return binary(Binary::Mul, a, b); }
inline Tensor div(const Tensor& a, const Tensor& b) { return binary(Binary::Div, a, b); }
// The gradients of y = a * b for a, b and dy of one shape: da = dy b, db = dy a, in one pass
// where the tensors are contiguous (three reads and two writes instead of two products).
struct MulGrads {
  Tensor da, db;
};
MulGrads mul_grads(const Tensor& dy, const Tensor& a, const Tensor& b);
// y = alpha * x + beta, elementwise (scalar arithmetic without a scalar tensor).
Tensor affine(const Tensor& x, double alpha, double beta);
// dst += alpha * src (src broadcast to dst's shape), in dst's arithmetic type; src may have
// another float dtype (a bfloat16 gradient into a float32 master gradient). Used for
// gradient accumulation.
void add_(const Tensor& dst, const Tensor& src, double alpha = 1.0);
// The same with alpha a one-element float tensor on dst's device, read there (no host read
// on a GPU): a gradient scaled by an incoming 0-d gradient as it is summed.
void add_(const Tensor& dst, const Tensor& src, const Tensor& alpha);

enum class Unary { Neg, Exp, Log, Sqrt, Square, Tanh, Sigmoid, Relu, Gelu, Silu, Softplus };
const char* unary_name(Unary op);
Tensor unary(Unary op, const Tensor& x);
// dx = dy * f'(x)
Tensor unary_backward(Unary op, const Tensor& x, const Tensor& dy);

// ---- reductions ---------------------------------------------------------------------
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
// out += sum(x, dims) (no keepdim): out contiguous, in x's dtype or float32 beside bfloat16 x
// (a bias gradient into its float32 .grad); on CUDA one launch that adds as it writes.
void sum_add_(const Tensor& out, const Tensor& x, const std::vector<int64_t>& dims);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& x);  // 0-d
Tensor amax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // int32
// Sums a broadcast gradient back to `shape` (the inverse of expand).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra -------------------------------------------------------------------
// op(a) @ op(b) over the last two dims. a: (..., M, K) (or (..., K, M) with trans_a);
// b: (K, N) shared by every batch, or (..., K, N) with a's batch dims.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// c += op(a) @ op(b) in place: c contiguous, of matmul's output shape and device, in a's dtype
// or float32 beside bfloat16 operands (a float32 sum of bfloat16 products, CUDA only). One
// GEMM with beta = 1: a gradient summed where it is formed (autograd/engine.cpp, nn/head_loss.cpp).
void matmul_add_(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// The linear layer y = r + x W^T + b over the last dim: x (..., in), weight (out, in), bias (out)
// or undefined, residual r (..., out) or undefined; y (..., out). On CUDA one cuBLASLt GEMM adds
// the bias in its epilogue and the residual as its C operand (beta = 1).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual = {});
struct LinearGrads {
  Tensor dx, dweight, dbias;  // dbias undefined when has_bias is false
};
// Running sums the gradients may be added into in place (autograd's SummingBackwardFn): each,
// when defined, contiguous, of its gradient's shape and device, in x's dtype or float32
// beside bfloat16 x, receives its gradient (dx += dy W, dW += dy^T x, db += the rows of dy)
// and is returned as that gradient; an undefined or unsuitable one gives a new tensor.
LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                            const LinearGrads& sums = {});

// ---- softmax over the last dim ----------------------------------------------------------
Tensor softmax(const Tensor& x);
Tensor softmax_backward(const Tensor& y, const Tensor& dy);  // y = softmax(x)
Tensor log_softmax(const Tensor& x);
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);  // y = log_softmax(x)

// ---- joining and indexing ----------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
// Rows of `x` along `dim` picked by int32 `index` (any shape): out shape = x.shape with
// dim replaced by index.shape. index_select(weight, 0, ids) is an embedding lookup.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// The backward of index_select: scatter-adds `grad` rows into zeros of `shape`, summed in
// accumulation_dtype(grad) and returned in grad's dtype.
Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& grad);
// The same added into dst in place (an embedding's .grad): dst[.., index[i], ..] += grad[.., i, ..]
// along `dim`; dst contiguous, in accumulation_dtype(grad), on grad's device. Repeated ids sum
// in an order that may vary between runs on CUDA (atomics).
void index_add_(const Tensor& dst, int64_t dim, const Tensor& index, const Tensor& grad);

}  // namespace sessa::ops

namespace sessa::ops {

// ---- fused building blocks ------------------------------------------------------------
// LayerNorm over the last dim: y = (x - mean) * rstd * weight + bias. Statistics in
// float32 or better; `mean` and `rstd` (shape x.shape[:-1]) are saved for backward.
struct LayerNormOut {
  Tensor y, mean, rstd;
};
LayerNormOut layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
struct LayerNormGrads {
  Tensor dx, dweight, dbias;
};
// sums.dweight / sums.dbias, when defined (contiguous, the weight's shape and dtype: a
// parameter's own .grad), receive those gradients added in place and are returned as them;
// sums.dx the same (contiguous, like x: a residual stream's running gradient).
LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                   const Tensor& rstd, const LayerNormGrads& sums = {});

// One AdamW update of `param` in place (decoupled weight decay, bias correction).
struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;             // 1-based, for bias correction
  double grad_scale = 1.0;  // g is scaled by it first: global-norm clipping in the same pass
};
void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const AdamWHyper& h);
// Sum of squares of all elements, accumulated in double: a 0-d float64 tensor on x's
// device, so a global gradient norm needs one host read, not one per tensor.
Tensor sum_of_squares(const Tensor& x);

}  // namespace sessa::ops

namespace sessa::ops {

// ---- attention, rotary embedding, cross-entropy -----------------------------------------
// Causal softmax attention with grouped-query heads. q: (B, H, Tq, dh); k, v: (B, Hkv, Tk, dh)
// with H % Hkv == 0 (query head h reads kv head h / (H / Hkv)). Query i sits at absolute
// position q_offset + i and attends keys s <= q_offset + i (so q_offset = Tk - Tq for
// decoding against a cache; 0 for a full sequence). Scores are scaled by `scale`.
// Returns out (B, H, Tq, dh) and the row log-sum-exp lse (B, H, Tq, float32 or float64)
// that backward uses to recompute the probabilities without storing them.
struct AttentionOut {
  Tensor out, lse;
};
AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset, double scale);
struct AttentionGrads {
  Tensor dq, dk, dv;
};
// With rope_base, q and k are the RoPE-rotated operands (rope below: queries at positions
// q_offset + i, keys at s) and dq, dk come back for the unrotated ones, the inverse rotation
// applied (on CUDA inside the bfloat16 kernels' epilogues; elsewhere by rope(inverse)).
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, int64_t q_offset, double scale,
                                  std::optional<double> rope_base = std::nullopt);

// Rotary position embedding on x: (B, H, T, dh), dh even, for positions pos_offset + t:
// pair i = (x[2i], x[2i+1]) rotates by theta = pos * base^(-2i/dh). inverse = true rotates
// by -theta, which is also the backward (the map is orthogonal).
Tensor rope(const Tensor& x, int64_t pos_offset, double base = 10000.0, bool inverse = false);

// Mean cross-entropy of logits (N, V) against int32 targets (N), skipping targets equal to
// ignore_index (LossReduction::Sum: their sum instead, whose backward passes count = 1); log-sum-exp
// per row is returned for backward. loss is 0-d.
enum class LossReduction { Mean, Sum };
struct CrossEntropyOut {
  Tensor loss, lse;
  int64_t count;  // targets that were not ignored (-1 for targets on a GPU: counted there)
};
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                              LossReduction reduction = LossReduction::Mean);
// dlogits = dloss * (softmax(logits) - onehot(target)) / count, zero on ignored rows.
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t ignore_index, int64_t count);
// The two above in one pass, in place: logits (N, V, contiguous) are overwritten by
// scale * (softmax(logits) - onehot(target)) (0 on ignored rows), and the sum of the row
// losses is added to loss_sum. scale and loss_sum are 0-d tensors of the statistics' dtype
// (float32, float64 for float64 logits) on the logits' device; nothing is read back to the
// host. What the chunked LM head (nn/head_loss.cpp) runs per chunk.
void cross_entropy_and_grad_(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& scale,
                             const Tensor& loss_sum);
// 1 / (the number of targets (any shape) that are not ignore_index), 0 when every target is
// ignored: the factor that turns a sum of row losses into their mean. A 0-d `dtype` tensor on the
// targets' device, counted there (no host read for GPU targets).
Tensor inverse_target_count(const Tensor& targets, int64_t ignore_index, DType dtype);

}  // namespace sessa::ops
