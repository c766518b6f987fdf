// tests/fuzz/make_seeds.cpp - Writes the generated seed corpus of every fuzz target
// (make_seeds OUT_DIR -> OUT_DIR/<target>/<seed>): small valid files made by the
// engine's own writers, plus a few broken variants of each. Hand-made seeds and
// the crash regressions live in tests/fuzz/corpus/<target>/ instead.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "data/safetensors.h"
#include "data/shard.h"
#include "data/symbolsoup.h"
#include "nn/checkpoint.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/fuzz/fuzz_seed_models.h"

using namespace sessa;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

fs::path out_root;

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void put(const std::string& target, const std::string& name, const Bytes& bytes) {
  fs::create_directories(out_root / target);
  std::ofstream out(out_root / target / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

Bytes truncated(Bytes bytes, size_t keep) {
  bytes.resize(std::min(keep, bytes.size()));
  return bytes;
}

void append_u32(Bytes& bytes, uint32_t v) {
  for (int i = 0; i < 4; ++i) bytes.push_back(uint8_t(v >> (8 * i)));
}

// A safetensors file as the checkpoint target takes it: header, NUL, data.
Bytes header_nul_data(const Bytes& file) {
  uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= uint64_t(file[i]) << (8 * i);
  Bytes out(file.begin() + 8, file.begin() + 8 + long(header));
  out.push_back(0);
  out.insert(out.end(), file.begin() + 8 + long(header), file.end());
  return out;
}

void safetensors_seeds(const fs::path& tmp) {
  std::vector<data::StEntry> entries = {
      {"w", "F32", {2, 2}, Bytes(16, 0x3f)},
      {"ids", "I64", {3}, Bytes(24, 1)},
      {"empty", "BF16", {0, 5}, {}},
  };
  const fs::path path = tmp / "a.safetensors";
  data::write_safetensors(path.string(), entries, {{"format", "x"}, {"config", "{\"a\":1}"}});
  const Bytes full = read_bytes(path);
  put("fuzz_safetensors", "valid", full);
  put("fuzz_safetensors", "truncated_data", truncated(full, full.size() - 3));
  put("fuzz_safetensors", "truncated_header", truncated(full, 20));
  Bytes huge_length = full;
  huge_length[7] = 0x7f;
  put("fuzz_safetensors", "huge_header_length", huge_length);
  data::write_safetensors(path.string(), {}, {});
  put("fuzz_safetensors", "no_tensors", read_bytes(path));
}

void checkpoint_seeds(const fs::path& tmp) {
  const nn::ModelConfig config = fuzz::tiny_checkpoint_config();
  nn::Trainer trainer(layer::build_model(config, 3), {});
  nn::OptimizerState state = trainer.optimizer_state();
  data::Json training;
  training["step"] = 2;
  training["data_epoch"] = 0;
  training["data_position"] = 64;
  training["data_world"] = 1;
  const fs::path path = tmp / "c.safetensors";
  nn::save_checkpoint(path.string(), trainer.model(), config, &state, training);
  const Bytes with_optimizer = header_nul_data(read_bytes(path));
  put("fuzz_checkpoint", "with_optimizer", with_optimizer);
  put("fuzz_checkpoint", "truncated", truncated(with_optimizer, with_optimizer.size() - 10));
  nn::save_checkpoint(path.string(), trainer.model(), config, nullptr, training);
  put("fuzz_checkpoint", "weights_only", header_nul_data(read_bytes(path)));
}

void shard_seeds(const fs::path& tmp) {
  const std::vector<uint32_t> tokens = {1, 2, 3, 256, 0, 7, 65535};
  const fs::path path = tmp / "s.bin";
  const std::pair<const char*, data::ShardFormat> formats[] = {
      {"llmc_u16", data::ShardFormat::LlmcU16},
      {"sessa_u32", data::ShardFormat::SessaU32},
      {"raw_u16", data::ShardFormat::RawU16},
  };
  for (const auto& [name, format] : formats) {
    data::write_shard(path.string(), tokens, format);
    const Bytes bytes = read_bytes(path);
    put("fuzz_shard", name, bytes);
    put("fuzz_shard", std::string(name) + "_truncated", truncated(bytes, bytes.size() - 1));
  }
  data::write_shard(path.string(), {1000000, 2}, data::ShardFormat::SessaU32);
  put("fuzz_shard", "sessa_u32_big_ids", read_bytes(path));
}

// llm.c tokenizer files: 256 uint32 header (magic, version, vocab, eot), then per
// token a length byte and the bytes.
Bytes tokenizer_file(uint32_t version, const std::vector<std::string>& pieces, uint32_t eot) {
  Bytes bytes;
  append_u32(bytes, 20240328);
  append_u32(bytes, version);
  append_u32(bytes, uint32_t(pieces.size()));
  append_u32(bytes, eot);
  bytes.resize(1024, 0);
  for (const std::string& piece : pieces) {
    bytes.push_back(uint8_t(piece.size()));
    bytes.insert(bytes.end(), piece.begin(), piece.end());
  }
  return bytes;
}

void tokenizer_seeds() {
  const std::vector<std::string> pieces = {"a", "bc", "", " the", "<|endoftext|>"};
  const Bytes v2 = tokenizer_file(2, pieces, 4);
  put("fuzz_tokenizer", "version2", v2);
  put("fuzz_tokenizer", "version2_truncated", truncated(v2, v2.size() - 2));
  put("fuzz_tokenizer", "version1_small_vocab", tokenizer_file(1, pieces, 0));
  put("fuzz_tokenizer", "header_only", truncated(v2, 1024));
}

void symbolsoup_tsv_seeds(const fs::path& tmp) {
  const fs::path path = tmp / "t.tsv";
  data::symbolsoup::write_tsv(path.string(), data::symbolsoup::generate_split(3, 23, 40, 7));
  const Bytes valid = read_bytes(path);
  put("fuzz_symbolsoup_tsv", "valid", valid);
  put("fuzz_symbolsoup_tsv", "truncated", truncated(valid, valid.size() - 5));
  const std::string crlf = "Text\tAnswer\r\n\"<bos>\na\n<sep> <label>\"\tCLASS_3\r\n";
  put("fuzz_symbolsoup_tsv", "crlf_short", Bytes(crlf.begin(), crlf.end()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  out_root = argv[1];
  const fs::path tmp = out_root / "tmp";
  fs::create_directories(tmp);
  safetensors_seeds(tmp);
  checkpoint_seeds(tmp);
  shard_seeds(tmp);
  tokenizer_seeds();
  symbolsoup_tsv_seeds(tmp);
  fs::remove_all(tmp);
  return 0;
}
