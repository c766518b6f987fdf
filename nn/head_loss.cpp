// The language-model head fused with its cross-entropy, chunked over rows (nn/head_loss.h).
//
// With h (N, D), W (V, D), targets y (N) and n the number of counted rows (y_r != ignore_index):
//   loss = (1/n) sum_r [lse_r - z_{r, y_r}],   z_r = h_r W^T (V),   lse_r = log sum_j exp z_rj.
// The logits z (N, V) are the largest tensor of a language model (N = 64k rows x V = 50304 are
// 13 GB in float32), so they are never built whole. With w = 1/n (0 when n = 0), a 0-d tensor
// counted where the targets live (ops::inverse_target_count: on the GPU for GPU targets, so the
// training step never waits for a host read), for each chunk c of at most chunk_rows rows:
//   z_c  = h_c W^T                             ops::matmul (cuBLAS on CUDA, float32 accumulation)
//   S   += sum of the chunk's row losses       ops::cross_entropy_and_grad_ (float32 statistics),
//   dz_c = w (softmax(z_c) - onehot(y_c))      dz_c written over z_c in the same pass
//   dh_c = dz_c W,   dW += dz_c^T h_c          ops::matmul, ops::matmul_add_ (dW summed in float32 by
//                                              the GEMM itself, beta = 1; float64 for float64)
// then loss = w S. (Without gradients: ops::cross_entropy, LossReduction::Sum.) z_c is freed
// before the next chunk; only dh (N, D) and dW (V, D) outlive the forward. Ignored rows have
// zero row loss and zero dz, so n = 0 gives loss 0 and zero gradients.
//
// Why the gradient may be computed in the forward: the loss is a scalar, so the node's backward
// receives a 0-d dloss g, and d(loss)/dh = g * dh, d(loss)/dW = g * dW for the dh, dW computed
// with g = 1. The map from g to the gradients is linear, so scaling afterwards is exact for any g:
// when the loss is the graph's output (g = 1) and when it is scaled or summed with other terms
// first (gradient accumulation over micro-batches, weighted losses). The price: a forward with
// grad enabled does the two gradient GEMMs even if no backward follows (evaluate under a
// NoGradGuard, as nn::Trainer does, and they are skipped).
//
// Precision: the chunk's logits and gradient take h's dtype (bfloat16 in mixed precision, as the
// unfused head's logits do), softmax statistics and the loss are float32 (float64 for float64),
// and dW is accumulated over chunks in float32. A float32 weight beside bfloat16 h is cast to
// bfloat16 once per call, or taken from the trainer's compute copies when it keeps them (what
// nn::compute does for the unfused head), and gets a float32 gradient.
#include "nn/head_loss.h"

#include <algorithm>
#include <vector>

#include "autograd/node.h"
#include "nn/layers.h"
#include "tensor/ops.h"

