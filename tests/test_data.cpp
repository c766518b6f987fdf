// tests/test_data.cpp - tests for data/: shard formats and validation, the
// token loader (windows, shuffling, rank slices, resume) and the tokenizers.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using namespace sessa::data;

namespace {

// A fresh directory under the system temp dir, removed on destruction.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path =
        fs::temp_directory_path() / ("sessa_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <typename T>
void append(std::vector<unsigned char>& bytes, T value) {
  const size_t at = bytes.size();
  bytes.resize(at + sizeof(T));
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}

// A 1024-byte shard header with the given first three int32 fields.
std::vector<unsigned char> shard_header(int32_t magic, int32_t version, int32_t count) {
  std::vector<unsigned char> bytes;
  append(bytes, magic);
  append(bytes, version);
  append(bytes, count);
  bytes.resize(kShardHeaderBytes, 0);
  return bytes;
}

// Runs `f`, which must throw sessa::Error (any other exception fails the test); returns its message.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const sessa::Error& e) {
    return e.what();
  }
  FAIL("expected sessa::Error");
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::vector<uint32_t> iota_tokens(size_t n, uint32_t first = 0) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = first + uint32_t(i);
  return t;
}

LoaderConfig config(int64_t B, int64_t T, uint64_t seed = 1, int rank = 0, int world = 1) {
  LoaderConfig c;
  c.batch = B;
  c.seq_len = T;
  c.seed = seed;
  c.rank = rank;
  c.world = world;
  return c;
}

std::vector<std::vector<int32_t>> take_inputs(TokenLoader& loader, int n) {
  std::vector<std::vector<int32_t>> out;
  Batch batch;
  for (int i = 0; i < n; ++i) {
    loader.next(batch);
    out.push_back(batch.inputs);
  }
  return out;
}

}  // namespace

// ------------------------------------------------------------------ shards

TEST_CASE("llm.c uint16 shard round trip") {
  TempDir dir;
  const std::string path = dir.file("a.bin");
  std::vector<uint32_t> tokens = {0, 1, 50256, 65535, 7};
  write_shard(path, tokens, ShardFormat::LlmcU16);
  CHECK(fs::file_size(path) == kShardHeaderBytes + tokens.size() * 2);
  TokenShard shard(path);
  CHECK(shard.format() == ShardFormat::LlmcU16);
  REQUIRE(shard.size() == tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) CHECK(shard.token(i) == tokens[i]);
  std::vector<int32_t> out(3);
  shard.copy(2, 3, out.data());
  CHECK(out == std::vector<int32_t>{50256, 65535, 7});
  CHECK(contains(error_of([&] { shard.copy(3, 3, out.data()); }), "a.bin: copy of tokens [3, 6) exceeds its 5 tokens"));
}

TEST_CASE("uint32 variant shard round trip") {
  TempDir dir;
  const std::string path = dir.file("b.bin");
  std::vector<uint32_t> tokens = {65536, 0, 100277, 200000, 3000000000u};
  write_shard(path, tokens, ShardFormat::SessaU32);
  const auto bytes = read_bytes(path);
  int32_t magic;
  std::memcpy(&magic, bytes.data(), 4);
  CHECK(magic == kU32ShardMagic);
  CHECK(bytes.size() == kShardHeaderBytes + tokens.size() * 4);
  TokenShard shard(path);
  CHECK(shard.format() == ShardFormat::SessaU32);
  REQUIRE(shard.size() == tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) CHECK(shard.token(i) == tokens[i]);
}

TEST_CASE("raw nanoGPT uint16 file round trip") {
  TempDir dir;
  const std::string written = dir.file("raw.bin");
  write_shard(written, {5, 65535, 0, 42}, ShardFormat::RawU16);
  CHECK(fs::file_size(written) == 8);
  TokenShard a(written);
  CHECK(a.format() == ShardFormat::RawU16);
  CHECK(a.size() == 4);
  CHECK(a.token(1) == 65535);
  CHECK(a.token(3) == 42);

  // Hand-made raw file, as nanoGPT's np.uint16 .tofile() would produce.
  const std::string manual = dir.file("train.bin");
  std::vector<unsigned char> bytes;
  for (uint16_t t : {uint16_t(11), uint16_t(22), uint16_t(33)}) append(bytes, t);
  write_bytes(manual, bytes);
  TokenShard b(manual);
  CHECK(b.format() == ShardFormat::RawU16);
  CHECK(b.size() == 3);
  CHECK(b.token(2) == 33);
}

