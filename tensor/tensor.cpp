#include "tensor/tensor.h"

#include <sstream>

#include "tensor/cpu/loops.h"
#include "tensor/ops.h"

namespace sessa {

Tensor Tensor::empty(const Shape& shape, TensorOptions opt) {
  for (int64_t d : shape) SESSA_CHECK(d >= 0, "empty", "negative dimension in shape " << shape);
  auto storage = std::make_shared<Storage>(size_t(sessa::numel(shape)) * dtype_size(opt.dtype), opt.device);
  return make_view(std::move(storage), shape, contiguous_strides(shape), 0, opt.dtype);
}

Tensor Tensor::make_view(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

#define SESSA_IMPL_CHECK() SESSA_CHECK(impl_, "tensor", "use of an undefined tensor")

const Shape& Tensor::shape() const {
  SESSA_IMPL_CHECK();
  return impl_->shape;
}
const Shape& Tensor::strides() const {
  SESSA_IMPL_CHECK();
  return impl_->strides;
}
int64_t Tensor::offset() const {
  SESSA_IMPL_CHECK();
  return impl_->offset;
}
DType Tensor::dtype() const {
  SESSA_IMPL_CHECK();
  return impl_->dtype;
}
Device Tensor::device() const {
  SESSA_IMPL_CHECK();
  return impl_->storage->device();
}
const std::shared_ptr<Storage>& Tensor::storage() const {
  SESSA_IMPL_CHECK();
  return impl_->storage;
}
int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] != 1 && impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  SESSA_IMPL_CHECK();
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(dtype_size(impl_->dtype));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = ops::contiguous(ops::cast(to(Device::cpu()), dtype_of<T>()));
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<uint16_t> Tensor::to_vector<uint16_t>() const;

double Tensor::item() const {
  SESSA_CHECK(numel() == 1, "item", "tensor has " << numel() << " elements, expected 1 (shape " << shape() << ")");
  return to_vector<double>()[0];
}

Tensor Tensor::to(Device d) const { return device() == d ? *this : ops::to_device(*this, d); }
Tensor Tensor::to(DType t) const { return dtype() == t ? *this : ops::cast(*this, t); }

std::string Tensor::str() const {
  if (!impl_) return "undefined";
  std::ostringstream os;
  os << dtype_name(dtype()) << shape() << " on " << device().str();
  return os.str();
}

bool Tensor::requires_grad() const { return impl_ && (impl_->requires_grad || impl_->grad_fn); }
Tensor& Tensor::set_requires_grad(bool r) {
  SESSA_IMPL_CHECK();
  SESSA_CHECK(!impl_->grad_fn, "requires_grad", "only leaf tensors (no grad_fn) can change requires_grad");
  SESSA_CHECK(!r || is_floating(dtype()), "requires_grad", "only floating tensors can require grad, got " << str());
  impl_->requires_grad = r;
  return *this;
}
Tensor Tensor::grad() const {
  SESSA_IMPL_CHECK();
  return impl_->grad;
}
void Tensor::set_grad(const Tensor& g) const {
  SESSA_IMPL_CHECK();
  impl_->grad = g;
}
const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  SESSA_IMPL_CHECK();
  return impl_->grad_fn;
}
void Tensor::set_grad_fn(std::shared_ptr<autograd::Node> fn) const {
  SESSA_IMPL_CHECK();
  impl_->grad_fn = std::move(fn);
}

Tensor Tensor::detach() const {
  if (!impl_) return {};
  return make_view(impl_->storage, impl_->shape, impl_->strides, impl_->offset, impl_->dtype);
}

// ---- creation -------------------------------------------------------------------

Tensor full(const Shape& shape, double value, TensorOptions opt) {
  Tensor t = Tensor::empty(shape, opt);
  ops::fill_(t, value);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opt) { return full(shape, 0.0, opt); }
Tensor ones(const Shape& shape, TensorOptions opt) { return full(shape, 1.0, opt); }
Tensor scalar(double value, TensorOptions opt) { return full({}, value, opt); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.options()); }
Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.options()); }

Tensor arange(int64_t n, TensorOptions opt) {
  std::vector<double> v(size_t(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double(i);
  return from_vector(v, {n}, opt);
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opt) {
  SESSA_CHECK(int64_t(values.size()) == numel(shape), "from_vector",
              values.size() << " values do not fill shape " << shape);
  Tensor host = Tensor::empty(shape, {dtype_of<T>(), Device::cpu()});
  if (!values.empty()) std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(T));
  return host.to(opt.dtype).to(opt.device);
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<uint16_t>(const std::vector<uint16_t>&, const Shape&, TensorOptions);

}  // namespace sessa
