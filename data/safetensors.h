// safetensors.h - Reading and writing the safetensors checkpoint format on raw
// bytes: an 8-byte little-endian header length N, N bytes of JSON header
// (space-padded to a multiple of 8), then the concatenated tensor data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sessa::data {

struct StEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", "I64", ... (see safetensors_dtype_size)
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // little-endian element data, row-major
};

using StMetadata = std::vector<std::pair<std::string, std::string>>;

struct StFile {
  std::vector<StEntry> entries;  // in header order
  StMetadata metadata;
  const StEntry* find(const std::string& name) const;  // nullptr when missing
};

// Writes atomically (temporary file, fsync, rename over `path`); entries keep
// the given order. Validates entries first. Throws naming the path on failure
// and never leaves a partial file at `path`.
void write_safetensors(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata);

// Reads and fully validates a file. Errors name the file and, where relevant,
// the tensor.
StFile read_safetensors(const std::string& path);

// Bytes per element of a safetensors dtype; throws on an unknown dtype.
size_t safetensors_dtype_size(const std::string& dtype);

}  // namespace sessa::data
