// run_files.h - Files of a run directory that must survive a crash or a full disk.
//
// CsvLog appends one row per write(2) to a CSV file and syncs it to disk at most
// once a second (and on sync()), so a crash loses at most the last second of rows
// and never earlier ones; a failed write (disk full, file too large) throws an
// error naming the file. Opening it for a resumed run keeps the rows up to the
// checkpoint's step and drops the rest (rewritten atomically first).
//
// Temporaries are "<name>.tmp.<pid>[.<n>]" (data/file_util.h): those left by a
// process that no longer runs are removed when a run starts.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sessa::apps {

class CsvLog {
 public:
  // A fresh log holding only `header`; with `keep_through_step` >= 0 the rows of an
  // existing log whose first column is a step <= keep_through_step are kept.
  CsvLog(std::string path, const std::string& header, int64_t keep_through_step = -1);
  ~CsvLog();
  CsvLog(const CsvLog&) = delete;
  CsvLog& operator=(const CsvLog&) = delete;

  void append(const std::string& row);  // one line, without its newline
  void sync();                          // fdatasync now
  // The rows kept from the existing log, split at commas (no header).
  const std::vector<std::vector<std::string>>& kept_rows() const { return kept_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::chrono::steady_clock::time_point last_sync_;
  std::vector<std::vector<std::string>> kept_;
};

// Removes "*.tmp.<pid>*" files in `dir` whose process <pid> no longer runs; returns their names.
std::vector<std::string> remove_stale_temporaries(const std::string& dir);

// Renames each (temporary, final) pair in order, then syncs the directory; when a
// rename fails the temporaries not yet renamed are removed and the error names them.
void rename_all(const std::vector<std::pair<std::string, std::string>>& moves);

// A checkpoint from a file or a run directory (its latest.safetensors), with errors
// naming `flag`: a missing path, a directory without a run, and a dangling
// latest.safetensors link (naming its target and the newest checkpoint present).
std::string resolve_run_checkpoint(const std::string& file_or_dir, const std::string& flag);

}  // namespace sessa::apps
