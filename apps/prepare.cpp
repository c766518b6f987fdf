// apps/prepare.cpp - text files -> token shards for training.
//
// Reads one or more text files (paths or glob patterns), splits them into
// documents (a whole file, or the pieces between separator lines such as "%" in
// fortune files), encodes every document with the byte tokenizer followed by the
// end-of-text token, assigns each document deterministically to train or
// validation, and writes <out-dir>/train.bin and <out-dir>/val.bin (docs/data.md).
//
//   prepare --input '/usr/share/games/fortunes/*' --separator % --out-dir data/fortunes
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tensor/error.h"
#include "tensor/philox.h"

namespace fs = std::filesystem;
using namespace sessa;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw sessa::Error(msg); }

struct Options {
  std::vector<std::string> inputs;
  std::string out_dir;
  std::string tokenizer = "byte";
  std::string separator;
  bool has_separator = false;
  double val_fraction = 0.05;
  uint64_t seed = 1337;
  std::string format = "u16";
};

// An input file in reading order; `explicit_path` when named directly (not by a glob).
struct InputFile {
  std::string path;
  bool explicit_path = false;
};

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// Expands --input items into files: a plain path must exist and be a file; a glob
// must match something; directories matched by a glob are skipped.
std::vector<InputFile> expand_inputs(const std::vector<std::string>& items) {
  std::vector<InputFile> files;
  for (const std::string& item : items) {
    std::error_code ec;
    if (fs::exists(item, ec)) {
      if (fs::is_directory(item, ec))
        fail("--input: '" + item + "' is a directory (give files or a glob such as '" + item + "/*')");
      files.push_back({item, true});
      continue;
    }
    if (!has_glob_chars(item)) fail("--input: '" + item + "' does not exist");
    std::vector<std::string> matched;
    try {
      matched = data::expand_paths(item);
    } catch (const std::exception& e) {
      fail(std::string("--input: ") + e.what());
    }
    for (const std::string& m : matched) {
      if (fs::is_directory(m, ec)) {
        std::cerr << "note: skipping directory '" << m << "'\n";
        continue;
      }
      files.push_back({m, false});
    }
  }
  return files;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read '" + path + "': " + std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail("cannot read '" + path + "': read error");
  return os.str();
}

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

// Splits `text` into documents at lines equal to `separator` (a trailing '\r' is
// ignored). Each document keeps its lines with their newlines.
std::vector<std::string_view> split_documents(std::string_view text, const std::string& separator) {
  std::vector<std::string_view> docs;
  size_t doc_start = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(pos, line_end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    if (line == separator) {
      docs.push_back(text.substr(doc_start, pos - doc_start));
      doc_start = next;
    }
    pos = next;
  }
  docs.push_back(text.substr(doc_start));
  return docs;
}

std::string with_commas(uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}

