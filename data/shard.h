// data/shard.h - on-disk token shard formats: read-only memory-mapped access
// (TokenShard), validation with path-and-offset error messages, and atomic
// shard writing (write_shard). Formats are described in docs/data.md.
// Every failure is a sessa::Error naming the file ("token shard <path>: ...").
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace sessa::data {

// Header constants shared by the llm.c format and our uint32 variant.
inline constexpr int32_t kLlmcShardMagic = 20240520;  // uint16 tokens (llm.c)
inline constexpr int32_t kU32ShardMagic = 20240521;   // uint32 tokens (ours)
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

enum class ShardFormat {
  LlmcU16,   // 1024-byte header (magic 20240520), then uint16 tokens
  SessaU32,  // 1024-byte header (magic 20240521), then uint32 tokens
  RawU16,    // nanoGPT: no header, plain uint16 tokens
};

// A whole file mapped read-only. Empty files are valid and map nothing.
// `kind` names the file in errors ("token shard", "tokenizer file").
class MappedFile {
 public:
  explicit MappedFile(const std::string& path, std::string kind = "file");
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* bytes() const { return bytes_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Runs `read`, which reads this mapping. If the file shrank since it was mapped
  // (truncated or rewritten in place by another process), touching a page past
  // its new end raises SIGBUS; that becomes a sessa::Error naming the file and its
  // sizes instead of killing the process. `read` must hold nothing that needs
  // unwinding (it is left by siglongjmp), only read the mapping and write to
  // memory it was given.
  void guard_reads(const std::function<void()>& read) const;

 private:
  void unmap();
  [[noreturn]] void fail_shrunk() const;

  std::string path_, kind_;
  const unsigned char* bytes_ = nullptr;
  size_t size_ = 0;
};

// One token file, memory-mapped; tokens are read on demand, never copied
// wholesale into RAM. Throws (naming the path) when the file is missing,
// malformed, or holds fewer than `min_tokens` tokens.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path, uint64_t min_tokens = 0);

  uint64_t size() const { return count_; }
  ShardFormat format() const { return format_; }
  const std::string& path() const { return file_.path(); }

  // Hot path: bounds are checked by assert only; unguarded (see copy()).
  uint32_t token(uint64_t i) const {
    assert(i < count_);
    if (width_ == 2) {
      uint16_t v;
      std::memcpy(&v, tokens_ + i * 2, 2);
      return v;
    }
    uint32_t v;
    std::memcpy(&v, tokens_ + i * 4, 4);
    return v;
  }

  // Copies tokens [begin, begin + n) to `out` as int32 (ids must be < 2^31).
  // Throws if the range exceeds the shard, or if the file shrank on disk since
  // it was opened (MappedFile::guard_reads).
  void copy(uint64_t begin, uint64_t n, int32_t* out) const;

  // Throws naming the file, token index and byte offset of the first id >= vocab.
  void validate_vocab(uint32_t vocab) const;

 private:
  void parse_header();
  uint64_t byte_offset(uint64_t index) const;

  MappedFile file_;
  ShardFormat format_ = ShardFormat::RawU16;
  const unsigned char* tokens_ = nullptr;
  uint64_t count_ = 0;
  unsigned width_ = 2;  // bytes per token
};

// Writes `tokens` to `path` in `fmt` via AtomicFileWriter (temp file in the same
// directory, then rename), so `path` is either untouched or completely written. Throws before
// touching anything if a token does not fit the format.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, ShardFormat fmt);

}  // namespace sessa::data
