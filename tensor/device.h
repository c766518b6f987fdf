// Where a tensor's memory lives: the host (cpu) or a CUDA GPU with an index.
#pragma once
#include <cstdint>
#include <string>

namespace sessa {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// True when this binary has the CUDA backend and a GPU is visible.
bool cuda_available();
// Parses "cpu", "cuda", "cuda:1" or "auto" (cuda when available, else cpu).
Device parse_device(const std::string& spec);

}  // namespace sessa