int run(const Options& opt) {
  // ---- flag values ----
  if (opt.tokenizer != "byte")
    fail("--tokenizer '" + opt.tokenizer +
         "': only the built-in byte tokenizer ('byte') can encode text; GPT-2 tokenizer files are decode-only "
         "(tokenize GPT-2 data with the llm.c tools)");
  if (!(opt.val_fraction > 0 && opt.val_fraction < 1))
    fail("--val-fraction must be in (0, 1), got " + num(opt.val_fraction));
  data::ShardFormat fmt;
  if (opt.format == "u16")
    fmt = data::ShardFormat::LlmcU16;
  else if (opt.format == "u32")
    fmt = data::ShardFormat::SessaU32;
  else
    fail("--format must be u16 or u32, got '" + opt.format + "'");
  if (opt.has_separator && opt.separator.find('\n') != std::string::npos)
    fail("--separator must be a single line (no newline)");

  // ---- read and split ----
  std::vector<InputFile> inputs = expand_inputs(opt.inputs);
  std::map<std::string, std::string> seen;  // canonical path -> path read
  data::ByteTokenizer tok;
  std::vector<std::vector<uint32_t>> docs;  // encoded documents, in reading order
  uint64_t files_read = 0, bytes_read = 0, doc_bytes = 0, skipped_binary = 0, skipped_dup = 0, skipped_blank = 0;
  for (const InputFile& f : inputs) {
    std::error_code ec;
    std::string canon = fs::weakly_canonical(f.path, ec).string();
    if (ec) canon = f.path;
    if (auto it = seen.find(canon); it != seen.end()) {
      std::cerr << "note: skipping '" << f.path << "': same file as '" << it->second << "'\n";
      ++skipped_dup;
      continue;
    }
    seen.emplace(canon, f.path);
    std::string text = read_file(f.path);
    if (text.find('\0') != std::string::npos) {
      std::cerr << "note: skipping '" << f.path << "': binary file (contains NUL bytes)\n";
      ++skipped_binary;
      continue;
    }
    ++files_read;
    bytes_read += text.size();
    std::vector<std::string_view> pieces =
        opt.has_separator ? split_documents(text, opt.separator) : std::vector<std::string_view>{text};
    uint64_t kept = 0;
    for (std::string_view d : pieces) {
      if (blank(d)) {
        ++skipped_blank;
        continue;
      }
      doc_bytes += d.size();
      docs.push_back(tok.encode(d));
      ++kept;
    }
    if (kept == 0) std::cerr << "note: '" << f.path << "' holds no non-blank document\n";
  }
  if (files_read == 0)
    fail("--input: no text file to read (all " + std::to_string(inputs.size()) + " input file(s) were skipped)");
  if (docs.empty())
    fail("--input: the corpus is empty (no non-blank document in " + std::to_string(files_read) + " file(s))");
  if (docs.size() < 2)
    fail("--input: only one document: need at least 2 to put one in train and one in validation" +
         std::string(opt.has_separator ? "" : " (each file is one document; use --separator to split files)"));

  // ---- deterministic split: document i is validation when uniform(seed, i) < fraction ----
  const size_t n = docs.size();
  std::vector<double> u(n);
  std::vector<bool> is_val(n);
  size_t n_val = 0;
  for (size_t i = 0; i < n; ++i) {
    u[i] = philox::uniform(opt.seed, uint64_t(i));
    is_val[i] = u[i] < opt.val_fraction;
    n_val += is_val[i];
  }
  if (n_val == 0) {  // the document with the smallest hash goes to validation
    size_t m = 0;
    for (size_t i = 1; i < n; ++i)
      if (u[i] < u[m]) m = i;
    is_val[m] = true, n_val = 1;
  } else if (n_val == n) {  // the one with the largest hash stays in train
    size_t m = 0;
    for (size_t i = 1; i < n; ++i)
      if (u[i] > u[m]) m = i;
    is_val[m] = false, n_val = n - 1;
  }

  std::vector<uint32_t> train, val;
  for (size_t i = 0; i < n; ++i) {
    std::vector<uint32_t>& dst = is_val[i] ? val : train;
    dst.insert(dst.end(), docs[i].begin(), docs[i].end());
    dst.push_back(tok.eot());
  }
  docs.clear();
  docs.shrink_to_fit();

  // ---- write ----
  {
    std::error_code ec;
    fs::create_directories(opt.out_dir, ec);
    if (ec || !fs::is_directory(opt.out_dir))
      fail("--out-dir '" + opt.out_dir + "': cannot create directory" + (ec ? ": " + ec.message() : ""));
  }
  const std::string train_path = (fs::path(opt.out_dir) / "train.bin").string();
  const std::string val_path = (fs::path(opt.out_dir) / "val.bin").string();
  data::write_shard(train_path, train, fmt);
  data::write_shard(val_path, val, fmt);

  std::cout << "files read:  " << files_read;
  if (skipped_binary || skipped_dup)
    std::cout << " (skipped " << skipped_binary << " binary, " << skipped_dup << " duplicate)";
  std::cout << "\nbytes:       " << with_commas(bytes_read) << " read, " << with_commas(doc_bytes) << " in documents\n"
            << "documents:   " << with_commas(n);
  if (skipped_blank) std::cout << " (" << skipped_blank << " blank pieces dropped)";
  std::cout << "\ntokenizer:   byte (vocab " << tok.vocab_size() << ", end-of-text " << tok.eot()
            << " after each document), format " << opt.format << "\n"
            << "train:       " << with_commas(n - n_val) << " documents, " << with_commas(train.size()) << " tokens -> "
            << train_path << "\n"
            << "val:         " << with_commas(n_val) << " documents, " << with_commas(val.size()) << " tokens -> "
            << val_path << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "prepare: text files -> token shards (train.bin, val.bin) for training.\n"
      "Each document is byte-encoded and followed by the end-of-text token (256)."};
  Options opt;
  app.add_option("--input", opt.inputs,
                 "One or more text files or glob patterns (quote globs to let prepare expand them). "
                 "Files containing NUL bytes (e.g. fortune *.dat indexes) and repeated files (symlinks) "
                 "are skipped with a note")
      ->required()
      ->expected(1, -1);
  app.add_option("--out-dir", opt.out_dir, "Output directory for train.bin and val.bin (created if missing)")
      ->required();
  app.add_option("--tokenizer", opt.tokenizer,
                 "Tokenizer: 'byte' (built-in, vocab 257). GPT-2 tokenizer files cannot encode and are rejected")
      ->capture_default_str();
  app.add_option("--separator", opt.separator,
                 "A line that separates documents inside a file, e.g. % for fortune files "
                 "(default: none, each file is one document; an empty string splits at blank lines)");
  app.add_option("--val-fraction", opt.val_fraction,
                 "Fraction of documents for validation, in (0, 1); document i goes to validation when "
                 "a hash of (i, seed) falls below it, with at least one document on each side")
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "Seed of the train/validation split")->capture_default_str();
  app.add_option("--format", opt.format, "Token shard format: u16 (llm.c, magic 20240520) or u32 (magic 20240521)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  opt.has_separator = app.count("--separator") > 0;

  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::cerr << "prepare: error: " << e.what() << "\n";
    return 1;
  }
}
