// tests/fuzz/fuzz_symbolsoup_tsv.cpp - libFuzzer target: the SymbolSoup TSV reader
// (data::symbolsoup::read_tsv) on arbitrary file bytes: quoting, CRLF, the header,
// each row's Text and Answer. A file it accepts must survive a round trip: written
// with write_tsv and read again, it gives the same examples.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/symbolsoup.h"
#include "tests/fuzz/fuzz_util.h"

namespace soup = sessa::data::symbolsoup;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sessa::fuzz::InputFile input("symbolsoup_tsv");
  static const std::string copy = (sessa::fuzz::scratch_dir() / "roundtrip.tsv").string();
  std::optional<std::vector<soup::Example>> examples;
  sessa::fuzz::expect_clean("read_tsv", [&] { examples = soup::read_tsv(input.set(data, size)); });
  if (!examples) return 0;
  sessa::fuzz::expect_no_error("writing back and rereading an accepted TSV file", [&] {
    soup::write_tsv(copy, *examples);
    const std::vector<soup::Example> again = soup::read_tsv(copy);
    bool same = again.size() == examples->size();
    for (size_t i = 0; same && i < again.size(); ++i) {
      same = again[i].text == (*examples)[i].text && again[i].label == (*examples)[i].label;
    }
    sessa::fuzz::require(same, "read -> write -> read gives what was read");
  });
  return 0;
}
