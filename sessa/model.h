// Builds a language model of any family from its ModelConfig: the one place that
// knows all three block types (Sessa, Transformer, Mamba), one case per row of the
// family registry (nn/family.h). Parameter counts are pure functions of the config
// (each block's static count_parameters, beside its constructor): nothing is built or
// allocated, so any width is counted at once; tests/test_lm.cpp checks them against
// built models of every family.
#pragma once
#include <memory>

#include "nn/lm.h"

namespace sessa::layer {

// One block (layer `layer_index` of config.n_layers) of the config's family.
std::shared_ptr<nn::Block> build_block(const nn::ModelConfig& config, int64_t layer_index, Generator& gen,
                                       TensorOptions topt = {});

// Parameters initialised from `seed` (identically on every device).
std::shared_ptr<nn::LanguageModel> build_model(const nn::ModelConfig& config, uint64_t seed, TensorOptions topt = {});

// The parameters of one block of the config's family (every layer of a family has the
// same), from the shapes alone: one case per family, beside build_block.
int64_t block_parameter_count(const nn::ModelConfig& config);

// The exact parameter count of the model `config` describes: the embedding and final
// norm (nn::LanguageModel::own_parameter_count) plus n_layers times block_parameter_count.
int64_t parameter_count(const nn::ModelConfig& config);

// `config` with the layer count (1..512) whose parameter count is closest to `target`,
// to compare families at matched size (e.g. Sessa matched to a Transformer preset).
nn::ModelConfig match_parameters(nn::ModelConfig config, int64_t target);

// Floating-point operations of one training step (forward + backward) per token at
// sequence length T: 6 per parameter in a matrix product (tied head included, the
// embedding lookup excluded) plus 6 L D T per causal attention pass of each layer
// (nn::FamilyInfo::attention_passes: Sessa adds the feedback scores and solve).
double train_flops_per_token(const nn::ModelConfig& config, int64_t seq_len);

}  // namespace sessa::layer
