#include "nn/lm.h"

#include "autograd/ops.h"
#include "nn/functional.h"

namespace sessa::nn {

LanguageModel::LanguageModel(const ModelConfig& config, Generator& gen, const BlockFactory& make_block,
                             TensorOptions topt)
    : config_(config) {
  config.validate();
  embedding = normal({config.vocab_size, config.d_model}, 0.0, 0.02, gen, topt);
  register_parameter("embedding.weight", embedding, false);
  for (int64_t i = 0; i < config.n_layers; ++i)
    layers.push_back(register_module("layers." + std::to_string(i), make_block(i)));
  norm_f = register_module("norm_f", std::make_shared<LayerNorm>(config.d_model, 1e-5, topt));
}

int64_t LanguageModel::own_parameter_count(const ModelConfig& c) {
  return c.vocab_size * c.d_model + 2 * c.d_model;  // embedding (V, D); norm_f weight and bias (D)
}

void LanguageModel::check_ids(const Tensor& ids, const char* op) const {
  SESSA_CHECK(ids.dtype() == DType::I32, op, "token ids must be int32, got " << ids.str());
}

Tensor LanguageModel::head(const Tensor& h) const {
  return matmul(norm_f->forward(h), compute(embedding), false, true);
}

// Gathered from the table's compute copy when the trainer keeps one (bfloat16 rows read once;
// the lookup scatter-adds their gradient straight into the float32 .grad), else gathered from
// the stored table and converted (the rows only, not the whole table).
Tensor LanguageModel::embed(const Tensor& ids) const {
  const Tensor on_device = ids.to(device());
  return has_compute_copy(embedding) ? index_select(compute(embedding), 0, on_device)
                                     : compute(index_select(embedding, 0, on_device));
}

Tensor LanguageModel::hidden(const Tensor& ids) {
  check_ids(ids, "LanguageModel::forward");
  SESSA_CHECK(ids.dim() == 2, "LanguageModel::forward", "expected token ids (B, T), got " << ids.shape());
  Tensor h = embed(ids);
  for (auto& layer : layers) h = layer->forward(h);
  return h;
}

Tensor LanguageModel::forward(const Tensor& ids) { return head(hidden(ids)); }

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index) {
  SESSA_CHECK(targets.shape() == ids.shape(), "LanguageModel::loss",
              "targets " << targets.shape() << " vs ids " << ids.shape());
  // The embedding goes in as stored (float32 master weights beside bfloat16 activations): the
  // fused head casts it once and returns its gradient in float32. Targets stay where they are
  // (the head counts them on their device, without a host read).
  return head_cross_entropy(norm_f->forward(hidden(ids)), embedding, targets, ignore_index, loss_chunk_rows);
}

std::vector<std::unique_ptr<DecodeState>> LanguageModel::new_decode_states(int64_t batch, int64_t max_len) const {
  std::vector<std::unique_ptr<DecodeState>> states;
  for (const auto& layer : layers) states.push_back(layer->new_state(batch, max_len));
  return states;
}

Tensor LanguageModel::step(const Tensor& ids, std::vector<std::unique_ptr<DecodeState>>& states) {
  check_ids(ids, "LanguageModel::step");
  SESSA_CHECK(
      ids.dim() == 1 && states.size() == layers.size(), "LanguageModel::step",
      "expected token ids (B) and one state per layer, got " << ids.shape() << " and " << states.size() << " states");
  Tensor h = embed(ops::reshape(ids, {ids.size(0), 1}));
  for (size_t i = 0; i < layers.size(); ++i) h = layers[i]->step(h, *states[i]);
  return reshape(head(h), {ids.size(0), config_.vocab_size});
}

}  // namespace sessa::nn
