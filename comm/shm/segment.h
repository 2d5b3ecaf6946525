// Shared-memory segments for comm/shm: memfd files that the owner maps and its peers open through
// /proc/PID/fd/FD. Each segment is one header page (magic, nonce, owner, id, size; the rest of the page is the
// user's, e.g. a control block) followed by the data. No names: nothing outlives the processes.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace stride::comm::shm {

constexpr int64_t kHeaderBytes = 4096;  // every segment: one header page, then the data
constexpr int64_t kUserOffset = 256;    // where the owner's own use of the header page may start

struct SegmentHeader {
  uint64_t magic;
  uint64_t nonce;
  int64_t owner;
  int64_t id;
  int64_t data_bytes;
};

// A mapped segment (unmapped when the last reference goes).
struct Mapping {
  void* base = MAP_FAILED;
  size_t bytes = 0;
  int64_t data_bytes = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();
  char* data() const { return static_cast<char*>(base) + kHeaderBytes; }
  SegmentHeader* header() const { return static_cast<SegmentHeader*>(base); }
  void* user() const { return static_cast<char*>(base) + kUserOffset; }  // the header page past the header
};

// An owned file descriptor.
struct Fd {
  int fd = -1;
  Fd() = default;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
};

// A new memfd segment of `data_bytes` with its memory reserved (so a full memory cgroup fails here, not with
// SIGBUS later); `fd` holds the file until the peers have opened it. Throws Error.
std::shared_ptr<Mapping> create_segment(int64_t data_bytes, uint64_t nonce, int owner, int64_t id, Fd& fd);

// Rank `owner`'s segment, through /proc/PID/fd/FD; its header must carry what the owner announced (else a
// different pid namespace or a recycled pid answered). Throws Error.
std::shared_ptr<Mapping> open_segment(int pid, int peer_fd, uint64_t nonce, int owner, int64_t id, int64_t data_bytes);

uint64_t random_nonce();

// False once the process has exited (gone, or a zombie).
bool pid_alive(int pid);

}  // namespace stride::comm::shm