TEST_CASE("TokenShard is movable") {
  TempDir dir;
  const std::string path = dir.file("m.bin");
  write_shard(path, {1, 2, 3}, ShardFormat::LlmcU16);
  TokenShard a(path);
  TokenShard b(std::move(a));
  CHECK(b.size() == 3);
  CHECK(b.token(2) == 3);
  TokenShard c(path);
  c = std::move(b);
  CHECK(c.token(0) == 1);
  CHECK(c.path() == path);
}

TEST_CASE("bad shard files throw naming the file") {
  TempDir dir;

  SUBCASE("missing file") {
    const std::string path = dir.file("missing.bin");
    CHECK(contains(error_of([&] { TokenShard s(path); }), "missing.bin"));
  }
  SUBCASE("known magic with wrong version") {
    const std::string path = dir.file("version.bin");
    auto bytes = shard_header(kLlmcShardMagic, 7, 0);
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, "version.bin"));
    CHECK(contains(msg, "version 7"));
    CHECK(contains(msg, "byte offset 4"));
  }
  SUBCASE("header count disagrees with file size") {
    const std::string path = dir.file("count.bin");
    auto bytes = shard_header(kLlmcShardMagic, 1, 10);
    bytes.resize(kShardHeaderBytes + 8 * 2);  // 8 tokens instead of 10
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, "count.bin"));
    CHECK(contains(msg, "10 tokens"));
    CHECK(contains(msg, std::to_string(kShardHeaderBytes + 20)));  // expected
    CHECK(contains(msg, std::to_string(kShardHeaderBytes + 16)));  // actual
  }
  SUBCASE("truncated header") {
    const std::string path = dir.file("short.bin");
    auto bytes = shard_header(kU32ShardMagic, 1, 0);
    bytes.resize(100);
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, "short.bin"));
    CHECK(contains(msg, "100 bytes"));
  }
  SUBCASE("raw file with odd size") {
    const std::string path = dir.file("odd.bin");
    write_bytes(path, {1, 2, 3});
    const std::string msg = error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, "odd.bin"));
    CHECK(contains(msg, "odd size 3"));
  }
  SUBCASE("shorter than one window") {
    const std::string path = dir.file("tiny.bin");
    write_shard(path, iota_tokens(10), ShardFormat::LlmcU16);
    const std::string msg = error_of([&] { TokenShard s(path, 65); });
    CHECK(contains(msg, "tiny.bin"));
    CHECK(contains(msg, "holds 10 tokens"));
    CHECK(contains(msg, "65"));
    CHECK(contains(error_of([&] { TokenLoader l({path}, config(1, 64)); }), "tiny.bin"));
  }
  SUBCASE("token id >= vocab") {
    const std::string path = dir.file("vocab.bin");
    write_shard(path, {1, 2, 300, 4}, ShardFormat::LlmcU16);
    TokenShard shard(path);
    CHECK_NOTHROW(shard.validate_vocab(301));
    const std::string msg = error_of([&] { shard.validate_vocab(257); });
    CHECK(contains(msg, "vocab.bin"));
    CHECK(contains(msg, "token index 2"));
    CHECK(contains(msg, "byte offset " + std::to_string(kShardHeaderBytes + 4)));
    LoaderConfig c = config(1, 2);
    c.vocab = 257;
    CHECK(contains(error_of([&] { TokenLoader l({path}, c); }), "vocab.bin"));
  }
}

TEST_CASE("write_shard never leaves a destination half-written") {
  TempDir dir;
  SUBCASE("missing directory throws") {
    const std::string path = dir.file("no_such_dir/x.bin");
    CHECK(contains(error_of([&] { write_shard(path, {1, 2}, ShardFormat::LlmcU16); }), "x.bin"));
    CHECK_FALSE(fs::exists(path));
  }
  SUBCASE("token too large for uint16 leaves the existing file intact") {
    const std::string path = dir.file("keep.bin");
    write_shard(path, {1, 2, 3}, ShardFormat::LlmcU16);
    const auto before = read_bytes(path);
    const std::string msg = error_of([&] { write_shard(path, {1, 70000}, ShardFormat::LlmcU16); });
    CHECK(contains(msg, "keep.bin"));
    CHECK(contains(msg, "70000"));
    CHECK_THROWS(write_shard(path, {70000}, ShardFormat::RawU16));
    CHECK(read_bytes(path) == before);
    CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  }
  SUBCASE("overwriting replaces the file completely") {
    const std::string path = dir.file("over.bin");
    write_shard(path, iota_tokens(100), ShardFormat::LlmcU16);
    write_shard(path, {9}, ShardFormat::SessaU32);
    TokenShard shard(path);
    CHECK(shard.size() == 1);
    CHECK(shard.token(0) == 9);
  }
}

