// One language-model wrapper for every family:
//   token embedding (V, D) -> N blocks -> final LayerNorm -> head tied to the embedding.
// forward()/step() return logits (sampling, evaluation that needs them); loss() fuses the head
// with the cross-entropy (nn/head_loss.h) and never holds more than loss_chunk_rows rows of logits.
// Parameter names: embedding.weight, layers.<i>.<block parameters>, norm_f.weight/bias.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "nn/block.h"
#include "nn/config.h"
#include "nn/head_loss.h"
#include "nn/layers.h"

namespace sessa::nn {

using BlockFactory = std::function<std::shared_ptr<Block>(int64_t layer_index)>;

class LanguageModel : public Module {
 public:
  LanguageModel(const ModelConfig& config, Generator& gen, const BlockFactory& make_block, TensorOptions topt = {});

  Tensor forward(const Tensor& ids);  // int32 (B, T) -> logits (B, T, V)
  // Mean next-token cross-entropy of forward(ids) against int32 targets (B, T), computed by the
  // chunked fused head (nn::head_cross_entropy) without materialising the (B, T, V) logits.
  Tensor loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index = -1);

  // Incremental decoding: one cache per layer; step() consumes one token per sequence.
  std::vector<std::unique_ptr<DecodeState>> new_decode_states(int64_t batch, int64_t max_len) const;
  Tensor step(const Tensor& ids, std::vector<std::unique_ptr<DecodeState>>& states);  // (B) -> logits (B, V)

  const ModelConfig& config() const { return config_; }
  // The parameters outside the blocks (embedding and final norm), as the constructor
  // registers them; the blocks' by their own static count_parameters (sessa/model.h).
  static int64_t own_parameter_count(const ModelConfig& config);
  Device device() const { return embedding.device(); }

  Tensor embedding;  // (V, D)
  std::vector<std::shared_ptr<Block>> layers;
  std::shared_ptr<LayerNorm> norm_f;
  int64_t loss_chunk_rows = kHeadLossChunkRows;  // rows of logits loss() holds at once

 private:
  Tensor embed(const Tensor& ids) const;  // int32 ids (any shape) -> their rows of the table, in the compute dtype
  Tensor hidden(const Tensor& ids);       // int32 (B, T) -> final hidden states (B, T, D), before norm_f
  Tensor head(const Tensor& h) const;     // final norm + tied projection to the vocabulary
  void check_ids(const Tensor& ids, const char* op) const;
  ModelConfig config_;
};

}  // namespace sessa::nn
