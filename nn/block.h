// The interface every language-model layer implements (Sessa, Transformer, Mamba),
// so one LM wrapper (nn/lm.h) can stack any of them and decode with any of them.
#pragma once
#include <memory>

#include "nn/module.h"

namespace sessa::nn {

// What a layer keeps between decoding steps (KV cache, SSM state, past Sessa states).
struct DecodeState {
  virtual ~DecodeState() = default;
  int64_t position = 0;  // tokens consumed so far
};

class Block : public Module {
 public:
  // Full causal forward: x (B, T, D) -> (B, T, D), residual included.
  virtual Tensor forward(const Tensor& x) = 0;
  // A cache for `batch` sequences of up to `max_len` tokens, on the parameters' device.
  virtual std::unique_ptr<DecodeState> new_state(int64_t batch, int64_t max_len) const = 0;
  // One new token per sequence: x (B, 1, D) at position state.position -> (B, 1, D).
  // Equal (to rounding) to row `position` of forward() over the whole prefix.
  virtual Tensor step(const Tensor& x, DecodeState& state) = 0;
};

}  // namespace sessa::nn