// ------------------------------------------------------------------ loader

TEST_CASE("expand_paths handles globs and comma lists") {
  TempDir dir;
  for (const char* name : {"s_002.bin", "s_000.bin", "s_001.bin", "other.bin"}) {
    write_shard(dir.file(name), {1}, ShardFormat::LlmcU16);
  }
  const auto globbed = expand_paths(dir.file("s_*.bin"));
  CHECK(globbed == std::vector<std::string>{dir.file("s_000.bin"), dir.file("s_001.bin"), dir.file("s_002.bin")});
  const auto listed =
      expand_paths(dir.file("other.bin") + "," + dir.file("s_00[01].bin") + ", " + dir.file("s_000.bin"));
  CHECK(listed == std::vector<std::string>{dir.file("other.bin"), dir.file("s_000.bin"), dir.file("s_001.bin")});
  const std::string pattern = dir.file("val_*.bin");
  CHECK(contains(error_of([&] { expand_paths(pattern); }), pattern));
  CHECK_THROWS(expand_paths(" , "));
}

TEST_CASE("windows start at multiples of seq_len and may share a boundary token") {
  TempDir dir;
  const std::string a = dir.file("a.bin"), b = dir.file("b.bin");
  write_shard(a, iota_tokens(9), ShardFormat::LlmcU16);        // (9-1)/4 = 2 windows
  write_shard(b, iota_tokens(8, 1000), ShardFormat::LlmcU16);  // (8-1)/4 = 1 window
  LoaderConfig c = config(1, 4);
  c.shuffle = false;
  TokenLoader loader({a, b}, c);
  CHECK(loader.total_windows() == 3);
  const auto rows = take_inputs(loader, 3);
  CHECK(rows[0] == std::vector<int32_t>{0, 1, 2, 3});
  CHECK(rows[1] == std::vector<int32_t>{4, 5, 6, 7});
  CHECK(rows[2] == std::vector<int32_t>{1000, 1001, 1002, 1003});
}

TEST_CASE("targets are inputs shifted by one") {
  TempDir dir;
  const std::string path = dir.file("seq.bin");
  write_shard(path, iota_tokens(1000), ShardFormat::LlmcU16);
  const int64_t B = 3, T = 16;
  TokenLoader loader({path}, config(B, T, 7));
  Batch batch;
  loader.next(batch);
  CHECK(batch.B == B);
  CHECK(batch.T == T);
  REQUIRE(batch.inputs.size() == size_t(B * T));
  REQUIRE(batch.targets.size() == size_t(B * T));
  for (int64_t b = 0; b < B; ++b) {
    CHECK(batch.inputs[size_t(b * T)] % T == 0);  // window start
    for (int64_t t = 0; t < T; ++t) {
      CHECK(batch.targets[size_t(b * T + t)] == batch.inputs[size_t(b * T + t)] + 1);
    }
  }
}

TEST_CASE("rank slices are disjoint and cover every window") {
  TempDir dir;
  const std::string a = dir.file("a.bin"), b = dir.file("b.bin");
  write_shard(a, iota_tokens(81), ShardFormat::LlmcU16);   // 10 windows of T=8
  write_shard(b, iota_tokens(60), ShardFormat::SessaU32);  // 7 windows
  for (int world : {1, 2, 3}) {
    CAPTURE(world);
    std::set<uint64_t> seen;
    size_t total = 0;
    uint64_t windows = 0;
    for (int rank = 0; rank < world; ++rank) {
      TokenLoader loader({a, b}, config(1, 8, 5, rank, world));
      windows = loader.total_windows();
      const auto ids = loader.rank_window_ids(loader.epoch());
      CHECK(ids.size() == loader.windows_per_rank());
      CHECK(loader.batches_per_epoch() == windows / uint64_t(world));
      total += ids.size();
      seen.insert(ids.begin(), ids.end());
    }
    CHECK(windows == 17);
    CHECK(total == windows);
    CHECK(seen.size() == windows);
    CHECK(*seen.rbegin() == windows - 1);
  }
}

