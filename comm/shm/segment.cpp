#include "comm/shm/segment.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "common/error.h"

namespace stride::comm::shm {
namespace {

constexpr uint64_t kMagic = 0x3148534544495254ULL;  // "TRIDESH1"

std::string errno_text(int e = errno) { return std::strerror(e); }

size_t segment_bytes(int64_t data_bytes) {
  const int64_t page = 4096;
  return static_cast<size_t>(kHeaderBytes + std::max<int64_t>(page, (data_bytes + page - 1) / page * page));
}

}  // namespace

Mapping::~Mapping() {
  if (base != MAP_FAILED) ::munmap(base, bytes);
}

Fd::~Fd() {
  if (fd >= 0) ::close(fd);
}

std::shared_ptr<Mapping> create_segment(int64_t data_bytes, uint64_t nonce, int owner, int64_t id, Fd& fd) {
  const size_t bytes = segment_bytes(data_bytes);
  fd.fd = static_cast<int>(::syscall(SYS_memfd_create, "stride-shm", MFD_CLOEXEC));
  if (fd.fd < 0) throw Error(concat("memfd_create: ", errno_text()));
  if (::ftruncate(fd.fd, static_cast<off_t>(bytes)) != 0) throw Error(concat("ftruncate: ", errno_text()));
  if (const int rc = ::posix_fallocate(fd.fd, 0, static_cast<off_t>(bytes)); rc != 0) {
    throw Error(concat("cannot reserve ", bytes, " bytes of shared memory: ", errno_text(rc)));
  }
  auto map = std::make_shared<Mapping>();
  map->base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
  if (map->base == MAP_FAILED) throw Error(concat("mmap of ", bytes, " bytes: ", errno_text()));
  map->bytes = bytes;
  map->data_bytes = data_bytes;
  *map->header() = SegmentHeader{kMagic, nonce, owner, id, data_bytes};
  return map;
}

std::shared_ptr<Mapping> open_segment(int pid, int peer_fd, uint64_t nonce, int owner, int64_t id, int64_t data_bytes) {
  const std::string path = concat("/proc/", pid, "/fd/", peer_fd);
  Fd fd;
  fd.fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd.fd < 0) throw Error(concat("cannot open rank ", owner, "'s segment ", path, ": ", errno_text()));
  auto map = std::make_shared<Mapping>();
  const size_t bytes = segment_bytes(data_bytes);
  map->base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
  if (map->base == MAP_FAILED) throw Error(concat("mmap of ", path, ": ", errno_text()));
  map->bytes = bytes;
  map->data_bytes = data_bytes;
  const SegmentHeader& h = *map->header();
  if (h.magic != kMagic || h.nonce != nonce || h.owner != owner || h.id != id || h.data_bytes != data_bytes) {
    throw Error(
        concat(path, " is not the segment rank ", owner, " announced (are the ranks in different pid namespaces?)"));
  }
  return map;
}

uint64_t random_nonce() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ (static_cast<uint64_t>(::getpid()) << 16) ^
         static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

bool pid_alive(int pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat(concat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return true;  // cannot tell: trust kill()
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return true;
  const char state = line[close + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace stride::comm::shm
