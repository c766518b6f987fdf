// data/shard.cpp - parsing/validation of token shard files and atomic writing.
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <limits>
#include <stdexcept>
#include <utility>

#include "data/file_util.h"

namespace sessa::data {

// Token and header bytes are little-endian and read with memcpy.
static_assert(std::endian::native == std::endian::little, "sessa::data assumes a little-endian host");

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

std::string errno_text() { return std::strerror(errno); }

int32_t read_i32(const unsigned char* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool is_known_magic(int32_t magic) { return magic == kLlmcShardMagic || magic == kU32ShardMagic; }

// Closes a file descriptor on scope exit.
struct FdGuard {
  int fd;
  ~FdGuard() { ::close(fd); }
};

void check_fits(const std::string& path, const std::vector<uint32_t>& tokens, ShardFormat fmt) {
  if (fmt != ShardFormat::SessaU32) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] > std::numeric_limits<uint16_t>::max()) {
        fail(path, "token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                       " does not fit a uint16 format (use the uint32 variant)");
      }
    }
  }
  if (fmt != ShardFormat::RawU16 && tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail(path, std::to_string(tokens.size()) + " tokens exceed the int32 header count field");
  }
}

std::vector<unsigned char> make_header(ShardFormat fmt, size_t count) {
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = fmt == ShardFormat::LlmcU16 ? kLlmcShardMagic : kU32ShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(count);
  std::vector<unsigned char> bytes(kShardHeaderBytes);
  std::memcpy(bytes.data(), header.data(), kShardHeaderBytes);
  return bytes;
}

// Streams the tokens in fixed-size chunks at `width` bytes each.
void write_tokens(AtomicFileWriter& out, const std::vector<uint32_t>& tokens, unsigned width) {
  constexpr size_t kChunk = size_t{1} << 16;
  std::vector<unsigned char> buf(kChunk * width);
  for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
    size_t n = std::min(kChunk, tokens.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      uint32_t t = tokens[begin + i];
      if (width == 2) {
        auto v = static_cast<uint16_t>(t);
        std::memcpy(buf.data() + i * 2, &v, 2);
      } else {
        std::memcpy(buf.data() + i * 4, &t, 4);
      }
    }
    out.write(buf.data(), n * width);
  }
}

}  // namespace

// ---------------------------------------------------------------- MappedFile

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open: " + errno_text());
  FdGuard guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap of length 0 is invalid; nothing to map
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) fail(path, "mmap failed: " + errno_text());
  bytes_ = static_cast<const unsigned char*>(p);
}

MappedFile::~MappedFile() { unmap(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      bytes_(std::exchange(other.bytes_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    bytes_ = std::exchange(other.bytes_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::unmap() {
  if (bytes_ != nullptr) ::munmap(const_cast<unsigned char*>(bytes_), size_);
  bytes_ = nullptr;
  size_ = 0;
}

// ---------------------------------------------------------------- TokenShard

TokenShard::TokenShard(const std::string& path, uint64_t min_tokens) : file_(path) {
  parse_header();
  if (count_ < min_tokens) {
    fail(path, "holds " + std::to_string(count_) + " tokens, fewer than the " + std::to_string(min_tokens) +
                   " needed for one window (seq_len + 1)");
  }
}

// Sets format_, tokens_, count_ and width_ from the file contents. A file that
// does not start with a known magic is a raw uint16 (nanoGPT) file.
void TokenShard::parse_header() {
  const unsigned char* bytes = file_.bytes();
  const size_t size = file_.size();
  const std::string& path = file_.path();
  if (size < sizeof(int32_t) || !is_known_magic(read_i32(bytes))) {
    if (size % 2 != 0) {
      fail(path,
           "raw uint16 token file (no known magic at byte offset 0) has "
           "odd size " +
               std::to_string(size) + " bytes");
    }
    format_ = ShardFormat::RawU16;
    tokens_ = bytes;
    count_ = size / 2;
    width_ = 2;
    return;
  }
  const int32_t magic = read_i32(bytes);
  if (size < kShardHeaderBytes) {
    fail(path, "truncated header: file is " + std::to_string(size) + " bytes, the header needs " +
                   std::to_string(kShardHeaderBytes));
  }
  const int32_t version = read_i32(bytes + 4);
  if (version != kShardVersion) {
    fail(path, "byte offset 4: version " + std::to_string(version) + " is not supported for magic " +
                   std::to_string(magic) + " (expected " + std::to_string(kShardVersion) + ")");
  }
  const int32_t count = read_i32(bytes + 8);
  if (count < 0) {
    fail(path, "byte offset 8: negative token count " + std::to_string(count));
  }
  format_ = magic == kLlmcShardMagic ? ShardFormat::LlmcU16 : ShardFormat::SessaU32;
  width_ = format_ == ShardFormat::LlmcU16 ? 2 : 4;
  const uint64_t expected = kShardHeaderBytes + uint64_t(count) * width_;
  if (expected != size) {
    fail(path, "header (byte offset 8) says " + std::to_string(count) + " tokens, i.e. " + std::to_string(expected) +
                   " bytes with the header, but the file is " + std::to_string(size) + " bytes");
  }
  tokens_ = bytes + kShardHeaderBytes;
  count_ = uint64_t(count);
}

uint64_t TokenShard::byte_offset(uint64_t index) const {
  const uint64_t header = format_ == ShardFormat::RawU16 ? 0 : kShardHeaderBytes;
  return header + index * width_;
}

void TokenShard::copy(uint64_t begin, uint64_t n, int32_t* out) const {
  if (begin > count_ || n > count_ - begin) {
    throw std::out_of_range(path() + ": copy of tokens [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
                            ") exceeds " + std::to_string(count_) + " tokens");
  }
  if (width_ == 2) {
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, tokens_ + (begin + i) * 2, 2);
      out[i] = v;
    }
  } else {
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t v;
      std::memcpy(&v, tokens_ + (begin + i) * 4, 4);
      out[i] = static_cast<int32_t>(v);
    }
  }
}

void TokenShard::validate_vocab(uint32_t vocab) const {
  for (uint64_t i = 0; i < count_; ++i) {
    const uint32_t t = token(i);
    if (t >= vocab) {
      fail(path(), "token id " + std::to_string(t) + " at token index " + std::to_string(i) + " (byte offset " +
                       std::to_string(byte_offset(i)) + ") is >= vocab size " + std::to_string(vocab));
    }
  }
}

// ---------------------------------------------------------------- writing

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, ShardFormat fmt) {
  check_fits(path, tokens, fmt);
  AtomicFileWriter out(path);
  if (fmt != ShardFormat::RawU16) {
    const std::vector<unsigned char> header = make_header(fmt, tokens.size());
    out.write(header.data(), header.size());
  }
  write_tokens(out, tokens, fmt == ShardFormat::SessaU32 ? 4 : 2);
  out.commit();
}

}  // namespace sessa::data
