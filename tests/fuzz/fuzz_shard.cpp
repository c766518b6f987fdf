// tests/fuzz/fuzz_shard.cpp - libFuzzer target: data::TokenShard on arbitrary file
// bytes (llm.c uint16 header, our uint32 header, headerless uint16). An accepted
// shard must read every token in range (copy of the whole shard, the vocabulary
// check) and refuse a range past its end.
#include <cstdint>
#include <optional>
#include <vector>

#include "data/shard.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sessa::fuzz::InputFile input("shard");
  std::optional<sessa::data::TokenShard> shard;
  sessa::fuzz::expect_clean("TokenShard", [&] { shard.emplace(input.set(data, size)); });
  if (!shard) return 0;
  const uint64_t n = shard->size();
  const unsigned width = shard->format() == sessa::data::ShardFormat::SessaU32 ? 4 : 2;
  sessa::fuzz::require(n * width <= size, "a shard's tokens fit in its file");
  std::vector<int32_t> tokens(n);
  sessa::fuzz::expect_clean("TokenShard::copy", [&] { shard->copy(0, n, tokens.data()); });
  for (uint64_t i = 0; i < n; ++i) {
    sessa::fuzz::require(tokens[i] < 0 || uint32_t(tokens[i]) == shard->token(i), "copy() agrees with token()");
  }
  sessa::fuzz::expect_refusal("TokenShard::copy past the end", [&] { shard->copy(n, 1, tokens.data()); });
  sessa::fuzz::expect_clean("TokenShard::validate_vocab", [&] { shard->validate_vocab(257); });
  sessa::fuzz::expect_refusal("TokenShard holding fewer than min_tokens",
                              [&] { sessa::data::TokenShard(input.path(), n + 1); });
  return 0;
}
