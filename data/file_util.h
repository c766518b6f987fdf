// file_util.h - Atomic file writing: data goes to a temporary file in the
// destination's directory, is fsync'ed, then renamed over the destination, so
// readers see either the old file or the complete new one, never a partial one.
#pragma once

#include <cstddef>
#include <string>

namespace sessa::data {

// Streams bytes into a temporary file; commit() publishes it at `path`.
// If commit() is never reached (error or exception) the temporary file is
// removed and `path` is left untouched. All errors throw sessa::Error naming
// `path`.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync, close, rename over the destination, fsync the directory

 private:
  [[noreturn]] void fail(const std::string& action, int error_number) const;
  [[noreturn]] void fail_and_discard(const std::string& action);
  void discard();  // closes and removes the temporary file, if any

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool temp_exists_ = false;
};

void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace sessa::data
