// data/shard.cpp - parsing/validation of token shard files, reads from the
// mapping guarded against SIGBUS (a file shrinking underneath), atomic writing.
#include "data/shard.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <limits>
#include <mutex>
#include <utility>

#include "data/file_util.h"
#include "tensor/error.h"

namespace sessa::data {

// Token and header bytes are little-endian and read with memcpy.
static_assert(std::endian::native == std::endian::little, "sessa::data assumes a little-endian host");

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error("token shard " + path + ": " + what);
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

// ---- SIGBUS guard: a read of a mapped page past the end of a file that shrank
// faults with SIGBUS. While a thread runs MappedFile::guard_reads, a fault inside
// that mapping jumps back there; any other SIGBUS goes to the previous handler.

struct ReadGuard {
  sigjmp_buf jump;
  const unsigned char* begin;
  size_t size;
};
thread_local ReadGuard* t_read_guard = nullptr;
std::mutex g_sigbus_mutex;
struct sigaction g_previous_sigbus {};

void on_sigbus(int signal, siginfo_t* info, void*) {
  const ReadGuard* guard = t_read_guard;
  const auto* address = static_cast<const unsigned char*>(info->si_addr);
  if (guard != nullptr && address >= guard->begin && address < guard->begin + guard->size)
    siglongjmp(t_read_guard->jump, 1);
  // Not a read we guard: hand the signal back. A fault repeats when the access is
  // retried on return; a signal sent by another process is raised again.
  ::sigaction(SIGBUS, &g_previous_sigbus, nullptr);
  if (info->si_code <= 0) ::raise(signal);
}

// Installed at each guarded read, since a test framework or library may have
// replaced the handler since the last one.
void install_sigbus_handler() {
  std::lock_guard<std::mutex> lock(g_sigbus_mutex);
  struct sigaction current {};
  ::sigaction(SIGBUS, nullptr, &current);
  if ((current.sa_flags & SA_SIGINFO) != 0 && current.sa_sigaction == on_sigbus) return;
  struct sigaction ours {};
  ours.sa_sigaction = on_sigbus;
  ours.sa_flags = SA_SIGINFO;
  sigemptyset(&ours.sa_mask);
  ::sigaction(SIGBUS, &ours, &g_previous_sigbus);
}

}  // namespace

// ---------------------------------------------------------------- MappedFile

MappedFile::MappedFile(const std::string& path, std::string kind) : path_(path), kind_(std::move(kind)) {
  auto fail_open = [&](const std::string& what) { throw Error(kind_ + " " + path + ": " + what); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_open("cannot open: " + errno_text());
  FdGuard guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_open("cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail_open("not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap of length 0 is invalid; nothing to map
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) fail_open("mmap failed: " + errno_text());
  bytes_ = static_cast<const unsigned char*>(p);
}

void MappedFile::guard_reads(const std::function<void()>& read) const {
  install_sigbus_handler();
  ReadGuard guard{{}, bytes_, size_};
  struct Restore {
    ReadGuard* outer;
    ~Restore() { t_read_guard = outer; }
  } restore{t_read_guard};
  // savemask 1: the jump out of the handler also unblocks SIGBUS again.
  if (sigsetjmp(guard.jump, 1) != 0) {
    t_read_guard = restore.outer;
    fail_shrunk();
  }
  t_read_guard = &guard;
  read();
}

void MappedFile::fail_shrunk() const {
  struct stat st {};
  const std::string now = ::stat(path_.c_str(), &st) == 0 ? "is now " + std::to_string(st.st_size) + " bytes"
                                                          : "is gone (" + errno_text() + ")";
  throw Error(kind_ + " " + path_ + ": the file changed on disk while in use: it was " + std::to_string(size_) +
              " bytes when opened and " + now +
              "; it was truncated or rewritten in place (write data to a new file and rename it instead)");
}

MappedFile::~MappedFile() { unmap(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      kind_(std::move(other.kind_)),
      bytes_(std::exchange(other.bytes_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    kind_ = std::move(other.kind_);
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

TokenShard::TokenShard(const std::string& path, uint64_t min_tokens) : file_(path, "token shard") {
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
    fail(path(), "copy of tokens [" + std::to_string(begin) + ", " + std::to_string(begin + n) + ") exceeds its " +
                     std::to_string(count_) + " tokens");
  }
  if (n == 0) return;  // nothing to copy (and `out` or the mapping may be null: memcpy must not see them)
  file_.guard_reads([&] {
    if (width_ == 2) {
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, tokens_ + (begin + i) * 2, 2);
        out[i] = v;
      }
    } else {
      std::memcpy(out, tokens_ + begin * 4, n * 4);  // the same bits: ids are < 2^31
    }
  });
}

void TokenShard::validate_vocab(uint32_t vocab) const {
  uint64_t bad = count_;
  file_.guard_reads([&] {
    for (uint64_t i = 0; i < count_ && bad == count_; ++i)
      if (token(i) >= vocab) bad = i;
  });
  if (bad < count_) {
    fail(path(), "token id " + std::to_string(token(bad)) + " at token index " + std::to_string(bad) +
                     " (byte offset " + std::to_string(byte_offset(bad)) + ") is >= vocab size " +
                     std::to_string(vocab));
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
