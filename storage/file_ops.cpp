#include "storage/file_ops.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "storage/file_io.h"

namespace stride::storage {
namespace fs = std::filesystem;

void FileOps::write_file(const std::string& path, const std::string& bytes) { write_file_fsync(path, bytes); }

void FileOps::rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw Error(concat("rename ", from, " -> ", to, " failed: ", std::strerror(errno)));
  }
}

void FileOps::fsync_dir(const std::string& dir) { storage::fsync_dir(dir); }

void FileOps::make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(concat("cannot create ", dir, ": ", ec.message()));
}

void FileOps::remove_all(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) throw Error(concat("cannot remove ", path, ": ", ec.message()));
}

std::shared_ptr<FileOps> real_file_ops() {
  static auto ops = std::make_shared<FileOps>();
  return ops;
}

}  // namespace stride::storage