TEST_CASE("next() visits the rank's windows in slice order") {
  TempDir dir;
  const std::string path = dir.file("seq.bin");
  const int64_t T = 5;
  write_shard(path, iota_tokens(101), ShardFormat::LlmcU16);  // 20 windows
  TokenLoader loader({path}, config(2, T, 3, 1, 2));
  const auto ids = loader.rank_window_ids(0);
  Batch batch;
  for (uint64_t step = 0; step < loader.batches_per_epoch(); ++step) {
    loader.next(batch);
    CHECK(uint64_t(batch.inputs[0]) == ids[2 * step] * T);
    CHECK(uint64_t(batch.inputs[T]) == ids[2 * step + 1] * T);
  }
  CHECK(loader.epoch() == 1);
  CHECK(loader.position() == 0);
}

TEST_CASE("shuffling is deterministic per seed and changes per epoch") {
  TempDir dir;
  const std::string path = dir.file("seq.bin");
  write_shard(path, iota_tokens(4001), ShardFormat::LlmcU16);  // 500 windows of T=8
  TokenLoader a({path}, config(4, 8, 42));
  TokenLoader b({path}, config(4, 8, 42));
  TokenLoader c({path}, config(4, 8, 43));
  const int steps = int(a.batches_per_epoch()) + 10;  // crosses an epoch boundary
  const auto batches_a = take_inputs(a, steps);
  CHECK(batches_a == take_inputs(b, steps));
  CHECK(batches_a != take_inputs(c, steps));
  CHECK(a.rank_window_ids(0) != a.rank_window_ids(1));
  auto sorted = a.rank_window_ids(1);  // each epoch permutes all windows
  std::sort(sorted.begin(), sorted.end());
  std::vector<uint64_t> all(a.total_windows());
  std::iota(all.begin(), all.end(), uint64_t{0});
  CHECK(sorted == all);
}

TEST_CASE("seek/position resume reproduces the same batches") {
  TempDir dir;
  const std::string path = dir.file("seq.bin");
  write_shard(path, iota_tokens(801), ShardFormat::LlmcU16);  // 100 windows of T=8
  TokenLoader original({path}, config(3, 8, 9, 1, 2));        // 50 windows, 16 batches
  REQUIRE(original.batches_per_epoch() == 16);
  take_inputs(original, 20);
  const uint64_t epoch = original.epoch(), position = original.position();
  CHECK(epoch == 1);
  CHECK(position == 4);
  const auto expected = take_inputs(original, 30);

  TokenLoader resumed({path}, config(3, 8, 9, 1, 2));
  resumed.seek(epoch, position);
  CHECK(resumed.epoch() == epoch);
  CHECK(resumed.position() == position);
  CHECK(take_inputs(resumed, 30) == expected);
  CHECK_THROWS(resumed.seek(0, 16));
}

TEST_CASE("a shard truncated under the loader is an error naming the file, not SIGBUS") {
  TempDir dir;
  const std::string path = dir.file("shrinks.bin");
  write_shard(path, iota_tokens(20000), ShardFormat::LlmcU16);  // 41 KB: several pages
  TokenLoader loader({path}, config(4, 64));
  Batch batch;
  loader.next(batch);  // maps and reads pages
  CHECK(batch.inputs[0] == int32_t(loader.rank_window_ids(0)[0] * 64));
  fs::resize_file(path, 0);  // truncated in place: every mapped page is now past the end
  const std::string msg = error_of([&] {
    for (int i = 0; i < 8; ++i) loader.next(batch);
  });
  CHECK(contains(msg, "token shard " + path));
  CHECK(contains(msg, "changed on disk"));
  CHECK(contains(msg, "is now 0 bytes"));
  // Unlinking is harmless: the mapping keeps the old file alive.
  const std::string kept = dir.file("kept.bin");
  write_shard(kept, iota_tokens(20000), ShardFormat::LlmcU16);
  TokenLoader still({kept}, config(4, 64, 1, 0, 1));
  fs::remove(kept);
  still.next(batch);
  CHECK(batch.targets[0] == batch.inputs[0] + 1);
}

