// run_lock.h - One process at a time in a run directory.
//
// RunLock takes an advisory lock (flock) on <dir>/run.lock and writes "pid host
// app" into it. A second process asking for the same directory fails at once with
// an error naming the holder. The kernel drops a flock when its process dies, so a
// lock left by a killed run is free again: the file still names the dead holder,
// and the new process reports that it reclaimed it. On release the file is emptied
// (not removed: removing would let two processes lock two different files).
#pragma once

#include <string>

namespace sessa::apps {

class RunLock {
 public:
  // Creates `dir` when missing. `flag` names the flag that chose the directory
  // (--out, --resume) in the error. Throws sessa::Error when another process holds it.
  RunLock(const std::string& dir, const std::string& flag, const std::string& app);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  const std::string& path() const { return path_; }
  // The previous holder named in the file when it was reclaimed from a dead process ("" otherwise).
  const std::string& reclaimed_from() const { return reclaimed_from_; }

 private:
  std::string path_, reclaimed_from_;
  int fd_ = -1;
};

}  // namespace sessa::apps
