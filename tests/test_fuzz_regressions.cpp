// tests/test_fuzz_regressions.cpp - One case per bug the fuzzers (tests/fuzz/) found:
// the input that broke a parser, and the clear error it must give now. The raw
// crashing inputs are also replayed by the fuzz_*_replay tests of the sanitizer
// build (tests/fuzz/corpus/<target>/regress_*).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "tests/helpers.h"

using namespace sessa;
using sessa::test::check_error;
namespace fs = std::filesystem;

namespace {

fs::path write_file(const std::string& name, const std::vector<uint8_t>& bytes) {
  const fs::path path = fs::temp_directory_path() / ("sessa_fuzz_regression_" + std::to_string(getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return path;
}

void put_u32(std::vector<uint8_t>& bytes, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = uint8_t(v >> (8 * i));
}

}  // namespace

// fuzz_tokenizer: a header claiming 572662277 tokens made the reader reserve room
// for all of them (18 GB) before finding the file holds one.
TEST_CASE("tokenizer file: a vocab size the file cannot hold is refused before allocating") {
  std::vector<uint8_t> bytes(1024, 0);
  put_u32(bytes, 0, data::Gpt2Decoder::kMagic);
  put_u32(bytes, 4, 2);
  put_u32(bytes, 8, 572662277);
  put_u32(bytes, 12, 29);
  for (char c : std::string("\5hello")) bytes.push_back(uint8_t(c));
  const fs::path path = write_file("tokenizer.bin", bytes);
  check_error([&] { data::load_tokenizer(path.string()); },
              {path.string(), "vocab size 572662277", "needs at least 572662277 bytes after the header", "has 6"});
  fs::remove(path);
}
