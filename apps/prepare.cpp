// apps/prepare.cpp - text files -> token shards for training.
//
// Reads one or more text files (paths or glob patterns), splits them into
// documents (a whole file, or the pieces between separator lines such as "%" in
// fortune files), encodes every document with the byte tokenizer followed by the
// end-of-text token, assigns each document deterministically to train or
// validation, and writes <out-dir>/train.bin and <out-dir>/val.bin (docs/data.md).
//
//   prepare --input '/usr/share/games/fortunes/*' --separator % --out-dir data/fortunes
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/run_files.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tensor/error.h"
#include "tensor/philox.h"

namespace fs = std::filesystem;
using namespace sessa;

namespace {

struct Flags {
  std::vector<std::string> inputs;
  std::string out_dir;
  std::string tokenizer = "byte";
  std::string separator;
  double val_fraction = 0.05;
  uint64_t seed = 1337;
  std::string format = "u16";
  bool verbose = false;
};

void add_flags(CLI::App& app, Flags& f) {
  app.add_option("--input", f.inputs,
                 "One or more text files or glob patterns (quote globs to let prepare expand them). "
                 "Files containing NUL bytes (e.g. fortune *.dat indexes) and repeated files (symlinks) "
                 "are skipped and counted (--verbose lists them)")
      ->required()
      ->expected(1, -1);
  app.add_option("--out-dir", f.out_dir, "Output directory for train.bin and val.bin (created if missing)")->required();
  app.add_option("--tokenizer", f.tokenizer,
                 "Tokenizer: 'byte' (built-in, vocab 257). GPT-2 tokenizer files cannot encode and are rejected")
      ->capture_default_str();
  app.add_option("--separator", f.separator,
                 "A line that separates documents inside a file, e.g. % for fortune files "
                 "(default: none, each file is one document; an empty string splits at blank lines)");
  app.add_option("--val-fraction", f.val_fraction,
                 "Fraction of documents for validation, in (0, 1); document i goes to validation when "
                 "a hash of (i, seed) falls below it, with at least one document on each side")
      ->check(apps::open_fraction())
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the train/validation split")
      ->check(apps::seed_number())
      ->capture_default_str();
  app.add_option("--format", f.format, "Token shard format: u16 (llm.c, magic 20240520) or u32 (magic 20240521)")
      ->check(CLI::IsMember({"u16", "u32"}))
      ->capture_default_str();
  app.add_flag("--verbose", f.verbose, "List every skipped file and every file without a document");
}

// Files passed over while reading, reported in one line (each one with --verbose).
struct Skipped {
  std::vector<std::string> binary, duplicate, directory, empty;
  void report(bool verbose) const {
    const size_t files = binary.size() + duplicate.size() + directory.size();
    if (files == 0 && empty.empty()) return;
    std::string line = "skipped " + std::to_string(files) + " input(s):";
    const char* sep = " ";
    auto count = [&](size_t n, const char* what) {
      if (n == 0) return;
      line += sep + std::to_string(n) + " " + what;
      sep = ", ";
    };
    count(binary.size(), "binary (NUL bytes, e.g. fortune .dat indexes)");
    count(duplicate.size(), "repeated (the same file by another name)");
    count(directory.size(), "directories");
    if (!empty.empty()) line += "; " + std::to_string(empty.size()) + " file(s) held no non-blank document";
    apps::note("%s%s", line.c_str(), verbose ? ":" : " (--verbose lists them)");
    if (!verbose) return;
    for (const std::string& s : binary) std::fprintf(stderr, "  binary     %s\n", s.c_str());
    for (const std::string& s : duplicate) std::fprintf(stderr, "  repeated   %s\n", s.c_str());
    for (const std::string& s : directory) std::fprintf(stderr, "  directory  %s\n", s.c_str());
    for (const std::string& s : empty) std::fprintf(stderr, "  no text    %s\n", s.c_str());
  }
};

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// Expands --input items into files: a plain path must exist and be a file; a glob
// must match something; directories matched by a glob are skipped.
std::vector<std::string> expand_inputs(const std::vector<std::string>& items, Skipped& skipped) {
  std::vector<std::string> files;
  for (const std::string& item : items) {
    std::error_code ec;
    if (fs::exists(item, ec)) {
      SESSA_CHECK(!fs::is_directory(item, ec), "--input",
                  "'" << item << "' is a directory (give files or a glob such as '" << item << "/*')");
      files.push_back(item);
      continue;
    }
    SESSA_CHECK(has_glob_chars(item), "--input", "'" << item << "' does not exist");
    std::vector<std::string> matched;
    try {
      matched = data::expand_paths(item);
    } catch (const std::exception& e) {
      SESSA_FAIL("--input", e.what());
    }
    for (const std::string& m : matched) (fs::is_directory(m, ec) ? skipped.directory : files).push_back(m);
  }
  return files;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SESSA_CHECK(in, "--input", "cannot read '" << path << "': " << std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  SESSA_CHECK(!in.bad(), "--input", "cannot read '" << path << "': read error");
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

// The corpus read from the inputs: encoded documents in reading order.
struct Corpus {
  std::vector<std::vector<uint32_t>> docs;
  uint64_t files_read = 0, bytes_read = 0, doc_bytes = 0, blank_pieces = 0;
};

Corpus read_corpus(const Flags& f, bool has_separator, data::ByteTokenizer& tok) {
  Skipped skipped;
  const std::vector<std::string> inputs = expand_inputs(f.inputs, skipped);
  std::map<std::string, std::string> seen;  // canonical path -> path read
  Corpus c;
  for (const std::string& path : inputs) {
    std::error_code ec;
    std::string canon = fs::weakly_canonical(path, ec).string();
    if (ec) canon = path;
    if (auto it = seen.find(canon); it != seen.end()) {
      skipped.duplicate.push_back(path + " (= " + it->second + ")");
      continue;
    }
    seen.emplace(canon, path);
    std::string text = read_file(path);
    if (text.find('\0') != std::string::npos) {
      skipped.binary.push_back(path);
      continue;
    }
    ++c.files_read;
    c.bytes_read += text.size();
    std::vector<std::string_view> pieces =
        has_separator ? split_documents(text, f.separator) : std::vector<std::string_view>{text};
    uint64_t kept = 0;
    for (std::string_view d : pieces) {
      if (blank(d)) {
        ++c.blank_pieces;
        continue;
      }
      c.doc_bytes += d.size();
      c.docs.push_back(tok.encode(d));
      ++kept;
    }
    if (kept == 0) skipped.empty.push_back(path);
  }
  skipped.report(f.verbose);
  SESSA_CHECK(c.files_read > 0, "--input",
              "no text file to read (all " << inputs.size() << " input file(s) were skipped)");
  SESSA_CHECK(!c.docs.empty(), "--input",
              "the corpus is empty (no non-blank document in " << c.files_read << " file(s))");
  SESSA_CHECK(c.docs.size() >= 2, "--input",
              "only one document: need at least 2 to put one in train and one in validation"
                  << (has_separator ? "" : " (each file is one document; use --separator to split files)"));
  return c;
}

// Deterministic split: document i is validation when uniform(seed, i) < fraction,
// with at least one document on each side.
std::vector<bool> split_validation(size_t n, double fraction, uint64_t seed) {
  std::vector<double> u(n);
  std::vector<bool> is_val(n);
  size_t n_val = 0;
  for (size_t i = 0; i < n; ++i) {
    u[i] = philox::uniform(seed, uint64_t(i));
    is_val[i] = u[i] < fraction;
    n_val += is_val[i];
  }
  if (n_val == 0) {  // the document with the smallest hash goes to validation
    is_val[size_t(std::min_element(u.begin(), u.end()) - u.begin())] = true;
  } else if (n_val == n) {  // the one with the largest hash stays in train
    is_val[size_t(std::max_element(u.begin(), u.end()) - u.begin())] = false;
  }
  return is_val;
}

// Writes both shards to temporaries and renames them into place only when both
// are complete: a crash or a full disk leaves the previous shards (or none).
void write_shards(const std::string& out_dir, const std::vector<uint32_t>& train, const std::vector<uint32_t>& val,
                  data::ShardFormat fmt, const std::string& train_path, const std::string& val_path) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  SESSA_CHECK(!ec && fs::is_directory(out_dir), "--out-dir",
              "'" << out_dir << "': cannot create directory" << (ec ? ": " + ec.message() : ""));
  for (const std::string& name : apps::remove_stale_temporaries(out_dir))
    apps::note("removed %s/%s, a temporary file left by a crashed run", out_dir.c_str(), name.c_str());
  const std::string suffix = ".tmp." + std::to_string(getpid());
  const std::string train_tmp = train_path + suffix, val_tmp = val_path + suffix;
  try {
    data::write_shard(train_tmp, train, fmt);
    data::write_shard(val_tmp, val, fmt);
  } catch (const std::exception& e) {
    fs::remove(train_tmp, ec), fs::remove(val_tmp, ec);
    SESSA_FAIL("--out-dir", "'" << out_dir << "': " << e.what() << " (the previous shards, if any, are untouched)");
  }
  apps::rename_all({{train_tmp, train_path}, {val_tmp, val_path}});
}

int run(const Flags& f, bool has_separator) {
  SESSA_CHECK(f.tokenizer == "byte", "--tokenizer",
              "'" << f.tokenizer
                  << "': only the built-in byte tokenizer ('byte') can encode text; GPT-2 tokenizer files are "
                     "decode-only (tokenize GPT-2 data with the llm.c tools)");
  SESSA_CHECK(!has_separator || f.separator.find('\n') == std::string::npos, "--separator",
              "must be a single line (no newline)");
  const data::ShardFormat fmt = f.format == "u32" ? data::ShardFormat::SessaU32 : data::ShardFormat::LlmcU16;

  data::ByteTokenizer tok;
  Corpus corpus = read_corpus(f, has_separator, tok);
  const size_t n = corpus.docs.size();
  const std::vector<bool> is_val = split_validation(n, f.val_fraction, f.seed);
  std::vector<uint32_t> train, val;
  size_t n_val = 0;
  for (size_t i = 0; i < n; ++i) {
    std::vector<uint32_t>& dst = is_val[i] ? val : train;
    dst.insert(dst.end(), corpus.docs[i].begin(), corpus.docs[i].end());
    dst.push_back(tok.eot());
    n_val += is_val[i];
  }
  corpus.docs = {};

  const std::string train_path = (fs::path(f.out_dir) / "train.bin").string();
  const std::string val_path = (fs::path(f.out_dir) / "val.bin").string();
  write_shards(f.out_dir, train, val, fmt, train_path, val_path);

  std::printf("files read:  %s\n", with_commas(corpus.files_read).c_str());
  std::printf("bytes:       %s read, %s in documents\n", with_commas(corpus.bytes_read).c_str(),
              with_commas(corpus.doc_bytes).c_str());
  std::printf("documents:   %s", with_commas(n).c_str());
  if (corpus.blank_pieces) std::printf(" (%s blank pieces dropped)", with_commas(corpus.blank_pieces).c_str());
  std::printf("\ntokenizer:   byte (vocab %u, end-of-text %u after each document), format %s\n",
              unsigned(tok.vocab_size()), unsigned(tok.eot()), f.format.c_str());
  std::printf("train:       %s documents, %s tokens -> %s\n", with_commas(n - n_val).c_str(),
              with_commas(train.size()).c_str(), train_path.c_str());
  std::printf("val:         %s documents, %s tokens -> %s\n", with_commas(n_val).c_str(),
              with_commas(val.size()).c_str(), val_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "prepare: text files -> token shards (train.bin, val.bin) for training.\n"
      "Each document is byte-encoded and followed by the end-of-text token (256)."};
  add_flags(app, f);
  return apps::run_app("prepare", app, argc, argv,
                       [&](dist::World&) { return run(f, apps::given(app, "--separator")); });
}
