// Next-token sampling from a vector of logits: temperature, top-k, top-p (nucleus)
// and one draw from a caller-supplied uniform number, so that a seeded generator
// (tensor/philox.h) makes generation reproducible.
#pragma once
#include <cstdint>
#include <vector>

namespace sessa::nn {

struct SamplingOptions {
  double temperature = 0.8;  // 0: greedy (argmax); otherwise logits are divided by it
  int64_t top_k = 0;         // 0: off; k: keep the k most likely tokens
  double top_p = 1.0;        // 1: off; p in (0, 1): keep the smallest most-likely set with mass >= p
};

// Throws sessa::Error naming the bad field (temperature < 0 or not finite,
// top_k < 0, top_p outside (0, 1]).
void validate(const SamplingOptions& opt);

// Picks one token id from `logits` (one per vocabulary entry; -inf masks a token).
// Greedy when temperature is 0 (ties go to the lowest id). Otherwise: scale by
// 1/temperature, keep the top_k most likely (ties broken by lower id), softmax in
// double, keep the smallest prefix (by decreasing probability) whose mass reaches
// top_p, renormalise, and return the token where `uniform01` (in [0, 1)) falls in
// the cumulative distribution. Throws on invalid options, an empty vector, a NaN
// logit, all logits -inf, or uniform01 outside [0, 1).
int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opt, double uniform01);

}  // namespace sessa::nn
