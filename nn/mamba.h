// The Mamba baseline (Gu & Dao 2023): a pre-norm residual block y = x + Mixer(LayerNorm(x))
// whose mixer is in_proj -> (causal depthwise conv1d -> SiLU -> selective scan) gated by
// SiLU(z) -> out_proj. With Di = expand * d_model, N = d_state, R = ceil(d_model / 16):
//   [xs, z] = in_proj(x)                      in_proj: Linear(D, 2 Di), no bias
//   u       = SiLU(conv1d(xs))                causal, depthwise, kernel d_conv, with bias
//   [dt, B, C] = x_proj(u)                    x_proj: Linear(Di, R + 2N), no bias
//   delta   = softplus(dt_proj(dt))           dt_proj: Linear(R, Di), with bias
//   y       = selective_scan(u, delta, -exp(A_log), B, C, D)
//   out     = out_proj(y * SiLU(z))           out_proj: Linear(Di, D), no bias
// Decoding keeps the last d_conv - 1 conv inputs and the SSM state h (B, Di, N).
#pragma once
#include "nn/block.h"
#include "nn/layers.h"
#include "tensor/random.h"

namespace sessa::nn {

struct MambaOptions {
  int64_t d_model = 0, expand = 2, d_state = 16, d_conv = 4, n_layers = 1;
};

// What a MambaBlock carries between decoding steps.
struct MambaState : DecodeState {
  Tensor conv;  // (B, d_conv - 1, Di): the most recent conv inputs, oldest first
  Tensor ssm;   // (B, Di, N): the scan state h
};

// The mixer alone (no norm; a residual, when passed, is added in out_proj's GEMM). Its
// parameters are named like the reference implementation: in_proj.weight, conv1d.weight,
// conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight. The
// four projections are nn::Linear layers (one node each; dt_proj's bias is added in the GEMM
// epilogue on CUDA).
class MambaMixer : public Module {
 public:
  MambaMixer(const MambaOptions& opt, Generator& gen, TensorOptions topt = {});
  // The parameters the constructor registers, from the options alone (nothing built).
  static int64_t count_parameters(const MambaOptions& opt);
  // (B, T, D) -> (B, T, D); plus `residual` (B, T, D) when given, added in out_proj's GEMM.
  Tensor forward(const Tensor& x, const Tensor& residual = {}) const;
  // One token (B, 1, D), no autograd; advances st.conv and st.ssm. Plus `residual` (B, 1, D).
  Tensor step(const Tensor& x, MambaState& st, const Tensor& residual = {}) const;

  int64_t d_model, d_inner, d_state, d_conv, dt_rank;
  std::shared_ptr<Linear> in_proj;   // D -> 2 Di, no bias
  Tensor conv_weight, conv_bias;     // (Di, K), (Di)
  std::shared_ptr<Linear> x_proj;    // Di -> R + 2N, no bias
  std::shared_ptr<Linear> dt_proj;   // R -> Di, with bias
  Tensor A_log;                      // (Di, N)
  Tensor D;                          // (Di)
  std::shared_ptr<Linear> out_proj;  // Di -> D, no bias
};

class MambaBlock : public Block {
 public:
  MambaBlock(const MambaOptions& opt, Generator& gen, TensorOptions topt = {});
  static int64_t count_parameters(const MambaOptions& opt);  // as MambaMixer::count_parameters
  Tensor forward(const Tensor& x) override;
  std::unique_ptr<DecodeState> new_state(int64_t batch, int64_t max_len) const override;
  Tensor step(const Tensor& x, DecodeState& state) override;

  MambaOptions options;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<MambaMixer> mixer;
};

}  // namespace sessa::nn
