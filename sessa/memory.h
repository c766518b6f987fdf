// Explicit one-layer constructions whose memory tail has a closed form
// (docs/memory.md), built from the engine's real blocks with weights set by hand:
//   sessa-uniform        Sessa layer, uniform forward attention, uniform feedback
//                        routing (alpha[t, s] = 1/t over s < t), constant gain gamma
//   transformer-uniform  Transformer block, uniform causal attention, MLP switched off
//   mamba-decay          Mamba block, one state, constant decay a per step
// In each, for i > j:  d y_i / d x_j = c(i, j) P_j,  with P_j a matrix that depends on
// x_j only (LayerNorm, activation and value maps at the source). So the measured
// influence at lag l from source j is c(j + l, j) ||P_j||_F / sqrt(D): the profile
// c fixes the curve up to a lag-independent factor.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/block.h"

namespace sessa::layer {

struct MemoryConstructionOptions {
  int64_t d_model = 4;  // >= 2
  double gamma = 0.5;   // sessa-uniform: the constant gain, in (0, gamma_max = 0.999)
  double decay = 0.9;   // mamba-decay: the per-step decay a, in (0, 1)
};

struct MemoryConstruction {
  std::string name;  // e.g. "sessa-uniform gamma=0.5"
  std::shared_ptr<nn::Block> block;
  // c(i, j) of docs/memory.md for target i > source j >= 0.
  std::function<double(int64_t target, int64_t source)> profile;
  std::string expected;  // the derived tail, in words
};

const std::vector<std::string>& construction_names();
// Parameters in topt's dtype/device, none requiring grad. Errors name the construction
// or the option at fault.
MemoryConstruction build_construction(const std::string& name, const MemoryConstructionOptions& opt,
                                      TensorOptions topt = {});

// The closed-form profiles (docs/memory.md), exposed for the tests and the docs.
// Sessa feedback alone, ds_i/df_j = (gamma/i) prod_{m=j+1}^{i-1} (1 + gamma/m):
double sessa_feedback_profile(double gamma, int64_t target, int64_t source);
// The whole sessa-uniform layer: uniform forward attention, then the feedback.
double sessa_uniform_profile(double gamma, int64_t target, int64_t source);

// Marks every parameter of `m` as not requiring grad (an influence measurement
// needs gradients with respect to the input only).
void freeze_parameters(nn::Module& m);

}  // namespace sessa::layer
