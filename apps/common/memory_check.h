// memory_check.h - Refusals before any work when a run cannot fit in host memory: the
// one lower bound of what a training step needs (train and bench share it) and this
// machine's memory, so an app names the flags at fault instead of dying of
// std::bad_alloc later (apps::run_app still turns one that escapes into a message).
#pragma once
#include <cstdint>

#include "nn/config.h"
#include "tensor/device.h"

namespace sessa::apps {

// This machine's physical memory in bytes (0 when unknown).
double host_memory_bytes();

// Refuses a model and batch whose weights, gradients, AdamW moments and logits alone
// (a lower bound of what a training step needs: 16 bytes per parameter, 8 per logit)
// exceed this machine's memory, naming --d-model/--layers/--vocab/--batch/--seq-len,
// the estimate and the memory. Also refuses models over 100B parameters on any device;
// on a GPU the allocator checks device memory with its own message.
void check_fits_in_memory(const nn::ModelConfig& c, int64_t batch, int64_t seq_len, Device device);

}  // namespace sessa::apps
