#include "nn/attention.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/functional.h"

namespace sessa::nn {

namespace {
int64_t kv_heads(const AttentionOptions& opt) { return opt.n_kv_heads > 0 ? opt.n_kv_heads : opt.n_heads; }
bool has_out_proj(const AttentionOptions& opt) { return opt.n_heads > 1 || !opt.out_proj_one_head; }
}  // namespace

Attention::Attention(const AttentionOptions& opt, Generator& gen, TensorOptions topt) : opt_(opt) {
  n_heads = opt.n_heads;
  n_kv_heads = kv_heads(opt);
  SESSA_CHECK(n_heads > 0 && opt.d_model % n_heads == 0, "Attention",
              "d_model " << opt.d_model << " is not divisible by the head count " << n_heads);
  SESSA_CHECK(n_heads % n_kv_heads == 0, "Attention", "kv heads " << n_kv_heads << " must divide heads " << n_heads);
  head_dim = opt.d_model / n_heads;
  SESSA_CHECK(!opt.rope || head_dim % 2 == 0, "Attention", "rotary embedding needs an even head dim, got " << head_dim);
  const int64_t D = opt.d_model, kv = n_kv_heads * head_dim;
  q_proj = register_module("q_proj", std::make_shared<Linear>(D, D, gen, LinearOptions{}, topt));
  k_proj = register_module("k_proj", std::make_shared<Linear>(D, kv, gen, LinearOptions{}, topt));
  v_proj = register_module("v_proj", std::make_shared<Linear>(D, kv, gen, LinearOptions{}, topt));
  if (has_out_proj(opt))
    out_proj = register_module(
        "out_proj", std::make_shared<Linear>(D, D, gen, LinearOptions{opt.out_bias, opt.out_init_std}, topt));
}

int64_t Attention::count_parameters(const AttentionOptions& opt) {
  const int64_t D = opt.d_model, kv = kv_heads(opt) * (D / opt.n_heads);
  return Linear::count_parameters(D, D, true) + 2 * Linear::count_parameters(D, kv, true) +
         (has_out_proj(opt) ? Linear::count_parameters(D, D, opt.out_bias) : 0);
}

Tensor Attention::heads(const Tensor& x, const Linear& proj, int64_t count, int64_t pos, bool rotate) const {
  Tensor h = permute(reshape(proj.forward(x), {x.size(0), x.size(1), count, head_dim}), {0, 2, 1, 3});
  return rotate && opt_.rope && &proj != v_proj.get() ? rope(h, pos, opt_.rope_base) : h;
}

Tensor Attention::merge(const Tensor& o, const Tensor& residual) const {
  Tensor y = reshape(permute(o, {0, 2, 1, 3}), {o.size(0), o.size(2), n_heads * head_dim});
  if (out_proj) return out_proj->forward(y, residual);
  return residual.defined() ? residual + y : y;
}

Tensor Attention::forward(const Tensor& x, const Tensor& residual) {
  // RoPE inside the attention node (its backward rotates dq back in its scaling pass).
  Tensor q = heads(x, *q_proj, n_heads, 0, false), k = heads(x, *k_proj, n_kv_heads, 0, false);
  Tensor v = heads(x, *v_proj, n_kv_heads, 0, false);
  const std::optional<double> rope_base = opt_.rope ? std::optional<double>(opt_.rope_base) : std::nullopt;
  return merge(causal_attention(q, k, v, 0, 1.0 / std::sqrt(double(head_dim)), rope_base), residual);
}

KVCache Attention::new_cache(int64_t batch, int64_t max_len) const {
  TensorOptions topt = q_proj->weight.options();
  return {Tensor::empty({batch, n_kv_heads, max_len, head_dim}, topt),
          Tensor::empty({batch, n_kv_heads, max_len, head_dim}, topt)};
}

Tensor Attention::step(const Tensor& x, KVCache& cache, int64_t position, const Tensor& residual) {
  SESSA_CHECK(x.size(1) == 1 && position < cache.k.size(2), "Attention::step",
              "needs one token within the cache (" << cache.k.size(2) << " positions), got " << x.shape() << " at "
                                                   << position);
  Tensor q = heads(x, *q_proj, n_heads, position, true);
  ops::copy_(ops::narrow(cache.k, 2, position, 1), heads(x, *k_proj, n_kv_heads, position, true));
  ops::copy_(ops::narrow(cache.v, 2, position, 1), heads(x, *v_proj, n_kv_heads, position, true));
  Tensor k = ops::narrow(cache.k, 2, 0, position + 1), v = ops::narrow(cache.v, 2, 0, position + 1);
  return merge(causal_attention(q, k, v, position, 1.0 / std::sqrt(double(head_dim))), residual);
}

}  // namespace sessa::nn
