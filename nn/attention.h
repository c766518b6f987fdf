// Causal multi-head self-attention with rotary embeddings and grouped-query heads,
// used by the Transformer block and by the Sessa layer's forward branch.
#pragma once
#include <memory>

#include "nn/block.h"
#include "nn/layers.h"

namespace sessa::nn {

struct AttentionOptions {
  int64_t d_model = 0, n_heads = 1, n_kv_heads = 0;  // n_kv_heads 0: same as n_heads
  bool rope = true;
  double rope_base = 10000.0;
  bool out_bias = true;           // the Transformer's out_proj has a bias, Sessa's does not
  bool out_proj_one_head = true;  // Sessa: no out_proj (identity) when n_heads == 1
  double out_init_std = 0.02;
};

// Keys and values of the positions decoded so far: (B, Hkv, max_len, dh) each.
struct KVCache {
  Tensor k, v;
};

class Attention : public Module {
 public:
  Attention(const AttentionOptions& opt, Generator& gen, TensorOptions topt = {});
  // The parameters the constructor registers, from the options alone (nothing built).
  static int64_t count_parameters(const AttentionOptions& opt);
  // (B, T, D) -> (B, T, D); plus `residual` (B, T, D) when given, added in out_proj's GEMM.
  Tensor forward(const Tensor& x, const Tensor& residual = {});
  KVCache new_cache(int64_t batch, int64_t max_len) const;
  // x (B, 1, D) at `position`: appends its key/value to the cache, attends over it (plus `residual`).
  Tensor step(const Tensor& x, KVCache& cache, int64_t position, const Tensor& residual = {});

  int64_t n_heads, n_kv_heads, head_dim;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, out_proj;  // out_proj may be null

 private:
  // (B, count, T, dh); rotate: RoPE applied here (decoding) rather than inside the attention node
  Tensor heads(const Tensor& x, const Linear& proj, int64_t count, int64_t pos, bool rotate) const;
  Tensor merge(const Tensor& o, const Tensor& residual) const;  // (B, H, T, dh) -> (B, T, D) via out_proj
  AttentionOptions opt_;
};

}  // namespace sessa::nn
