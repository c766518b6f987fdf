// label_classifier.h - a language model as a sequence classifier (apps/symbolsoup):
// the class is the next token at one position per row (SymbolSoup's <label>), the
// loss is the cross-entropy there (every other target is -1, the ignore index), with
// an optional full-sequence next-token term beside it, and a prediction is the argmax
// over the class tokens only.
#pragma once
#include <functional>
#include <vector>

#include "data/symbolsoup.h"
#include "nn/trainer.h"

namespace sessa::apps {

struct LabelHits {
  int64_t correct = 0, total = 0;
  double accuracy() const { return total > 0 ? double(correct) / double(total) : 0.0; }
};

// The class tokens [first, first + count) of the vocabulary.
struct ClassTokens {
  int32_t first = data::symbolsoup::kFirstClass, count = data::symbolsoup::kClasses;
};

// Adds to `hits` the rows of logits (B, T, V) whose target (B, T) is not -1: correct
// when the argmax over the class tokens equals the target.
void count_label_hits(const Tensor& logits, const Tensor& targets, ClassTokens classes, LabelHits& hits);

// The two terms of label_loss, summed over the micro-batches since the caller last reset it.
struct LossTerms {
  double label = 0, lm = 0;  // sums of the per-micro-batch means
  int64_t batches = 0;
};

// A Trainer loss (nn::TrainerOptions::loss): cross-entropy at the scored positions, plus
// lm_weight times the mean next-token cross-entropy over every real position before <label>
// (data::symbolsoup::next_token_targets), both from the one forward pass. lm_weight 0 is the
// label loss alone, computed exactly as without the option. Counts each micro-batch's hits
// into *hits and its two terms into *terms (each may be null; terms costs a host read of two
// scalars per micro-batch).
std::function<Tensor(nn::LanguageModel&, const nn::TokenBatch&)> label_loss(LabelHits* hits, ClassTokens classes = {},
                                                                            double lm_weight = 0,
                                                                            LossTerms* terms = nullptr);

struct LabelEval {
  LabelHits hits;
  double loss = 0;  // mean cross-entropy at the label positions
};
// Accuracy and loss of `model` on every example, `batch` rows at a time, without gradients.
LabelEval evaluate_labels(nn::LanguageModel& model, const std::vector<data::symbolsoup::TokenizedExample>& examples,
                          int64_t batch, DType compute_dtype = DType::F32, ClassTokens classes = {});

}  // namespace sessa::apps
