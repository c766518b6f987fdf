// tests/fuzz/fuzz_util.h - What every libFuzzer target shares: the input as a file
// (the parsers read paths), and the oracle.
//
// The oracle: a parser given any bytes either succeeds or refuses with a
// sessa::Error (the one error type, tensor/error.h). Any other exception escaping
// (std::out_of_range, std::bad_alloc, a JSON library's own exception, ...) aborts,
// so libFuzzer records it as a crash; ASan/UBSan report memory and UB bugs. Inputs
// libFuzzer finds crashing go to tests/fuzz/corpus/<target>/ as regression files.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <typeinfo>

#include "tensor/error.h"

namespace sessa::fuzz {

// One in-memory file (memfd) per process, rewritten with each input; `path()` names
// it for the path-based readers (open, ifstream and mmap all work on it).
class InputFile {
 public:
  explicit InputFile(const char* name) : fd_(memfd_create(name, 0)) {
    if (fd_ < 0) {
      std::perror("fuzz: memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd_, data + done, size - done, off_t(done));
      if (n <= 0) std::abort();
      done += size_t(n);
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// A scratch directory for what a target writes (removed at exit): under /dev/shm
// when there is one, so the writers' fsync costs nothing.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    namespace fs = std::filesystem;
    const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path made = base / ("sessa_fuzz_" + std::to_string(getpid()));
    fs::create_directories(made);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(scratch_dir(), ignored);
    });
    return made;
  }();
  return dir;
}

// Runs `parse`; a sessa::Error is a clean refusal, anything else aborts.
template <class F>
void expect_clean(const char* what, F&& parse) {
  try {
    parse();
  } catch (const sessa::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: %s: an exception other than sessa::Error escaped: %s: %s\n", what, typeid(e).name(),
                 e.what());
    std::abort();
  }
}

// Runs `parse`, which must refuse with a sessa::Error.
template <class F>
void expect_refusal(const char* what, F&& parse) {
  bool refused = true;
  expect_clean(what, [&] {
    parse();
    refused = false;
  });
  if (!refused) {
    std::fprintf(stderr, "fuzz: %s should have been refused, but was accepted\n", what);
    std::abort();
  }
}

// Runs `body`, which must not throw at all (e.g. writing back what was read).
template <class F>
void expect_no_error(const char* what, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: %s must not fail, but threw %s: %s\n", what, typeid(e).name(), e.what());
    std::abort();
  }
}

// Aborts with a message when a property that must hold does not.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace sessa::fuzz
