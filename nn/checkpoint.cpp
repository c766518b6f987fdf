#include "nn/checkpoint.h"

#include <cstring>
#include <filesystem>

#include "tensor/ops.h"

namespace sessa::nn {

namespace {

const char* st_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::I32:
      return "I32";
    case DType::U16:
      return "U16";
  }
  return "?";
}

data::StEntry to_entry(const std::string& name, const Tensor& t) {
  Tensor host = ops::contiguous(t.detach().to(Device::cpu()));
  data::StEntry e{name, st_dtype(host.dtype()), host.shape(), {}};
  e.bytes.resize(size_t(host.numel()) * dtype_size(host.dtype()));
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), host.raw_data(), e.bytes.size());
  return e;
}

// Copies a stored tensor into `dst` (converting dtype, moving device) after checking its shape.
void copy_entry(const Checkpoint& ckpt, const std::string& name, const Tensor& dst) {
  const data::StEntry* e = ckpt.file.find(name);
  SESSA_CHECK(e != nullptr, "checkpoint", ckpt.path << ": tensor '" << name << "' is missing");
  SESSA_CHECK(
      Shape(e->shape) == dst.shape(), "checkpoint",
      ckpt.path << ": tensor '" << name << "' has shape " << Shape(e->shape) << ", the model expects " << dst.shape());
  DType stored = dtype_from_name(e->dtype);
  Tensor host = Tensor::empty(dst.shape(), {stored, Device::cpu()});
  if (!e->bytes.empty()) std::memcpy(host.raw_data(), e->bytes.data(), e->bytes.size());
  ops::copy_(dst, host.to(dst.device()));
}

const std::string* metadata(const data::StFile& f, const std::string& key) {
  for (const auto& [k, v] : f.metadata)
    if (k == key) return &v;
  return nullptr;
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
  const std::string where = "checkpoint " + path + ": metadata";
  data::write_safetensors(path, entries,
                          {{"format", kCheckpointFormat},
                           {"config", data::dump_json(config.to_json(), where + " 'config'")},
                           {"training", data::dump_json(train, where + " 'training'")}});
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c{path, {}, data::Json::object(), data::read_safetensors(path)};
  const std::string* format = metadata(c.file, "format");
  SESSA_CHECK(
      format && *format == kCheckpointFormat, "checkpoint",
      path << ": not a sessa-engine checkpoint (metadata 'format' is " << (format ? *format : "missing") << ")");
  const std::string* config = metadata(c.file, "config");
  SESSA_CHECK(config != nullptr, "checkpoint", path << ": metadata has no model 'config'");
  const std::string where = "checkpoint " + path + ": metadata";
  c.config = ModelConfig::from_json(data::parse_json(*config, where + " 'config'"), where + " 'config'");
  if (const std::string* training = metadata(c.file, "training"))
    c.training = data::parse_json(*training, where + " 'training'");
  c.training_fields();  // an object
  return c;
}

data::JsonFields Checkpoint::training_fields() const {
  return data::JsonFields(training, "checkpoint " + path + ": metadata 'training'");
}

void load_parameters(const Checkpoint& ckpt, Module& model) {
  for (const auto& p : model.named_parameters()) copy_entry(ckpt, p.name, *p.tensor);
}

OptimizerState read_optimizer_state(const Checkpoint& ckpt, const ParameterBuffer& layout) {
  const data::JsonFields training = ckpt.training_fields();
  SESSA_CHECK(training.has("optimizer_steps"), "checkpoint",
              ckpt.path << ": no optimizer state (was it saved without one?)");
  OptimizerState state{&layout, zeros({layout.numel()}, layout.data().options()),
                       zeros({layout.numel()}, layout.data().options()), training.integer("optimizer_steps", 0)};
  for (const auto& [name, m] : layout.views(state.m)) copy_entry(ckpt, "optimizer.m." + name, m);
  for (const auto& [name, v] : layout.views(state.v)) copy_entry(ckpt, "optimizer.v." + name, v);
  return state;
}

std::string resolve_checkpoint(const std::string& file_or_dir) {
  namespace fs = std::filesystem;
  SESSA_CHECK(fs::exists(file_or_dir), "checkpoint", "'" << file_or_dir << "' does not exist");
  if (!fs::is_directory(file_or_dir)) return file_or_dir;
  fs::path latest = fs::path(file_or_dir) / "latest.safetensors";
  SESSA_CHECK(fs::exists(latest), "checkpoint", "run directory '" << file_or_dir << "' has no latest.safetensors");
  return latest.string();
}

}  // namespace sessa::nn