TEST_CASE("too few windows for one batch per rank is a clear error") {
  TempDir dir;
  const std::string path = dir.file("small.bin");
  write_shard(path, iota_tokens(41), ShardFormat::LlmcU16);  // 5 windows of T=8
  const std::string msg = error_of([&] { TokenLoader l({path}, config(2, 8, 1, 0, 3)); });
  CHECK(contains(msg, "5 windows"));
  CHECK(contains(msg, "at least 6 windows"));
  CHECK_NOTHROW(TokenLoader({path}, config(2, 8, 1, 0, 2)));
  CHECK_THROWS(TokenLoader({path}, config(2, 8, 1, 2, 2)));  // rank out of range
}

// ------------------------------------------------------------------ tokenizers

TEST_CASE("byte tokenizer round trips arbitrary bytes") {
  ByteTokenizer tok;
  std::string text;
  for (int i = 0; i < 256; ++i) text.push_back(char(i));
  text += "héllo\0world";
  const auto ids = tok.encode(text);
  CHECK(ids.size() == text.size());
  CHECK(tok.decode(ids) == text);
  CHECK(tok.vocab_size() == 257);
  CHECK(tok.eot() == 256);
  CHECK(tok.decode(256) == "<|endoftext|>");
  const auto literal = tok.encode("<|endoftext|>");
  CHECK(literal.size() == 13);
  CHECK(*std::max_element(literal.begin(), literal.end()) < 256);  // no specials
  CHECK(contains(error_of([&] { tok.decode(257); }), "257"));
  CHECK(dynamic_cast<ByteTokenizer*>(load_tokenizer("byte").get()) != nullptr);
}

namespace {

// Writes an llm.c tokenizer file: version, vocab, eot (header [3]) and pieces.
void write_gpt2_tokenizer(const std::string& path, uint32_t version, uint32_t eot,
                          const std::vector<std::string>& pieces) {
  std::vector<unsigned char> bytes;
  append(bytes, Gpt2Decoder::kMagic);
  append(bytes, version);
  append(bytes, uint32_t(pieces.size()));
  append(bytes, eot);
  bytes.resize(1024, 0);
  for (const std::string& piece : pieces) {
    bytes.push_back(uint8_t(piece.size()));
    bytes.insert(bytes.end(), piece.begin(), piece.end());
  }
  write_bytes(path, bytes);
}

}  // namespace

TEST_CASE("GPT-2 decoder reads llm.c tokenizer files") {
  TempDir dir;
  SUBCASE("version 2") {
    const std::string path = dir.file("tok_v2.bin");
    write_gpt2_tokenizer(path, 2, 3, {"Hello", ",", " world", "<|endoftext|>"});
    Gpt2Decoder tok(path);
    CHECK(tok.vocab_size() == 4);
    CHECK(tok.eot() == 3);
    CHECK(tok.decode({0, 1, 2, 3}) == "Hello, world<|endoftext|>");
    CHECK(contains(error_of([&] { tok.decode(4); }), "token id 4"));
    CHECK(contains(error_of([&] { tok.encode("hi"); }), "BPE encoding not supported"));
    CHECK(load_tokenizer(path)->decode(2) == " world");
  }
  SUBCASE("version 1 uses 50256 as end of text") {
    const std::string path = dir.file("tok_v1.bin");
    std::vector<std::string> pieces(50257, "x");
    pieces[0] = "!";
    pieces[50256] = "<|endoftext|>";
    write_gpt2_tokenizer(path, 1, 0, pieces);
    Gpt2Decoder tok(path);
    CHECK(tok.vocab_size() == 50257);
    CHECK(tok.eot() == 50256);
    CHECK(tok.decode(0) == "!");
    CHECK(tok.decode(tok.eot()) == "<|endoftext|>");
  }
  SUBCASE("truncated file") {
    const std::string path = dir.file("tok_cut.bin");
    write_gpt2_tokenizer(path, 2, 0, {"a", "bcd"});
    auto bytes = read_bytes(path);
    bytes.pop_back();
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { Gpt2Decoder t(path); });
    CHECK(contains(msg, "tok_cut.bin"));
    CHECK(contains(msg, "truncated at byte offset 1026"));
  }
  SUBCASE("bad magic and version") {
    const std::string path = dir.file("tok_bad.bin");
    write_gpt2_tokenizer(path, 3, 0, {"a"});
    const std::string msg = error_of([&] { Gpt2Decoder t(path); });
    CHECK(contains(msg, "tok_bad.bin"));
    CHECK(contains(msg, "version 3"));
    write_bytes(path, std::vector<unsigned char>(1024, 0));
    CHECK(contains(error_of([&] { Gpt2Decoder t(path); }), "bad magic"));
  }
}
