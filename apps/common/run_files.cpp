// run_files.cpp - crash-safe CSV log, stale temporaries, checkpoint lookup (run_files.h).
#include "apps/common/run_files.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/file_util.h"
#include "nn/checkpoint.h"
#include "tensor/error.h"

namespace fs = std::filesystem;

namespace sessa::apps {

namespace {

std::vector<std::string> split_commas(const std::string& line) {
  std::vector<std::string> col;
  size_t at = 0;
  for (size_t next; (next = line.find(',', at)) != std::string::npos; at = next + 1)
    col.push_back(line.substr(at, next - at));
  col.push_back(line.substr(at));
  return col;
}

// The step in a row's first column; -1 when it is not a whole number.
int64_t row_step(const std::vector<std::string>& col) {
  if (col.empty() || col[0].empty() || col[0].find_first_not_of("0123456789") != std::string::npos) return -1;
  try {
    return std::stoll(col[0]);
  } catch (const std::exception&) {
    return -1;
  }
}

// The pid in "<name>.tmp.<pid>" or "<name>.tmp.<pid>.<n>"; 0 when `name` is no temporary.
long temporary_pid(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos) return 0;
  const std::string rest = name.substr(at + 5);
  const size_t digits = rest.find_first_not_of("0123456789");
  if (digits == 0) return 0;
  if (digits != std::string::npos &&
      (rest[digits] != '.' || rest.find_first_not_of("0123456789", digits + 1) != std::string::npos))
    return 0;
  return std::stol(rest.substr(0, digits));
}

bool process_runs(long pid) { return pid == long(::getpid()) || kill(pid_t(pid), 0) == 0 || errno == EPERM; }

}  // namespace

CsvLog::CsvLog(std::string path, const std::string& header, int64_t keep_through_step) : path_(std::move(path)) {
  std::string text = header + "\n";
  if (keep_through_step >= 0) {
    std::ifstream in(path_);
    std::string line;
    std::getline(in, line);  // the old header
    while (std::getline(in, line)) {
      std::vector<std::string> col = split_commas(line);
      const int64_t step = row_step(col);
      if (step < 0 || step > keep_through_step) continue;  // past the checkpoint, or torn by a crash
      text += line + "\n";
      kept_.push_back(std::move(col));
    }
  }
  data::write_text_file_atomic(path_, text);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  SESSA_CHECK(fd_ >= 0, path_, "cannot open for appending: " << std::strerror(errno));
  last_sync_ = std::chrono::steady_clock::now();
}

CsvLog::~CsvLog() {
  if (fd_ < 0) return;
  fdatasync(fd_);
  ::close(fd_);
}

void CsvLog::append(const std::string& row) {
  const std::string line = row + "\n";
  // O_APPEND: one write(2) per row, so a crash never leaves half a row before a whole one.
  const ssize_t n = ::write(fd_, line.data(), line.size());
  if (n != ssize_t(line.size())) {
    const std::string why = n < 0 ? std::strerror(errno)
                                  : "only part of it was written (the disk is full or the file reached its size limit)";
    if (n > 0 && ftruncate(fd_, lseek(fd_, 0, SEEK_END) - n) != 0) { /* a torn row is dropped on the next resume */
    }
    SESSA_FAIL(path_, "cannot append a row: " << why << "; the rows before it are intact");
  }
  if (std::chrono::steady_clock::now() - last_sync_ > std::chrono::seconds(1)) sync();
}

void CsvLog::sync() {
  SESSA_CHECK(fdatasync(fd_) == 0, path_, "cannot sync to disk: " << std::strerror(errno));
  last_sync_ = std::chrono::steady_clock::now();
}

std::vector<std::string> remove_stale_temporaries(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const long pid = temporary_pid(name);
    if (pid <= 0 || process_runs(pid)) continue;
    std::error_code remove_ec;
    if (fs::remove(entry.path(), remove_ec)) removed.push_back(name);
  }
  return removed;
}

void rename_all(const std::vector<std::pair<std::string, std::string>>& moves) {
  for (size_t i = 0; i < moves.size(); ++i) {
    std::error_code ec;
    fs::rename(moves[i].first, moves[i].second, ec);
    if (!ec) continue;
    for (size_t j = i; j < moves.size(); ++j) fs::remove(moves[j].first, ec);
    SESSA_FAIL(moves[i].second, "cannot move the finished file into place: " << ec.message());
  }
  if (moves.empty()) return;
  const fs::path dir = fs::path(moves.back().second).parent_path();
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    ::close(fd);
  }
}

std::string resolve_run_checkpoint(const std::string& file_or_dir, const std::string& flag) {
  std::error_code ec;
  if (fs::is_directory(file_or_dir, ec)) {
    const fs::path latest = fs::path(file_or_dir) / "latest.safetensors";
    if (fs::is_symlink(latest, ec) && !fs::exists(latest, ec)) {
      std::string newest;
      for (const fs::directory_entry& entry : fs::directory_iterator(file_or_dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind("ckpt_", 0) == 0 && entry.path().extension() == ".safetensors" && name > newest) newest = name;
      }
      SESSA_FAIL(flag, latest.string() << " is a dangling link: its target '" << fs::read_symlink(latest, ec).string()
                                       << "' does not exist"
                                       << (newest.empty() ? std::string(" and no ckpt_*.safetensors is left")
                                                          : "; the newest checkpoint present is " +
                                                                (fs::path(file_or_dir) / newest).string() +
                                                                " (give that file instead)"));
    }
  } else if (fs::is_symlink(file_or_dir, ec) && !fs::exists(file_or_dir, ec)) {
    SESSA_FAIL(flag, "'" << file_or_dir << "' is a dangling link: its target '"
                         << fs::read_symlink(file_or_dir, ec).string() << "' does not exist");
  }
  try {
    return nn::resolve_checkpoint(file_or_dir);
  } catch (const std::exception& e) {
    throw Error(flag + ": " + e.what());
  }
}

}  // namespace sessa::apps
