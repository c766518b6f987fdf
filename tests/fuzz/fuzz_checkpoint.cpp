// tests/fuzz/fuzz_checkpoint.cpp - libFuzzer target: loading a checkpoint the way
// train --resume and sample do (nn::read_checkpoint: the format, the model config
// and training metadata; nn::load_parameters and Trainer::load_optimizer_state into
// a fixed tiny Sessa model: every tensor's name, dtype, shape and values).
//
// Input layout (so that mutations keep the file framed): the safetensors JSON
// header, one NUL byte, then the data section. The target prepends the 8-byte
// header length; the framing itself is fuzzed by fuzz_safetensors. Seeds are real
// checkpoints of kTinyConfig (see make_seeds.cpp).
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "nn/checkpoint.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/fuzz/fuzz_seed_models.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sessa::fuzz::InputFile input("checkpoint");
  static sessa::nn::Trainer trainer(sessa::layer::build_model(sessa::fuzz::tiny_checkpoint_config(), 1), {});
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  if (nul == nullptr) return 0;
  const uint64_t header_size = uint64_t(nul - data);
  std::vector<uint8_t> file(8 + size - 1);
  for (int i = 0; i < 8; ++i) file[i] = uint8_t(header_size >> (8 * i));
  std::memcpy(file.data() + 8, data, header_size);
  std::memcpy(file.data() + 8 + header_size, nul + 1, size - header_size - 1);

  std::optional<sessa::nn::Checkpoint> ckpt;
  sessa::fuzz::expect_clean("read_checkpoint",
                            [&] { ckpt = sessa::nn::read_checkpoint(input.set(file.data(), file.size())); });
  if (!ckpt) return 0;
  sessa::fuzz::expect_clean("load_parameters", [&] { sessa::nn::load_parameters(*ckpt, trainer.model()); });
  sessa::fuzz::expect_clean("load_optimizer_state", [&] { trainer.load_optimizer_state(*ckpt); });
  return 0;
}
