// nn/checkpoint.cpp - checkpoint writing, and reading that validates every
// tensor and metadata key before anything is loaded (see checkpoint.h).
#include "nn/checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "tensor/ops.h"

namespace sessa::nn {

namespace {

data::StEntry to_entry(const std::string& name, const Tensor& t) {
  Tensor host = ops::contiguous(t.detach().to(Device::cpu()));
  data::StEntry e{name, safetensors_dtype_name(host.dtype()), host.shape(), {}};
  e.bytes.resize(size_t(host.numel()) * dtype_size(host.dtype()));
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), host.raw_data(), e.bytes.size());
  return e;
}

std::string label(const std::string& path) { return "checkpoint " + path; }

// The stored dtype, which must suit `dst`: any floating dtype for a float tensor
// (converted on load), the exact dtype otherwise.
DType stored_dtype(const Checkpoint& ckpt, const data::StEntry& e, const Tensor& dst) {
  const bool float_ok = e.dtype == "F32" || e.dtype == "F64" || e.dtype == "BF16";
  const bool ok = is_floating(dst.dtype()) ? float_ok : e.dtype == safetensors_dtype_name(dst.dtype());
  SESSA_CHECK(ok, label(ckpt.path),
              "tensor '" << e.name << "' is stored as " << e.dtype << ", expected "
                         << safetensors_dtype_name(dst.dtype())
                         << (is_floating(dst.dtype()) ? " (or another floating-point dtype: F64, BF16)" : "")
                         << " for the model's " << dtype_name(dst.dtype()) << " tensor");
  return dtype_from_name(e.dtype);
}

// Every value finite (and >= 0 when `non_negative`, for Adam's second moment).
void check_values(const Checkpoint& ckpt, const std::string& name, const Tensor& host, bool non_negative) {
  if (!is_floating(host.dtype())) return;
  const Tensor values = host.to(DType::F32);
  const float* v = values.data<float>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    SESSA_CHECK(std::isfinite(v[i]), label(ckpt.path),
                "tensor '" << name << "' holds " << v[i] << " at element " << i << " of " << values.numel()
                           << " (expected finite values): the run had diverged when this checkpoint was written; "
                              "use an earlier checkpoint");
    SESSA_CHECK(!non_negative || v[i] >= 0, label(ckpt.path),
                "tensor '" << name << "' holds " << v[i] << " at element " << i << " of " << values.numel()
                           << ": Adam's second moment is never negative (corrupted file?)");
  }
}

// Copies a stored tensor into `dst` (converting dtype, moving device) after checking
// its dtype, shape and values.
void copy_entry(const Checkpoint& ckpt, const std::string& name, const Tensor& dst, bool non_negative = false) {
  const data::StEntry* e = ckpt.file.find(name);
  SESSA_CHECK(e != nullptr, label(ckpt.path), "tensor '" << name << "' is missing");
  SESSA_CHECK(Shape(e->shape) == dst.shape(), label(ckpt.path),
              "tensor '" << name << "' has shape " << Shape(e->shape) << ", the model expects " << dst.shape());
  Tensor host = Tensor::empty(dst.shape(), {stored_dtype(ckpt, *e, dst), Device::cpu()});
  if (!e->bytes.empty()) std::memcpy(host.raw_data(), e->bytes.data(), e->bytes.size());
  check_values(ckpt, name, host, non_negative);
  ops::copy_(dst, host.to(dst.device()));
}

const std::string* metadata(const data::StFile& f, const std::string& key) {
  for (const auto& [k, v] : f.metadata)
    if (k == key) return &v;
  return nullptr;
}

// The training state as apps/train writes it; every key is optional here (the
// reader asks for what it needs), but a present key must make sense.
void validate_training(const data::JsonFields& t) {
  for (const char* key : {"step", "optimizer_steps", "data_epoch", "data_position"})
    if (t.has(key)) t.integer(key, 0);
  if (t.has("data_world")) t.integer("data_world", 1);
  if (t.has("step") && t.has("optimizer_steps") && t.integer("optimizer_steps") > t.integer("step"))
    t.fail("optimizer_steps", "is " + std::to_string(t.integer("optimizer_steps")) + ", more than 'step' " +
                                  std::to_string(t.integer("step")) + " (expected at most one update per step)");
  if (!t.has("flags")) return;
  const data::JsonFields flags = t.object("flags");
  for (const char* key : {"batch", "seq_len", "steps", "accum"})
    if (flags.has(key)) flags.integer(key, 1);
  for (const char* key : {"warmup", "seed"})
    if (flags.has(key)) flags.integer(key, 0);
  if (flags.has("lr")) flags.number("lr", 0, /*exclusive=*/true);
  for (const char* key : {"weight_decay", "grad_clip"})
    if (flags.has(key)) flags.number(key, 0);
  for (const char* key : {"data", "val_data"})
    if (flags.has(key)) flags.string(key);
}

}  // namespace

