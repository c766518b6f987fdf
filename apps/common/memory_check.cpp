// memory_check.cpp - the host-memory refusals of training apps (memory_check.h).
#include "apps/common/memory_check.h"

#include <unistd.h>

#include "sessa/model.h"
#include "tensor/error.h"

namespace sessa::apps {

double host_memory_bytes() {
  const double pages = double(sysconf(_SC_PHYS_PAGES)), page = double(sysconf(_SC_PAGE_SIZE));
  return pages > 0 && page > 0 ? pages * page : 0;
}

void check_fits_in_memory(const nn::ModelConfig& c, int64_t batch, int64_t seq_len, Device device) {
  const double memory = host_memory_bytes();
  const double params = double(layer::parameter_count(c));
  const double bytes = 16 * params + 8.0 * double(batch) * double(seq_len) * double(c.vocab_size);
  SESSA_CHECK(params < 1e11, "--d-model/--layers/--vocab",
              c.summary() << " has " << params / 1e9 << "B parameters: more than this engine trains (100B)");
  if (device.is_cuda()) return;  // device memory is checked by the allocator, with its own message
  SESSA_CHECK(memory <= 0 || bytes < memory, "--d-model/--layers/--vocab/--batch/--seq-len",
              c.summary() << " (" << params / 1e6 << "M parameters) at batch " << batch << " x " << seq_len
                          << " tokens needs at least " << bytes / 1e9 << " GB for weights, gradients, AdamW moments "
                          << "and logits, more than this machine's " << memory / 1e9 << " GB");
}

}  // namespace sessa::apps
