// data/loader.cpp - path expansion, window enumeration, seeded shuffling and
// per-rank batch iteration for TokenLoader.
#include "data/loader.h"

#include <glob.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "tensor/error.h"

namespace sessa::data {

namespace {

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t");
  return s.substr(first, last - first + 1);
}

std::vector<std::string> split_commas(const std::string& spec) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= spec.size()) {
    size_t end = spec.find(',', begin);
    if (end == std::string::npos) end = spec.size();
    std::string item = trim(spec.substr(begin, end - begin));
    if (!item.empty()) items.push_back(item);
    begin = end + 1;
  }
  return items;
}

// Appends the matches of one pattern (a plain path matches itself if it exists).
void glob_into(const std::string& pattern, std::vector<std::string>& out) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  if (rc == 0) out.insert(out.end(), g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  SESSA_CHECK(rc != GLOB_NOMATCH, "data path", "no files match '" << pattern << "'");
  SESSA_CHECK(rc == 0, "data path", "cannot expand '" << pattern << "' (glob error " << rc << ")");
}

// Unbiased integer in [0, n) by rejection sampling; spelled out (rather than
// std::uniform_int_distribution) so results are identical on every platform.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t reject_below = (uint64_t{0} - n) % n;  // 2^64 mod n
  uint64_t x = rng();
  while (x < reject_below) x = rng();
  return x % n;
}

// Fisher-Yates shuffle, spelled out because std::shuffle is implementation-defined.
void fisher_yates(std::vector<uint64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const uint64_t j = uniform_below(rng, i);
    std::swap(v[i - 1], v[j]);
  }
}

}  // namespace

std::vector<std::string> expand_paths(const std::string& spec) {
  const std::vector<std::string> items = split_commas(spec);
  SESSA_CHECK(!items.empty(), "data path",
              "'" << spec << "' names no files (expected files or globs, comma-separated)");
  std::vector<std::string> paths;
  for (const std::string& item : items) glob_into(item, paths);
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  return paths;
}

TokenLoader::TokenLoader(const std::vector<std::string>& paths, const LoaderConfig& config) : config_(config) {
  validate_config();
  SESSA_CHECK(!paths.empty(), "TokenLoader", "no shard paths given");
  open_shards(paths);
  check_enough_windows();
  start_epoch(0);
}

void TokenLoader::validate_config() const {
  const LoaderConfig& c = config_;
  SESSA_CHECK(c.batch > 0 && c.seq_len > 0, "TokenLoader",
              "batch (" << c.batch << ") and seq_len (" << c.seq_len << ") must be positive");
  SESSA_CHECK(c.world > 0 && c.rank >= 0 && c.rank < c.world, "TokenLoader",
              "rank " << c.rank << " is not in [0, world=" << c.world << ")");
}

// Window starts are multiples of T with start + T + 1 <= size, so a shard of
// n >= T + 1 tokens holds (n - 1) / T windows.
void TokenLoader::open_shards(const std::vector<std::string>& paths) {
  const uint64_t T = uint64_t(config_.seq_len);
  window_offsets_.assign(1, 0);
  for (const std::string& path : paths) {
    TokenShard shard(path, T + 1);
    if (config_.vocab > 0) shard.validate_vocab(config_.vocab);
    window_offsets_.push_back(window_offsets_.back() + (shard.size() - 1) / T);
    shards_.push_back(std::move(shard));
  }
}

void TokenLoader::check_enough_windows() const {
  if (batches_per_epoch() > 0) return;
  const uint64_t B = uint64_t(config_.batch), W = uint64_t(config_.world);
  SESSA_FAIL("TokenLoader", total_windows() << " windows of seq_len+1=" << config_.seq_len + 1 << " tokens in "
                                            << shards_.size() << " shard(s) give each of " << W << " rank(s) "
                                            << total_windows() / W << " window(s), but one batch needs " << B
                                            << " per rank: at least " << B * W << " windows are needed");
}

uint64_t TokenLoader::windows_per_rank() const {
  const uint64_t W = uint64_t(config_.world), r = uint64_t(config_.rank);
  return total_windows() / W + (r < total_windows() % W ? 1 : 0);
}

uint64_t TokenLoader::batches_per_epoch() const {
  return total_windows() / uint64_t(config_.world) / uint64_t(config_.batch);
}

// All ranks compute the same permutation (seeded with seed + epoch); rank r
// keeps the entries at positions i with i % world == r.
std::vector<uint64_t> TokenLoader::rank_window_ids(uint64_t epoch) const {
  std::vector<uint64_t> order(total_windows());
  std::iota(order.begin(), order.end(), uint64_t{0});
  if (config_.shuffle) {
    std::mt19937_64 rng(config_.seed + epoch);
    fisher_yates(order, rng);
  }
  std::vector<uint64_t> slice;
  slice.reserve(windows_per_rank());
  for (size_t i = size_t(config_.rank); i < order.size(); i += size_t(config_.world)) {
    slice.push_back(order[i]);
  }
  return slice;
}

void TokenLoader::start_epoch(uint64_t epoch) {
  slice_ = rank_window_ids(epoch);
  epoch_ = epoch;
  position_ = 0;
}

void TokenLoader::seek(uint64_t epoch, uint64_t position) {
  SESSA_CHECK(position < batches_per_epoch(), "TokenLoader::seek",
              "position " << position << " is not below batches_per_epoch " << batches_per_epoch());
  if (epoch != epoch_) start_epoch(epoch);
  position_ = position;
}

void TokenLoader::fill_row(uint64_t window_id, int32_t* inputs, int32_t* targets) const {
  const auto next_shard = std::upper_bound(window_offsets_.begin(), window_offsets_.end(), window_id);
  const size_t s = size_t(next_shard - window_offsets_.begin()) - 1;
  const uint64_t T = uint64_t(config_.seq_len);
  const uint64_t start = (window_id - window_offsets_[s]) * T;
  shards_[s].copy(start, T, inputs);
  shards_[s].copy(start + 1, T, targets);
}

void TokenLoader::next(Batch& batch) {
  const int64_t B = config_.batch, T = config_.seq_len;
  batch.B = B;
  batch.T = T;
  batch.inputs.resize(size_t(B * T));
  batch.targets.resize(size_t(B * T));
  const uint64_t first = position_ * uint64_t(B);
  for (int64_t b = 0; b < B; ++b) {
    fill_row(slice_[first + uint64_t(b)], batch.inputs.data() + b * T, batch.targets.data() + b * T);
  }
  if (++position_ == batches_per_epoch()) start_epoch(epoch_ + 1);
}

}  // namespace sessa::data
