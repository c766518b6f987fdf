// data/tokenizer.h - text <-> token id conversion: the Tokenizer interface, a
// byte-level tokenizer, and a decode-only reader of llm.c GPT-2 tokenizer files.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sessa::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;
  // Throws (naming `id`) if id >= vocab_size().
  virtual std::string decode(uint32_t id) const = 0;
  std::string decode(const std::vector<uint32_t>& ids) const;
  virtual uint32_t vocab_size() const = 0;
  virtual uint32_t eot() const = 0;  // end-of-text / document separator id
};

// Ids 0..255 are the raw bytes; 256 is <|endoftext|>. encode() never emits
// 256, and decode(256) returns the visible marker "<|endoftext|>".
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr uint32_t kEndOfText = 256;
  static constexpr std::string_view kEndOfTextText = "<|endoftext|>";

  using Tokenizer::decode;
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(uint32_t id) const override;
  uint32_t vocab_size() const override { return 257; }
  uint32_t eot() const override { return kEndOfText; }
};

// llm.c tokenizer file: 256 uint32 header (magic 20240328, version 1 or 2,
// vocab size, end-of-text id in version 2), then per token a uint8 length and
// that many bytes. Decoding only; encode() throws.
class Gpt2Decoder : public Tokenizer {
 public:
  static constexpr uint32_t kMagic = 20240328;
  static constexpr uint32_t kVersion1EndOfText = 50256;

  explicit Gpt2Decoder(const std::string& path);

  using Tokenizer::decode;
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(uint32_t id) const override;
  uint32_t vocab_size() const override { return uint32_t(pieces_.size()); }
  uint32_t eot() const override { return eot_; }

 private:
  std::vector<std::string> pieces_;
  uint32_t eot_ = kVersion1EndOfText;
};

// "byte" -> ByteTokenizer; anything else is a path to an llm.c tokenizer file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace sessa::data
