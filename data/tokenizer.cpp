// data/tokenizer.cpp - ByteTokenizer, the llm.c GPT-2 tokenizer file reader,
// and load_tokenizer().
#include "data/tokenizer.h"

#include <cstring>

#include "data/shard.h"
#include "tensor/error.h"

namespace sessa::data {

namespace {

constexpr size_t kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(uint32_t);

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error("tokenizer file " + path + ": " + what);
}

uint32_t read_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);  // little-endian host (asserted in shard.cpp)
  return v;
}

std::string id_error(uint32_t id, uint32_t vocab) {
  return "token id " + std::to_string(id) + " is out of range (vocab size " + std::to_string(vocab) + ")";
}

}  // namespace

std::string Tokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string text;
  for (uint32_t id : ids) text += decode(id);
  return text;
}

// ------------------------------------------------------------- ByteTokenizer

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(uint32_t id) const {
  if (id < kEndOfText) return std::string(1, static_cast<char>(id));
  if (id == kEndOfText) return std::string(kEndOfTextText);
  throw Error("ByteTokenizer: " + id_error(id, vocab_size()));
}

// --------------------------------------------------------------- Gpt2Decoder

Gpt2Decoder::Gpt2Decoder(const std::string& path) {
  const MappedFile file(path, "tokenizer file");
  const unsigned char* bytes = file.bytes();
  const size_t size = file.size();
  if (size < kHeaderBytes) {
    fail(path, "truncated header: file is " + std::to_string(size) + " bytes, the header needs " +
                   std::to_string(kHeaderBytes));
  }
  const uint32_t magic = read_u32(bytes);
  if (magic != kMagic) {
    fail(path, "byte offset 0: bad magic " + std::to_string(magic) + " (expected " + std::to_string(kMagic) + ")");
  }
  const uint32_t version = read_u32(bytes + 4);
  if (version != 1 && version != 2) {
    fail(path, "byte offset 4: unsupported version " + std::to_string(version) + " (expected 1 or 2)");
  }
  const uint32_t vocab = read_u32(bytes + 8);
  if (version == 2) eot_ = read_u32(bytes + 12);
  if (eot_ >= vocab) {
    fail(path,
         "end-of-text id " + std::to_string(eot_) + " is >= vocab size " + std::to_string(vocab) + " (byte offset 8)");
  }
  // Each token takes at least its length byte: refuse a vocabulary the file cannot
  // hold before reserving room for it (a corrupt size would allocate gigabytes).
  if (vocab > size - kHeaderBytes) {
    fail(path, "vocab size " + std::to_string(vocab) + " (byte offset 8) needs at least " + std::to_string(vocab) +
                   " bytes after the header, the file has " + std::to_string(size - kHeaderBytes));
  }
  size_t offset = kHeaderBytes;
  pieces_.reserve(vocab);
  for (uint32_t i = 0; i < vocab; ++i) {
    if (offset >= size) {
      fail(path, "truncated at byte offset " + std::to_string(offset) + ": length byte of token " + std::to_string(i) +
                     " of " + std::to_string(vocab) + " is missing");
    }
    const size_t length = bytes[offset];
    if (length > size - offset - 1) {
      fail(path, "truncated at byte offset " + std::to_string(offset) + ": token " + std::to_string(i) + " needs " +
                     std::to_string(length) + " bytes, only " + std::to_string(size - offset - 1) + " remain");
    }
    pieces_.emplace_back(reinterpret_cast<const char*>(bytes + offset + 1), length);
    offset += 1 + length;
  }
  if (offset != size) {
    fail(path, std::to_string(size - offset) + " unexpected trailing bytes after the last token, at byte offset " +
                   std::to_string(offset));
  }
}

std::vector<uint32_t> Gpt2Decoder::encode(std::string_view) const {
  throw Error("Gpt2Decoder: BPE encoding not supported (decode only); prepare data with the llm.c tools");
}

std::string Gpt2Decoder::decode(uint32_t id) const {
  if (id >= pieces_.size()) {
    throw Error("Gpt2Decoder: " + id_error(id, vocab_size()));
  }
  return pieces_[id];
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  return std::make_unique<Gpt2Decoder>(spec);
}

}  // namespace sessa::data
