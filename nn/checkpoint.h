// Checkpoints in the safetensors format (data/safetensors.h): every parameter under
// its module name, the AdamW moments as "optimizer.m.<name>" / "optimizer.v.<name>",
// and in __metadata__ the model config ("config", JSON), the training state
// ("training", JSON: step, data position, ...) and "format". Writes are atomic.
//
// Loading trusts nothing: every error is a sessa::Error naming the file and the
// tensor or metadata key ("checkpoint X: metadata 'training' key 'step' is -1,
// expected an integer >= 0"). read_checkpoint checks the metadata: the config,
// and in "training" (each key when present; apps/train writes them all)
// step, optimizer_steps, data_epoch, data_position >= 0, data_world >= 1,
// optimizer_steps <= step, and the run flags (flags.lr finite > 0, flags.batch,
// seq_len, steps, accum >= 1, flags.warmup, seed >= 0, ...). load_parameters and
// read_optimizer_state check each tensor's dtype (floating point where the model
// has floats) and shape, that every value is finite, and that Adam's v >= 0.
#pragma once
#include <string>

#include "data/json_fields.h"
#include "data/safetensors.h"
#include "nn/config.h"
#include "nn/module.h"
#include "nn/parameter_buffer.h"

namespace sessa::nn {

constexpr const char* kCheckpointFormat = "sessa-engine-checkpoint-1";

// The AdamW state as a checkpoint holds it: both moments laid out like `layout`'s
// flat buffer (under ZeRO-1 gathered from every rank first), and the step count.
// Stored per parameter, so a run can resume with any number of ranks.
struct OptimizerState {
  const ParameterBuffer* layout = nullptr;
  Tensor m, v;
  int64_t steps = 0;
};

// `optimizer` may be null (weights only). `training` is stored as given.
void save_checkpoint(const std::string& path, const Module& model, const ModelConfig& config,
                     const OptimizerState* optimizer, const data::Json& training);

struct Checkpoint {
  std::string path;
  ModelConfig config;
  data::Json training;  // an object ({} when absent)
  data::StFile file;
  // Typed reads of `training`; errors name the file and the key.
  data::JsonFields training_fields() const;
};
// Reads and validates the file and its metadata; errors name the file.
Checkpoint read_checkpoint(const std::string& path);
// Copies parameters into `model` (on its device, in its dtype). Every parameter must be
// present with its exact shape and finite values, and every stored tensor (besides
// the optimizer's) must be a parameter; errors name the file and the parameter.
void load_parameters(const Checkpoint& ckpt, Module& model);
// The stored AdamW state in `layout` (on its device); errors name the file and the parameter.
OptimizerState read_optimizer_state(const Checkpoint& ckpt, const ParameterBuffer& layout);

// A checkpoint path from a file, or a run directory meaning its latest checkpoint.
std::string resolve_checkpoint(const std::string& file_or_dir);

}  // namespace sessa::nn
