// Module: a tree of named parameters and sub-modules. Parameter names join the
// path with dots ("layers.3.mixer.proj_fb.weight"), which is also the name a
// checkpoint stores. Modules are created once and never copied or moved (the
// registry holds pointers to their Tensor members).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sessa::nn {

struct NamedParameter {
  std::string name;
  Tensor* tensor;     // the module's member: replaced in place by to()
  bool weight_decay;  // matrices decay; biases, norms, gains and embeddings do not
};

class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  std::vector<NamedParameter> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;
  // Moves/casts every parameter (keeps requires_grad).
  void to(Device device);
  void to(DType dtype);

 protected:
  // Registers a member tensor as a parameter and marks it as requiring grad.
  void register_parameter(const std::string& name, Tensor& t, bool weight_decay);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.push_back({name, m});
    return m;
  }

 private:
  void collect(const std::string& prefix, std::vector<NamedParameter>& out) const;
  std::vector<NamedParameter> own_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace sessa::nn
