// tests/fuzz/fuzz_safetensors.cpp - libFuzzer target: data::read_safetensors on
// arbitrary file bytes (the 8-byte length, the JSON header, __metadata__, the
// data section). A file it accepts must survive a round trip: written back with
// write_safetensors and read again, it gives the same entries and metadata.
#include <cstdint>
#include <optional>
#include <string>

#include "data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

bool same(const sessa::data::StFile& a, const sessa::data::StFile& b) {
  if (a.metadata != b.metadata || a.entries.size() != b.entries.size()) return false;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const auto &x = a.entries[i], &y = b.entries[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.bytes != y.bytes) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sessa::fuzz::InputFile input("safetensors");
  static const std::string copy = (sessa::fuzz::scratch_dir() / "roundtrip.safetensors").string();
  std::optional<sessa::data::StFile> file;
  sessa::fuzz::expect_clean("read_safetensors", [&] { file = sessa::data::read_safetensors(input.set(data, size)); });
  if (!file) return 0;
  sessa::fuzz::expect_no_error("writing back and rereading an accepted safetensors file", [&] {
    sessa::data::write_safetensors(copy, file->entries, file->metadata);
    sessa::fuzz::require(same(sessa::data::read_safetensors(copy), *file), "read -> write -> read gives what was read");
  });
  return 0;
}
