// tests/fuzz/fuzz_seed_models.h - The fixed model the checkpoint fuzz target loads
// into, shared with make_seeds.cpp so the seed checkpoints match it.
#pragma once

#include "nn/config.h"

namespace sessa::fuzz {

// A tiny Sessa model: a checkpoint of it is a few kilobytes.
inline nn::ModelConfig tiny_checkpoint_config() {
  nn::ModelConfig c;
  c.family = nn::Family::sessa;
  c.vocab_size = 7;
  c.d_model = 4;
  c.n_layers = 1;
  c.n_heads = 1;
  return c;
}

}  // namespace sessa::fuzz
