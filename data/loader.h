// data/loader.h - training data loading: path expansion, enumeration of
// next-token windows over token shards, deterministic per-epoch shuffling,
// per-rank slicing and resumable batch iteration. See docs/data.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/shard.h"

namespace sessa::data {

// Expands a comma-separated list of files and/or POSIX glob patterns into a
// sorted, de-duplicated list of paths. Throws naming any item matching nothing.
std::vector<std::string> expand_paths(const std::string& spec);

struct LoaderConfig {
  int64_t batch = 0;    // B: windows per batch (per rank)
  int64_t seq_len = 0;  // T: tokens per row; each window holds T + 1 tokens
  uint64_t seed = 0;
  int rank = 0, world = 1;
  uint32_t vocab = 0;  // 0: skip the token-id range check
  bool shuffle = true;
};

// Row-major B x T token ids; targets[i] is the token following inputs[i].
struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> inputs, targets;
};

// Iterates batches of windows over a fixed list of shards. Every rank visits
// the same number of batches per epoch; after the last one the next epoch is
// shuffled and started automatically.
class TokenLoader {
 public:
  TokenLoader(const std::vector<std::string>& paths, const LoaderConfig& config);

  // Fills `batch` with the next B windows of this rank and advances.
  void next(Batch& batch);

  uint64_t epoch() const { return epoch_; }
  // Batches already taken in the current epoch (resume with seek()).
  uint64_t position() const { return position_; }
  // Continues at batch `position` of `epoch`; position < batches_per_epoch().
  void seek(uint64_t epoch, uint64_t position);

  uint64_t total_windows() const { return window_offsets_.back(); }
  // Size of this rank's slice of the windows (differs by at most 1 over ranks).
  uint64_t windows_per_rank() const;
  // Same for every rank: floor(total_windows / world) / batch.
  uint64_t batches_per_epoch() const;
  // Global window ids this rank visits in `epoch`, in visiting order. Window id
  // k is the k-th window of the shards concatenated in path order.
  std::vector<uint64_t> rank_window_ids(uint64_t epoch) const;

 private:
  void validate_config() const;
  void open_shards(const std::vector<std::string>& paths);
  void check_enough_windows() const;
  void start_epoch(uint64_t epoch);
  void fill_row(uint64_t window_id, int32_t* inputs, int32_t* targets) const;

  LoaderConfig config_;
  std::vector<TokenShard> shards_;
  // window_offsets_[s] = number of windows in shards before s; back() = total.
  std::vector<uint64_t> window_offsets_;
  std::vector<uint64_t> slice_;  // this rank's window ids for epoch_
  uint64_t epoch_ = 0;
  uint64_t position_ = 0;
};

}  // namespace sessa::data
