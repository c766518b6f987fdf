#include "nn/functional.h"

#include <algorithm>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sessa::nn {

Tensor causal_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v, int64_t q_offset, double scale,
                        std::optional<double> rope_base) {
  // With rope_base the rotation is part of this node: its backward rotates dq, dk back inside
  // the attention backward (ops::attention_backward), not in two rope nodes of its own.
  const Tensor q = rope_base ? ops::rope(q_in.detach(), q_offset, *rope_base) : q_in.detach();
  const Tensor k = rope_base ? ops::rope(k_in.detach(), 0, *rope_base) : k_in.detach();
  auto res = ops::attention(q, k, v, q_offset, scale);
  // Saved tensors are detached: `out` itself gets the node, so capturing it would be a cycle.
  return autograd::record(
      "causal_attention", res.out, {q_in, k_in, v},
      [q, k, v = v.detach(), out = res.out.detach(), lse = res.lse, q_offset, scale, rope_base](const Tensor& g) {
        auto grads = ops::attention_backward(g, q, k, v, out, lse, q_offset, scale, rope_base);
        return std::vector<Tensor>{grads.dq, grads.dk, grads.dv};
      });
}

Tensor rope(const Tensor& x, int64_t pos_offset, double base) {
  return autograd::record("rope", ops::rope(x, pos_offset, base, false), {x}, [pos_offset, base](const Tensor& g) {
    return std::vector<Tensor>{ops::rope(g, pos_offset, base, true)};  // the inverse rotation
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  SESSA_CHECK(logits.dim() >= 1 && targets.numel() * logits.size(-1) == logits.numel(), "cross_entropy",
              "logits " << logits.shape() << " need one target per row, got targets " << targets.shape());
  const int64_t V = logits.size(-1), N = logits.numel() / std::max<int64_t>(V, 1);
  Tensor x = ops::reshape(logits, {N, V}), t = ops::reshape(targets, {targets.numel()});
  auto res = ops::cross_entropy(x, t, ignore_index);
  return autograd::record(
      "cross_entropy", res.loss, {logits},
      [x = x.detach(), t, lse = res.lse, count = res.count, ignore_index, shape = logits.shape()](const Tensor& g) {
        Tensor dx = ops::cross_entropy_backward(g, x, t, lse, ignore_index, count);
        return std::vector<Tensor>{ops::reshape(dx, shape)};
      });
}

}  // namespace sessa::nn
