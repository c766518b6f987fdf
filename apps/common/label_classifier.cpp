// label_classifier.cpp - loss, hits and evaluation of a language model classifying at one position.
#include "apps/common/label_classifier.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/functional.h"

namespace sessa::apps {

void count_label_hits(const Tensor& logits, const Tensor& targets, ClassTokens classes, LabelHits& hits) {
  const int64_t V = logits.size(-1);
  SESSA_CHECK(
      classes.first >= 0 && classes.first + classes.count <= V, "count_label_hits",
      "class tokens [" << classes.first << ", " << classes.first + classes.count << ") outside the vocabulary " << V);
  const std::vector<int32_t> t = targets.to_vector<int32_t>();
  std::vector<int32_t> rows, want;
  for (size_t i = 0; i < t.size(); ++i)
    if (t[i] != -1) rows.push_back(int32_t(i)), want.push_back(t[i]);
  if (rows.empty()) return;
  // Only the scored rows (n, V) come back to the host.
  const Tensor flat = ops::reshape(logits.detach(), {int64_t(t.size()), V});
  const Tensor picked =
      ops::index_select(flat, 0, from_vector(rows, {int64_t(rows.size())}, {DType::I32, logits.device()}));
  const std::vector<float> p = picked.to_vector<float>();
  for (size_t r = 0; r < rows.size(); ++r) {
    const float* row = p.data() + r * size_t(V) + size_t(classes.first);
    int32_t best = 0;
    for (int32_t c = 1; c < classes.count; ++c)
      if (row[c] > row[best]) best = c;
    hits.correct += classes.first + best == want[r];
    ++hits.total;
  }
}

std::function<Tensor(nn::LanguageModel&, const nn::TokenBatch&)> label_loss(LabelHits* hits, ClassTokens classes,
                                                                            double lm_weight, LossTerms* terms) {
  SESSA_CHECK(std::isfinite(lm_weight) && lm_weight >= 0, "label_loss",
              "lm_weight must be finite and >= 0, got " << lm_weight);
  return [hits, classes, lm_weight, terms](nn::LanguageModel& model, const nn::TokenBatch& b) {
    Tensor logits = model.forward(b.ids);  // (B, T, V)
    if (hits) count_label_hits(logits, b.targets, classes, *hits);
    const Tensor label = nn::cross_entropy(logits, b.targets, -1);
    if (lm_weight == 0 && !terms) return label;
    // The next-token targets (B, T) of the same rows: the ids come to the host (count_label_hits
    // reads the targets already), the targets go back to the device.
    const std::vector<int32_t> next =
        data::symbolsoup::next_token_targets(b.ids.to_vector<int32_t>(), b.ids.size(0), b.ids.size(1));
    const Tensor lm = nn::cross_entropy(logits, from_vector(next, b.ids.shape(), {DType::I32, b.ids.device()}), -1);
    if (terms) terms->label += label.item(), terms->lm += lm.item(), ++terms->batches;
    return lm_weight == 0 ? label : label + lm * lm_weight;
  };
}

LabelEval evaluate_labels(nn::LanguageModel& model, const std::vector<data::symbolsoup::TokenizedExample>& examples,
                          int64_t batch, DType compute_dtype, ClassTokens classes) {
  autograd::NoGradGuard no_grad;
  nn::AutocastScope autocast(compute_dtype, compute_dtype != model.embedding.dtype());
  LabelEval out;
  double loss_sum = 0;
  for (size_t start = 0; start < examples.size(); start += size_t(batch)) {
    std::vector<int64_t> rows;
    for (size_t i = start; i < std::min(examples.size(), start + size_t(batch)); ++i) rows.push_back(int64_t(i));
    const nn::TokenBatch b = nn::to_device(data::symbolsoup::label_batch(examples, rows), model.device());
    const Tensor logits = model.forward(b.ids);
    count_label_hits(logits, b.targets, classes, out.hits);
    loss_sum += nn::cross_entropy(logits, b.targets, -1).item() * double(rows.size());
  }
  out.loss = examples.empty() ? 0.0 : loss_sum / double(examples.size());
  return out;
}

}  // namespace sessa::apps
