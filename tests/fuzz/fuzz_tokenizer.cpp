// tests/fuzz/fuzz_tokenizer.cpp - libFuzzer target: the llm.c GPT-2 tokenizer file
// (data::load_tokenizer on a path) on arbitrary bytes. An accepted file must decode
// every id below its vocabulary size (the end-of-text id among them) and refuse
// the first id past it.
#include <cstdint>
#include <memory>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sessa::fuzz::InputFile input("tokenizer");
  std::unique_ptr<sessa::data::Tokenizer> tokenizer;
  sessa::fuzz::expect_clean("load_tokenizer", [&] { tokenizer = sessa::data::load_tokenizer(input.set(data, size)); });
  if (!tokenizer) return 0;
  const uint32_t vocab = tokenizer->vocab_size();
  sessa::fuzz::require(tokenizer->eot() < vocab, "the end-of-text id is in the vocabulary");
  sessa::fuzz::expect_no_error("decoding every id of an accepted tokenizer", [&] {
    for (uint32_t id = 0; id < vocab; ++id) tokenizer->decode(id);
  });
  sessa::fuzz::expect_refusal("decoding the id past the vocabulary", [&] { tokenizer->decode(vocab); });
  return 0;
}