namespace sessa::nn {

namespace {

// Host targets are checked here, where reading them is free: each is ignore_index or in [0, V).
// (GPU targets are not read back: the data loader checks token ids against the vocabulary, and
// a target out of range gives a NaN loss on the GPU.)
void check_host_targets(const Tensor& targets, int64_t V, int64_t ignore_index) {
  const Tensor packed = ops::contiguous(targets);  // named: a temporary's pointer would dangle
  const int32_t* t = packed.data<int32_t>();
  for (int64_t r = 0; r < packed.numel(); ++r)
    SESSA_CHECK(int64_t(t[r]) == ignore_index || (t[r] >= 0 && t[r] < V), "head_cross_entropy",
                "target " << t[r] << " in row " << r << " is outside [0, " << V << ")");
}

}  // namespace

Tensor head_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& targets, int64_t ignore_index,
                          int64_t chunk_rows) {
  const char* op = "head_cross_entropy";
  SESSA_CHECK(h.dim() >= 1 && weight.dim() == 2 && weight.size(1) == h.size(-1) && weight.size(0) >= 1, op,
              "expects h (..., D) and weight (V, D) with V >= 1, got " << h.shape() << " and " << weight.shape());
  const int64_t D = h.size(-1), V = weight.size(0), N = numel(Shape(h.shape().begin(), h.shape().end() - 1));
  SESSA_CHECK(targets.dtype() == DType::I32 && targets.numel() == N, op,
              "needs int32 targets with one element per row of h " << h.shape() << ", got " << targets.str());
  SESSA_CHECK(
      weight.dtype() == h.dtype() || (h.dtype() == DType::BF16 && weight.dtype() == DType::F32), op,
      "weight " << weight.str() << " must have the dtype of h " << h.str() << " (or float32 beside bfloat16 h)");
  SESSA_CHECK(weight.device() == h.device(), op, "weight " << weight.str() << " is not on the device of h " << h.str());
  SESSA_CHECK(targets.device().is_cpu() || targets.device() == h.device(), op,
              "targets " << targets.str() << " are neither on the host nor on the device of h " << h.str());
  SESSA_CHECK(chunk_rows >= 1, op, "chunk_rows must be at least 1, got " << chunk_rows);

  const Tensor flat_targets = ops::reshape(targets, {N});
  if (flat_targets.device().is_cpu()) check_host_targets(flat_targets, V, ignore_index);
  const Tensor t = flat_targets.to(h.device());  // (N), int32

  const Tensor x = ops::reshape(h, {N, D});  // (N, D)
  Tensor w = weight;  // (V, D) in h's dtype: the trainer's compute copy when it keeps one, else a cast
  if (weight.dtype() != h.dtype()) {
    w = compute_copy(weight, h.dtype());
    if (!w.defined()) w = ops::cast(weight, h.dtype());
  }
  const DType stat = accumulation_dtype(h.dtype());
  const DType acc = accumulation_dtype(weight.dtype());
  const bool grad = autograd::grad_enabled() && (h.requires_grad() || weight.requires_grad());
  const bool need_dh = grad && h.requires_grad(), need_dw = grad && weight.requires_grad();

  const Tensor inverse_count = ops::inverse_target_count(t, ignore_index, stat);  // 0-d: 1/n, or 0 when n = 0
  Tensor loss_sum = zeros({}, {stat, h.device()});
  Tensor dh = need_dh ? Tensor::empty({N, D}, x.options()) : Tensor{};  // (N, D)
  Tensor dw = need_dw ? zeros({V, D}, {acc, h.device()}) : Tensor{};    // (V, D)
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, N - r0);
    const Tensor x_c = ops::narrow(x, 0, r0, rows), t_c = ops::narrow(t, 0, r0, rows);
    const Tensor logits = ops::matmul(x_c, w, false, true);  // (rows, V)
    if (!grad) {
      ops::add_(loss_sum, ops::cross_entropy(logits, t_c, ignore_index, ops::LossReduction::Sum).loss);
      continue;
    }
    // The chunk's loss sum into loss_sum, and logits become dz_c with scale 1/n: every chunk's
    // gradient is divided by the whole batch's count.
    ops::cross_entropy_and_grad_(logits, t_c, ignore_index, inverse_count, loss_sum);
    const Tensor& dlogits = logits;
    if (need_dh) ops::copy_(ops::narrow(dh, 0, r0, rows), ops::matmul(dlogits, w));  // (rows, D)
    if (need_dw) ops::matmul_add_(dw, dlogits, x_c, true, false);  // (V, D) += dz_c^T h_c, summed in acc
  }
  const Tensor loss = ops::mul(loss_sum, inverse_count);
  if (dw.defined() && dw.dtype() != weight.dtype()) dw = ops::cast(dw, weight.dtype());

  // The backward only scales the stored gradients by the incoming 0-d dloss g: summed with
  // g as they are into what the engine offers (the weight's own float32 .grad: one pass over
  // dW instead of a scaled copy and an add), else as scaled copies.
  return autograd::record_summing(
      "head_cross_entropy", loss, {h, weight},
      [dh = dh.defined() ? ops::reshape(dh, h.shape()) : dh, dw](const Tensor& g, const std::vector<Tensor>& sums) {
        auto scaled = [&g](const Tensor& d, const Tensor& sum) {
          if (!d.defined()) return Tensor{};
          if (sum.defined()) {
            ops::add_(sum, d, g);
            return sum;
          }
          return ops::mul(d, ops::cast(g, d.dtype()));
        };
        return std::vector<Tensor>{scaled(dh, sums[0]), scaled(dw, sums[1])};
      });
}

}  // namespace sessa::nn
