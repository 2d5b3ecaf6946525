#include "storage/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace stride::storage {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(concat("cannot open ", path, ": ", std::strerror(errno)));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw Error(concat("read of ", path, " failed"));
  return buf.str();
}

void write_file_fsync(const std::string& path, const std::string& bytes, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw Error(concat("cannot create ", path, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      throw Error(concat("write to ", path, " failed after ", done, " of ", bytes.size(),
                         " bytes: ", std::strerror(err), err == ENOSPC ? " (disk full)" : ""));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(concat("fsync of ", path, " failed: ", std::strerror(err)));
  }
  if (::close(fd) != 0) throw Error(concat("close of ", path, " failed: ", std::strerror(errno)));
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(concat("cannot open directory ", dir, ": ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(concat("fsync of directory ", dir, " failed: ", std::strerror(errno)));
}

void write_file_atomic(const std::string& path, const std::string& bytes, mode_t mode) {
  const std::filesystem::path target(path);
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  const std::string tmp = (target.parent_path() / ("." + target.filename().string() + ".tmp")).string();
  ::unlink(tmp.c_str());  // a temporary left by a crash keeps its own mode: create it anew with `mode`
  try {
    write_file_fsync(tmp, bytes, mode);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(concat("rename ", tmp, " -> ", path, " failed: ", std::strerror(err)));
  }
  fsync_dir(dir);
}

bool pread_full(int fd, void* buf, size_t n, uint64_t offset) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

}  // namespace stride::storage
