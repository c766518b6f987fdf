// Builds a language model of any family from its ModelConfig: the one place that
// knows all three block types (Sessa, Transformer, Mamba).
#pragma once
#include <memory>

#include "nn/lm.h"

namespace sessa {

// Parameters initialised from `seed` (identically on every device).
std::shared_ptr<nn::LanguageModel> build_model(const nn::ModelConfig& config, uint64_t seed, TensorOptions topt = {});

}  // namespace sessa