void save_checkpoint(const std::string& path, const Module& model, const ModelConfig& config,
                     const OptimizerState* optimizer, const data::Json& training) {
  std::vector<data::StEntry> entries;
  for (const auto& p : model.named_parameters()) entries.push_back(to_entry(p.name, *p.tensor));
  data::Json train = training.is_null() ? data::Json::object() : training;
  if (optimizer) {
    for (const auto& [name, m] : optimizer->layout->views(optimizer->m))
      entries.push_back(to_entry("optimizer.m." + name, m));
    for (const auto& [name, v] : optimizer->layout->views(optimizer->v))
      entries.push_back(to_entry("optimizer.v." + name, v));
    train["optimizer_steps"] = optimizer->steps;
  }
  const std::string where = label(path) + ": metadata";
  data::write_safetensors(path, entries,
                          {{"format", kCheckpointFormat},
                           {"config", data::dump_json(config.to_json(), where + " 'config'")},
                           {"training", data::dump_json(train, where + " 'training'")}});
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c{path, {}, data::Json::object(), data::read_safetensors(path)};
  const std::string* format = metadata(c.file, "format");
  SESSA_CHECK(format && *format == kCheckpointFormat, label(path),
              "not a sessa-engine checkpoint (metadata 'format' is " << (format ? "'" + *format + "'" : "missing")
                                                                     << ", expected '" << kCheckpointFormat << "')");
  const std::string* config = metadata(c.file, "config");
  SESSA_CHECK(config != nullptr, label(path), "metadata 'config' missing (expected the model config as JSON)");
  const std::string where = label(path) + ": metadata";
  c.config = ModelConfig::from_json(data::parse_json(*config, where + " 'config'"), where + " 'config'");
  if (const std::string* training = metadata(c.file, "training"))
    c.training = data::parse_json(*training, where + " 'training'");
  validate_training(c.training_fields());
  return c;
}

data::JsonFields Checkpoint::training_fields() const {
  return data::JsonFields(training, label(path) + ": metadata 'training'");
}

void load_parameters(const Checkpoint& ckpt, Module& model) {
  std::set<std::string> names;
  for (const auto& p : model.named_parameters()) {
    copy_entry(ckpt, p.name, *p.tensor);
    names.insert(p.name);
  }
  for (const data::StEntry& e : ckpt.file.entries)
    SESSA_CHECK(names.count(e.name) || e.name.rfind("optimizer.", 0) == 0, label(ckpt.path),
                "tensor '" << e.name << "' is not a parameter of the " << ckpt.config.summary()
                           << " model (a checkpoint of another model?)");
}

OptimizerState read_optimizer_state(const Checkpoint& ckpt, const ParameterBuffer& layout) {
  const data::JsonFields training = ckpt.training_fields();
  SESSA_CHECK(training.has("optimizer_steps"), label(ckpt.path),
              "no optimizer state: metadata 'training' has no 'optimizer_steps' (saved without one?)");
  OptimizerState state{&layout, zeros({layout.numel()}, layout.data().options()),
                       zeros({layout.numel()}, layout.data().options()), training.integer("optimizer_steps", 0)};
  for (const auto& [name, m] : layout.views(state.m)) copy_entry(ckpt, "optimizer.m." + name, m);
  for (const auto& [name, v] : layout.views(state.v)) copy_entry(ckpt, "optimizer.v." + name, v, true);
  return state;
}

std::string resolve_checkpoint(const std::string& file_or_dir) {
  namespace fs = std::filesystem;
  std::error_code error;  // the error_code overloads: no filesystem_error escapes
  const fs::file_status status = fs::status(file_or_dir, error);
  SESSA_CHECK(status.type() != fs::file_type::none, "checkpoint",
              "cannot access '" << file_or_dir << "': " << error.message());
  SESSA_CHECK(fs::exists(status), "checkpoint", "'" << file_or_dir << "' does not exist");
  if (!fs::is_directory(status)) return file_or_dir;
  fs::path latest = fs::path(file_or_dir) / "latest.safetensors";
  SESSA_CHECK(fs::exists(latest, error), "checkpoint",
              "run directory '" << file_or_dir << "' has no latest.safetensors");
  return latest.string();
}

}  // namespace sessa::nn
