// run_lock.cpp - flock on <dir>/run.lock holding "pid host app" (run_lock.h).
#include "apps/common/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "tensor/error.h"

namespace sessa::apps {

namespace {

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return "unknown-host";
  return host;
}

std::string read_all(int fd) {
  std::string text;
  char buf[512];
  if (lseek(fd, 0, SEEK_SET) < 0) return text;
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

RunLock::RunLock(const std::string& dir, const std::string& flag, const std::string& app) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  SESSA_CHECK(!ec && std::filesystem::is_directory(dir), flag,
              "cannot create the run directory '" << dir << "'" << (ec ? ": " + ec.message() : ""));
  path_ = (std::filesystem::path(dir) / "run.lock").string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SESSA_CHECK(fd_ >= 0, flag, "cannot open the lock file " << path_ << ": " << std::strerror(errno));
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const std::string holder = read_all(fd_);
    ::close(fd_);
    fd_ = -1;
    SESSA_CHECK(error == EWOULDBLOCK, flag, "cannot lock " << path_ << ": " << std::strerror(error));
    // "pid host app": say it in words.
    std::string pid, host, holder_app;
    std::istringstream(holder) >> pid >> host >> holder_app;
    const std::string who = pid.empty()
                                ? std::string("another process")
                                : (holder_app.empty() ? "process" : holder_app) + " (pid " + pid + " on " + host + ")";
    const std::string stop = pid.empty() ? std::string() : " (kill -TERM " + pid + " checkpoints and exits)";
    SESSA_FAIL(flag, "the run directory '" << dir << "' is in use by " << who << ", which holds " << path_
                                           << "; wait for it to finish, stop it" << stop
                                           << ", or choose another directory");
  }
  // Locked: anything still in the file was written by a process that died holding it.
  reclaimed_from_ = read_all(fd_);
  const std::string mine = std::to_string(::getpid()) + " " + host_name() + " " + app + "\n";
  if (ftruncate(fd_, 0) != 0 || pwrite(fd_, mine.data(), mine.size(), 0) != ssize_t(mine.size()) || fsync(fd_) != 0) {
    const int error = errno;
    ::close(fd_);
    fd_ = -1;
    SESSA_FAIL(flag, "cannot write the lock file " << path_ << ": " << std::strerror(error));
  }
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  if (ftruncate(fd_, 0) != 0) { /* the lock still goes with the descriptor */
  }
  ::close(fd_);  // releases the flock
}

}  // namespace sessa::apps
