// FileOps: the file operations that commit state (checkpoint files, MANIFEST, LATEST, garbage collection), behind
// one seam so tests can fail any single operation, as a crash or a full disk at that instant would (LevelDB's
// fault-injection Env). The real implementation fsyncs every file it writes. Every failure throws stride::Error
// naming the path and the OS error.
//
// Thread-safety: the real implementation keeps no state and may be called from any thread; test doubles say
// their own rules.
#pragma once

#include <memory>
#include <string>

namespace stride::storage {

class FileOps {
 public:
  virtual ~FileOps() = default;
  virtual void write_file(const std::string& path, const std::string& bytes);  // create/truncate, write, fsync
  virtual void rename(const std::string& from, const std::string& to);
  virtual void fsync_dir(const std::string& dir);
  virtual void make_dir(const std::string& dir);
  virtual void remove_all(const std::string& path);
};

// The process's real FileOps (shared, stateless).
std::shared_ptr<FileOps> real_file_ops();

}  // namespace stride::storage
