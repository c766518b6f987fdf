#include "nn/module.h"

namespace sessa::nn {

void Module::register_parameter(const std::string& name, Tensor& t, bool weight_decay) {
  t.set_requires_grad(true);
  own_.push_back({name, &t, weight_decay});
}

void Module::collect(const std::string& prefix, std::vector<NamedParameter>& out) const {
  for (const auto& p : own_) out.push_back({prefix + p.name, p.tensor, p.weight_decay});
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<NamedParameter> Module::named_parameters() const {
  std::vector<NamedParameter> out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (const auto& p : named_parameters()) out.push_back(*p.tensor);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : named_parameters()) n += p.tensor->numel();
  return n;
}

void Module::to(Device device) {
  for (const auto& p : named_parameters()) {
    *p.tensor = p.tensor->detach().to(device);
    p.tensor->set_requires_grad(true);
  }
}

void Module::to(DType dtype) {
  for (const auto& p : named_parameters()) {
    *p.tensor = p.tensor->detach().to(dtype);
    p.tensor->set_requires_grad(true);
  }
}

}  // namespace sessa::nn
