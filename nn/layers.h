// The layers every model shares. Initialisation (docs/models.md#initialisation):
// Linear weights ~ N(0, init_std) (0.02 by default, GPT-2 style), biases 0;
// LayerNorm weight 1, bias 0; Embedding ~ N(0, 0.02).
#pragma once
#include <unordered_map>

#include "nn/module.h"
#include "tensor/random.h"

namespace sessa::nn {

struct LinearOptions {
  bool bias = true;
  double init_std = 0.02;
};

// y = x W^T + b over the last dim; W is (out, in). forward(x, r) adds a residual r of y's shape,
// y = r + x W^T + b, in the same node (on CUDA inside the GEMM): a block's `x + proj(h)` is
// proj->forward(h, x).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, Generator& gen, LinearOptions opt = {}, TensorOptions topt = {});
  // Adopts given initial values (for a layer with its own init, e.g. Mamba's dt_proj):
  // weight (out, in) decays, bias (out) or undefined does not.
  explicit Linear(Tensor weight, Tensor bias = {});
  Tensor forward(const Tensor& x, const Tensor& residual = {}) const;
  // The values of split(forward(x), -1, sizes), each part computed from its own block of
  // weight rows: the parts come out contiguous, and the backward needs no full-width
  // zero gradient per part (the narrow of an activation) but only one of the weight.
  std::vector<Tensor> forward_parts(const Tensor& x, const std::vector<int64_t>& sizes) const;
  // The parameters the first constructor registers, from the shapes alone (nothing built).
  static int64_t count_parameters(int64_t in, int64_t out, bool bias) { return out * in + (bias ? out : 0); }
  int64_t in_features, out_features;
  Tensor weight, bias;  // bias undefined when opt.bias is false
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, TensorOptions topt = {});
  Tensor forward(const Tensor& x) const;
  static int64_t count_parameters(int64_t dim) { return 2 * dim; }  // weight and bias (dim)
  double eps;
  Tensor weight, bias;
};

// Mixed precision. Inside an AutocastScope(bf16), layers run their matrix products
// and activations in bf16 while parameters stay float32 (master weights): each use
// of a parameter goes through `compute(param)`, a differentiable cast whose backward
// returns float32 gradients. Statistics (LayerNorm, softmax, the Sessa solve, the
// cross-entropy) are kept in float32 inside the kernels.
//
// Parameters already converted (ComputeCopies: a ParameterBuffer's compute copy, made by one
// conversion of the whole buffer per step) are not converted again: compute(p) records the
// cast with p's copy as its value. The copies must be current while the scope lasts.
using ComputeCopies = std::unordered_map<const void*, Tensor>;  // parameter identity -> its copy
class AutocastScope {
 public:
  // Inactive: changes nothing. `copies` (optional, in `dtype`) must outlive the scope.
  explicit AutocastScope(DType dtype, bool active = true, const ComputeCopies* copies = nullptr);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  DType previous_;
  bool had_previous_;
  const ComputeCopies* previous_copies_;
};
// `t` in the active autocast dtype (unchanged when none is active or t is already in it).
Tensor compute(const Tensor& t);
// Whether compute(t) takes t's kept compute copy instead of converting t.
bool has_compute_copy(const Tensor& t);
// The value of t's compute copy in `dtype` when the active autocast scope has one (no graph:
// for an op that forms t's gradient itself, as the fused LM head does), else undefined.
Tensor compute_copy(const Tensor& t, DType dtype);

// A fused, differentiable LayerNorm over the last dim (one autograd node).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);

}  // namespace sessa::nn
