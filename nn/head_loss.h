// The language-model head fused with its cross-entropy: mean_r CE(h_r W^T, y_r) without ever
// holding the logits of more than `chunk_rows` rows (see nn/head_loss.cpp for the method and
// why computing the gradient inside the forward is exact).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sessa::nn {

// Rows per chunk by default: 4096 rows x vocab 50304 are 412 MB of bfloat16 logits (824 MB of
// float32), and the same again for their gradient, alive one chunk at a time.
constexpr int64_t kHeadLossChunkRows = 4096;

// Mean cross-entropy of the logits h W^T against int32 targets, skipping targets equal to
// ignore_index (the mean is over the counted rows; 0 when none is counted). Returns a 0-d loss,
// float32 for float32 and bfloat16 h (float64 for float64).
//   h       (..., D)   float32, float64 or bfloat16
//   weight  (V, D)     h's dtype, or float32 beside bfloat16 h (master weights: cast once per
//                      call, gradient returned in float32)
//   targets int32 with one element per row of h (any shape), on h's device (counted there: no
//           host read, so a training step never waits on it) or on the host (range-checked
//           there, then copied to the device).
// One autograd node with inputs h and weight. It records the gradient during the forward, so
// calling it with grad enabled and an input requiring grad costs the two extra GEMMs then.
Tensor head_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& targets, int64_t ignore_index = -1,
                          int64_t chunk_rows = kHeadLossChunkRows);

}  // namespace sessa::nn
