// safetensors.cpp - safetensors writer (atomic) and validating reader.
#include "data/safetensors.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <unordered_set>

#include "data/file_util.h"
#include "data/json.h"

namespace sessa::data {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kHeaderLengthBytes = 8;
constexpr size_t kHeaderAlignment = 8;
constexpr std::string_view kMetadataKey = "__metadata__";

constexpr std::array<std::pair<std::string_view, size_t>, 15> kDtypeSizes = {{
    {"BOOL", 1},
    {"U8", 1},
    {"I8", 1},
    {"F8_E5M2", 1},
    {"F8_E4M3", 1},
    {"I16", 2},
    {"U16", 2},
    {"F16", 2},
    {"BF16", 2},
    {"I32", 4},
    {"U32", 4},
    {"F32", 4},
    {"I64", 8},
    {"U64", 8},
    {"F64", 8},
}};

// Location and type of one tensor as described by the header.
struct TensorDescriptor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw std::runtime_error("safetensors '" + path + "': " + message);
}

std::string tensor_label(std::string_view name) { return "tensor '" + std::string(name) + "'"; }

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

// prod(shape) * element size; nullopt for a negative dimension or overflow.
std::optional<uint64_t> byte_count(const std::vector<int64_t>& shape, size_t element_size) {
  uint64_t count = element_size;
  for (const int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    const auto extent = static_cast<uint64_t>(dim);
    if (extent != 0 && count > UINT64_MAX / extent) return std::nullopt;
    count *= extent;
  }
  return count;
}

// Checks that `actual_bytes` matches shape and dtype; throws a plain message.
void check_byte_count(const std::vector<int64_t>& shape, const std::string& dtype, uint64_t actual_bytes) {
  const std::optional<uint64_t> expected = byte_count(shape, safetensors_dtype_size(dtype));
  if (!expected) throw std::runtime_error("invalid shape " + shape_to_string(shape));
  if (*expected != actual_bytes) {
    throw std::runtime_error("has " + std::to_string(actual_bytes) + " bytes but shape " + shape_to_string(shape) +
                             " of " + dtype + " needs " + std::to_string(*expected));
  }
}

// ---- writing ----

void validate_entries(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata) {
  std::unordered_set<std::string> names;
  for (const StEntry& entry : entries) {
    if (entry.name == kMetadataKey) fail(path, "tensor name '__metadata__' is reserved");
    if (!names.insert(entry.name).second) fail(path, "duplicate " + tensor_label(entry.name));
    try {
      check_byte_count(entry.shape, entry.dtype, entry.bytes.size());
    } catch (const std::runtime_error& error) {
      fail(path, tensor_label(entry.name) + ": " + error.what());
    }
  }
  std::unordered_set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    if (!keys.insert(key).second) fail(path, "duplicate metadata key '" + key + "'");
  }
}

