// file_util.cpp - POSIX implementation of atomic file writing.
#include "data/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"

namespace sessa::data {

namespace {

std::string unique_temp_path(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

// Makes a completed rename durable; best effort, since some file systems
// refuse fsync on directories.
void sync_parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = ".";
  const int dir_fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return;
  ::fsync(dir_fd);
  ::close(dir_fd);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)), temp_path_(unique_temp_path(path_)) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("creating temporary file '" + temp_path_ + "'", errno);
  temp_exists_ = true;
}

AtomicFileWriter::~AtomicFileWriter() { discard(); }

void AtomicFileWriter::fail(const std::string& action, int error_number) const {
  throw Error("cannot write " + path_ + ": " + action + " failed: " + std::strerror(error_number));
}

void AtomicFileWriter::fail_and_discard(const std::string& action) {
  const int error_number = errno;
  discard();
  fail(action, error_number);
}

void AtomicFileWriter::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (temp_exists_) ::unlink(temp_path_.c_str());
  temp_exists_ = false;
}

void AtomicFileWriter::write(const void* data, size_t size) {
  if (fd_ < 0) throw Error("cannot write " + path_ + ": writer is closed");
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd_, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) fail_and_discard("write");
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) throw Error("cannot write " + path_ + ": writer is closed");
  if (::fsync(fd_) != 0) fail_and_discard("fsync");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_and_discard("close");
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) fail_and_discard("rename");
  temp_exists_ = false;
  sync_parent_directory(path_);
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  AtomicFileWriter writer(path);
  writer.write(text.data(), text.size());
  writer.commit();
}

}  // namespace sessa::data
