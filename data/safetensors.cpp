// safetensors.cpp - safetensors writer (atomic) and validating reader.
#include "data/safetensors.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "data/file_util.h"
#include "data/json_fields.h"
#include "tensor/error.h"

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

std::optional<size_t> dtype_size_or_none(std::string_view dtype) {
  for (const auto& [name, size] : kDtypeSizes) {
    if (name == dtype) return size;
  }
  return std::nullopt;
}

std::string dtype_list() {
  std::string list;
  for (const auto& [name, size] : kDtypeSizes) list += (list.empty() ? "" : ", ") + std::string(name);
  return list;
}

// Location and type of one tensor as described by the header.
struct TensorDescriptor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

std::string file_label(const std::string& path) { return "safetensors " + path; }

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw Error(file_label(path) + ": " + message);
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

// Checks that `actual_bytes` matches shape and dtype; `what` names the tensor.
void check_byte_count(const std::string& what, const std::vector<int64_t>& shape, const std::string& dtype,
                      uint64_t actual_bytes) {
  const std::optional<size_t> element_size = dtype_size_or_none(dtype);
  SESSA_CHECK(element_size, what,
              "unknown safetensors dtype '" << dtype << "' (expected one of " << dtype_list() << ")");
  const std::optional<uint64_t> expected = byte_count(shape, *element_size);
  SESSA_CHECK(expected, what, "invalid shape " << shape_to_string(shape) << " (negative or too large)");
  SESSA_CHECK(*expected == actual_bytes, what,
              "has " << actual_bytes << " bytes but shape " << shape_to_string(shape) << " of " << dtype << " needs "
                     << *expected);
}

// ---- writing ----

void validate_entries(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata) {
  std::unordered_set<std::string> names;
  for (const StEntry& entry : entries) {
    if (entry.name == kMetadataKey) fail(path, "tensor name '__metadata__' is reserved");
    if (!names.insert(entry.name).second) fail(path, "duplicate " + tensor_label(entry.name));
    check_byte_count(file_label(path) + ": " + tensor_label(entry.name), entry.shape, entry.dtype, entry.bytes.size());
  }
  std::unordered_set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    if (!keys.insert(key).second) fail(path, "duplicate metadata key '" + key + "'");
  }
}

std::string build_header(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json& metadata_object = header[std::string(kMetadataKey)] = Json::object();
    for (const auto& [key, value] : metadata) metadata_object[key] = value;
  }
  uint64_t offset = 0;
  for (const StEntry& entry : entries) {
    const uint64_t end = offset + entry.bytes.size();
    header[entry.name] = {{"dtype", entry.dtype}, {"shape", entry.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = dump_json(header, file_label(path) + ": header");
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

StMetadata parse_metadata(const JsonFields& fields, const Json& json) {
  StMetadata metadata;
  for (const auto& [key, value] : json.items()) metadata.emplace_back(key, fields.string(key));
  return metadata;
}

// One tensor's entry of the header; errors name the file and the tensor.
TensorDescriptor parse_descriptor(const std::string& path, const std::string& name, const Json& json,
                                  uint64_t data_size) {
  const std::string what = file_label(path) + ": " + tensor_label(name);
  const JsonFields fields(json, what);
  TensorDescriptor tensor{name, fields.string("dtype"), {}};
  const Json& shape = fields.array("shape");
  for (size_t d = 0; d < shape.size(); ++d)
    tensor.shape.push_back(json_integer(shape[d], fields.label("shape") + " element " + std::to_string(d), 0));
  const Json& offsets = fields.array("data_offsets");
  if (offsets.size() != 2)
    fields.fail("data_offsets", "has " + std::to_string(offsets.size()) + " elements, expected 2");
  const int64_t begin = json_integer(offsets[0], fields.label("data_offsets") + " begin", 0);
  const int64_t end = json_integer(offsets[1], fields.label("data_offsets") + " end", begin);
  tensor.begin = static_cast<uint64_t>(begin);
  tensor.end = static_cast<uint64_t>(end);
  SESSA_CHECK(tensor.end <= data_size, what,
              "data_offsets [" << begin << ", " << end << "] exceed the data section of " << data_size
                               << " bytes (truncated file?)");
  check_byte_count(what, tensor.shape, tensor.dtype, tensor.end - tensor.begin);
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
  Json header = parse_json(text, file_label(path) + ": header");
  if (!header.is_object()) fail(path, "header must be a JSON object, got " + std::string(header.type_name()));
  return header;
}

std::vector<TensorDescriptor> parse_header(const std::string& path, const Json& header, uint64_t data_size,
                                           StMetadata& metadata) {
  std::vector<TensorDescriptor> tensors;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      metadata = parse_metadata(JsonFields(value, file_label(path) + ": header '__metadata__'"), value);
    } else {
      tensors.push_back(parse_descriptor(path, key, value, data_size));
    }
  }
  return tensors;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  const std::optional<size_t> size = dtype_size_or_none(dtype);
  SESSA_CHECK(size, "safetensors", "unknown dtype '" << dtype << "' (expected one of " << dtype_list() << ")");
  return *size;
}

const StEntry* StFile::find(const std::string& name) const {
  for (const StEntry& entry : entries) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

void write_safetensors(const std::string& path, const std::vector<StEntry>& entries, const StMetadata& metadata) {
  validate_entries(path, entries, metadata);
  const std::string header = build_header(path, entries, metadata);
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
