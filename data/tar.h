// POSIX ustar archives, the container of WebDataset shards. The writer emits plain ustar members (mode 0644,
// mtime 0, so shards are byte-for-byte reproducible); the reader understands ustar, GNU long names and pax
// `path` and `size` records (a pax size overrides the header's size field: members over 8 GiB), which is what
// GNU tar and Python's tarfile produce.
//
// TarWriter is single-threaded. scan_tar is thread-safe for distinct calls.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace stride::data {

constexpr uint64_t kTarBlock = 512;

struct TarMember {
  std::string name;
  uint64_t data_offset = 0;  // where the member's bytes start in the archive
  uint64_t size = 0;
};

class TarWriter {
 public:
  // Creates (truncates) `path`. Throws stride::Error naming the path on failure.
  explicit TarWriter(const std::string& path);
  ~TarWriter();
  TarWriter(const TarWriter&) = delete;
  TarWriter& operator=(const TarWriter&) = delete;

  // Appends a regular file member; returns where its data starts. Names longer than ustar allows are an error.
  uint64_t add(const std::string& name, const void* data, uint64_t size);
  // Writes the end-of-archive marker, flushes and fsyncs. Returns the archive size.
  uint64_t finish();

 private:
  void write(const void* data, size_t n);
  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t offset_ = 0;
};

// Builds the 512-byte ustar header for a regular file (exposed for tests).
std::string ustar_header(const std::string& name, uint64_t size);

// Lists the regular-file members of the archive at `path` (reading only headers). Throws stride::Error naming
// the file and offset on a bad header checksum, a malformed size (header field or pax `size=` record), a
// malformed pax record, or a member running past the end of the file.
std::vector<TarMember> scan_tar(const std::string& path);

// WebDataset naming: "dir/abc.seg.jpg" -> key "dir/abc", extension "seg.jpg" (split at the first dot of the
// file name).
void split_key(const std::string& member_name, std::string* key, std::string* ext);

}  // namespace stride::data
