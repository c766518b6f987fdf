#include "tensor/storage.h"

#include <cstdlib>

#include "tensor/cuda_hooks.h"
#include "tensor/error.h"

namespace sessa {

namespace {
constexpr size_t kHostAlignment = 64;  // one cache line, and enough for AVX-512 loads
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    size_t rounded = (nbytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    data_ = std::aligned_alloc(kHostAlignment, rounded == 0 ? kHostAlignment : rounded);
    SESSA_CHECK(data_ != nullptr, "alloc", "out of host memory allocating " << nbytes << " bytes");
  } else {
    SESSA_CUDA_CALL(data_ = cuda::alloc(nbytes, device.index));
  }
}

Storage::~Storage() {
  if (device_.is_cpu()) {
    std::free(data_);
  } else {
#if SESSA_HAS_CUDA
    cuda::free(data_, nbytes_, device_.index);
#endif
  }
}

#if !SESSA_HAS_CUDA
bool cuda_available() { return false; }
#else
bool cuda_available() { return cuda::device_count() > 0; }
#endif

Device parse_device(const std::string& spec) {
  if (spec == "cpu") return Device::cpu();
  if (spec == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  if (spec.rfind("cuda", 0) == 0) {
    SESSA_CHECK(cuda_available(), "device",
                "'" << spec << "' requested but no CUDA GPU is available"
#if !SESSA_HAS_CUDA
                    << " (this binary was built without the CUDA backend)"
#endif
    );
    int index = spec.size() > 5 && spec[4] == ':' ? std::atoi(spec.c_str() + 5) : 0;
    return Device::cuda(index);
  }
  SESSA_FAIL("device", "unknown device '" << spec << "' (expected auto, cpu, cuda or cuda:N)");
}

}  // namespace sessa
