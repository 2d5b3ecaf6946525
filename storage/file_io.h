// Whole-file I/O with the durability rules Stride relies on (see Note [Checkpoint commit] in
// storage/checkpoint_files.h). Every failure throws stride::Error naming the path and the OS error; ENOSPC says
// "disk full". Thread-safe for distinct paths.
#pragma once

#include <sys/types.h>
#include <cstddef>

#include <cstdint>
#include <string>

namespace stride::storage {

// The whole file.
std::string read_file(const std::string& path);
// Creates or truncates `path`, writes every byte, fsyncs and closes it. A file it creates gets `mode` (less the
// umask); an existing file keeps its mode.
void write_file_fsync(const std::string& path, const std::string& bytes, mode_t mode = 0644);
// fsync of a directory, making renames and creations in it durable.
void fsync_dir(const std::string& dir);
// Replaces `path` atomically: a hidden temporary in the same directory, fsync, rename, fsync the directory. The
// temporary is created afresh with `mode` (less the umask), so a secret written with 0600 is never readable by
// others, not even for a moment.
void write_file_atomic(const std::string& path, const std::string& bytes, mode_t mode = 0644);
// Reads exactly n bytes at `offset` (retrying short reads and EINTR); false at end of file or on error (errno
// says which).
bool pread_full(int fd, void* buf, size_t n, uint64_t offset);

}  // namespace stride::storage