std::string build_header(const std::vector<StEntry>& entries, const StMetadata& metadata) {
  Json::Object header;
  if (!metadata.empty()) {
    Json::Object metadata_object;
    for (const auto& [key, value] : metadata) metadata_object.emplace_back(key, value);
    header.emplace_back(std::string(kMetadataKey), std::move(metadata_object));
  }
  uint64_t offset = 0;
  for (const StEntry& entry : entries) {
    Json::Array shape(entry.shape.begin(), entry.shape.end());
    const uint64_t end = offset + entry.bytes.size();
    header.emplace_back(
        entry.name,
        Json::Object{{"dtype", entry.dtype}, {"shape", std::move(shape)}, {"data_offsets", Json::Array{offset, end}}});
    offset = end;
  }
  std::string text = Json(std::move(header)).dump();
  text.append((kHeaderAlignment - text.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
  return text;
}

std::array<uint8_t, kHeaderLengthBytes> encode_u64_le(uint64_t value) {
  std::array<uint8_t, kHeaderLengthBytes> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(value >> (8 * i));
  return bytes;
}

// ---- reading ----

uint64_t decode_u64_le(const std::array<uint8_t, kHeaderLengthBytes>& bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < bytes.size(); ++i) value |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  return value;
}

StMetadata parse_metadata(const Json& json) {
  StMetadata metadata;
  for (const auto& [key, value] : json.as_object()) {
    if (!value.is_string()) {
      throw std::runtime_error("value of key '" + key + "' must be a string, got " + Json::type_name(value.type()));
    }
    metadata.emplace_back(key, value.as_string());
  }
  return metadata;
}

std::vector<int64_t> parse_shape(const Json& json) {
  std::vector<int64_t> shape;
  for (const Json& dim : json.as_array()) {
    shape.push_back(dim.as_int());
    if (shape.back() < 0) throw std::runtime_error("negative dimension in shape");
  }
  return shape;
}

TensorDescriptor parse_descriptor(const std::string& name, const Json& json, uint64_t data_size) {
  TensorDescriptor tensor{name, json.at("dtype").as_string(), parse_shape(json.at("shape"))};
  const Json& offsets = json.at("data_offsets");
  if (offsets.size() != 2) throw std::runtime_error("data_offsets must have 2 elements");
  const int64_t begin = offsets.at(0).as_int();
  const int64_t end = offsets.at(1).as_int();
  const std::string range = "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (begin < 0 || end < begin) throw std::runtime_error("invalid data_offsets " + range);
  tensor.begin = static_cast<uint64_t>(begin);
  tensor.end = static_cast<uint64_t>(end);
  if (tensor.end > data_size) {
    throw std::runtime_error("data_offsets " + range + " exceed the data section of " + std::to_string(data_size) +
                             " bytes (truncated file?)");
  }
  check_byte_count(tensor.shape, tensor.dtype, tensor.end - tensor.begin);
  return tensor;
}

void check_no_overlap(const std::string& path, std::vector<const TensorDescriptor*> tensors) {
  std::erase_if(tensors, [](const TensorDescriptor* t) { return t->begin == t->end; });
  std::sort(tensors.begin(), tensors.end(), [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < tensors.size(); ++i) {
    if (tensors[i]->begin < tensors[i - 1]->end) {
      fail(path, tensor_label(tensors[i - 1]->name) + " and " + tensor_label(tensors[i]->name) +
                     " overlap in the data section");
    }
  }
}

Json read_header(const std::string& path, std::ifstream& in, uint64_t file_size) {
  std::array<uint8_t, kHeaderLengthBytes> length_bytes{};
  in.read(reinterpret_cast<char*>(length_bytes.data()), length_bytes.size());
  if (!in) fail(path, "cannot read header length");
  const uint64_t header_size = decode_u64_le(length_bytes);
  if (header_size > file_size - kHeaderLengthBytes) {
    fail(path, "header length " + std::to_string(header_size) + " exceeds the file size of " +
                   std::to_string(file_size) + " bytes");
  }
  if (header_size > kMaxHeaderBytes) {
    fail(path, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  }
  std::string text(header_size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_size));
  if (!in) fail(path, "cannot read header");
  Json header;
  try {
    header = Json::parse(text);
  } catch (const std::runtime_error& error) {
    fail(path, std::string("invalid header: ") + error.what());
  }
  if (!header.is_object()) fail(path, "header must be a JSON object");
  return header;
}

std::vector<TensorDescriptor> parse_header(const std::string& path, const Json& header, uint64_t data_size,
                                           StMetadata& metadata) {
  std::vector<TensorDescriptor> tensors;
  for (const auto& [key, value] : header.as_object()) {
    try {
      if (key == kMetadataKey) {
        metadata = parse_metadata(value);
      } else {
        tensors.push_back(parse_descriptor(key, value, data_size));
      }
    } catch (const std::runtime_error& error) {
      const std::string label = key == kMetadataKey ? key : tensor_label(key);
      fail(path, label + ": " + error.what());
    }
  }
  return tensors;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  for (const auto& [name, size] : kDtypeSizes) {
    if (name == dtype) return size;
  }
  throw std::runtime_error("unknown safetensors dtype '" + dtype + "'");
}

const StEntry* StFile::find(const std::string& name) const {
  for (const StEntry& entry : entries) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

void write_safetensors(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata) {
  validate_entries(path, entries, metadata);
  const std::string header = build_header(entries, metadata);
  AtomicFileWriter writer(path);
  writer.write(encode_u64_le(header.size()).data(), kHeaderLengthBytes);
  writer.write(header.data(), header.size());
  for (const StEntry& entry : entries) writer.write(entry.bytes.data(), entry.bytes.size());
  writer.commit();
}

StFile read_safetensors(const std::string& path) {
  std::error_code status_error;
  if (std::filesystem::exists(path, status_error) && !std::filesystem::is_regular_file(path, status_error)) {
    fail(path, "not a regular file");
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, std::string("cannot open file: ") + std::strerror(errno));
  const auto file_size = static_cast<uint64_t>(in.tellg());
  if (file_size < kHeaderLengthBytes) {
    fail(path, "file of " + std::to_string(file_size) + " bytes is too small for a header");
  }
  in.seekg(0);
  const Json header = read_header(path, in, file_size);
  const uint64_t data_start = static_cast<uint64_t>(in.tellg());
  StFile file;
  const std::vector<TensorDescriptor> tensors = parse_header(path, header, file_size - data_start, file.metadata);
  std::vector<const TensorDescriptor*> tensor_pointers;
  for (const TensorDescriptor& tensor : tensors) tensor_pointers.push_back(&tensor);
  check_no_overlap(path, std::move(tensor_pointers));

  for (const TensorDescriptor& tensor : tensors) {
    StEntry entry{tensor.name, tensor.dtype, tensor.shape, std::vector<uint8_t>(tensor.end - tensor.begin)};
    in.seekg(static_cast<std::streamoff>(data_start + tensor.begin));
    in.read(reinterpret_cast<char*>(entry.bytes.data()), static_cast<std::streamsize>(entry.bytes.size()));
    if (!in) fail(path, "cannot read data of " + tensor_label(tensor.name));
    file.entries.push_back(std::move(entry));
  }
  return file;
}

}  // namespace sessa::data
