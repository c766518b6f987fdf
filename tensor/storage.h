// Storage: one reference-counted block of memory on one device. Tensors are
// views (shape, strides, offset) onto a Storage; many views may share one.
#pragma once
#include <cstddef>
#include <memory>

#include "tensor/device.h"

namespace sessa {

class Storage {
 public:
  Storage(size_t nbytes, Device device);  // uninitialised memory
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

}  // namespace sessa
