// Tensor: a strided view (shape, strides, offset, dtype) onto shared Storage.
//
// Copying a Tensor copies a handle: both handles name the same TensorImpl.
// Views made by ops::view/permute/narrow/expand share the Storage and copy no
// data. A tensor also carries the autograd state that autograd/ reads and
// writes (requires_grad, grad, grad_fn); tensor/ only stores it.
#pragma once
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/shape.h"
#include "tensor/storage.h"

namespace sessa {

namespace autograd {
struct Node;
}
struct TensorImpl;

struct TensorOptions {
  DType dtype = DType::F32;
  Device device = Device::cpu();
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (no storage)
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // New, uninitialised, contiguous tensor.
  static Tensor empty(const Shape& shape, TensorOptions opt = {});
  // A view onto existing storage.
  static Tensor make_view(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  TensorOptions options() const { return {dtype(), device()}; }
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return sessa::numel(shape()); }
  bool is_contiguous() const;
  bool is_cuda() const { return device().is_cuda(); }
  const std::shared_ptr<Storage>& storage() const;
  bool shares_storage(const Tensor& o) const { return storage() == o.storage(); }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  const void* identity() const { return impl_.get(); }  // equal for handles of one tensor (a map key)
  // The only handle to this tensor and the only view of its storage: writing it in place
  // changes nothing that another handle can see.
  bool unshared() const { return impl_.use_count() == 1 && storage().use_count() == 1; }

  // Pointer to the first element (storage start + offset), typed and checked.
  template <class T>
  T* data() const {
    SESSA_CHECK(dtype() == dtype_of<T>(), "data",
                "tensor is " << dtype_name(dtype()) << ", asked for " << dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;

  // Host access (copies to the host when needed).
  template <class T>
  std::vector<T> to_vector() const;
  double item() const;        // the value of a one-element tensor, as double
  Tensor to(Device d) const;  // copy to another device (same tensor when already there)
  Tensor to(DType t) const;   // cast (same tensor when already that dtype)
  std::string str() const;    // "float32[2, 3] on cpu"

  // Autograd state (managed by autograd/). requires_grad(): a leaf that asked for
  // gradients, or the result of a recorded op (has a grad_fn).
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r = true);
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  void set_grad_fn(std::shared_ptr<autograd::Node> fn) const;
  // Same data and view, no autograd history.
  Tensor detach() const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::F32;
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<autograd::Node> grad_fn;
};

// ---- creation -----------------------------------------------------------------
Tensor zeros(const Shape& shape, TensorOptions opt = {});
Tensor ones(const Shape& shape, TensorOptions opt = {});
Tensor full(const Shape& shape, double value, TensorOptions opt = {});
Tensor arange(int64_t n, TensorOptions opt = {});     // 0, 1, ..., n-1
Tensor scalar(double value, TensorOptions opt = {});  // a 0-d tensor
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);  // contiguous, same shape/dtype/device
// Copies host values (converted to opt.dtype) into a new tensor on opt.device.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opt = {});

}  // namespace sessa
