// TensorBoard event files written without TensorFlow: TFRecord framing (length, masked CRC32C of the length,
// payload, masked CRC32C of the payload) around Event protos (proto/tensorboard.proto). Not thread-safe; the
// training loop owns the writer.
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace stride::trainer {

class TensorBoardWriter {
 public:
  // Creates DIR/events.out.tfevents.<seconds>.<host> and writes the file_version record.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  void scalar(const std::string& tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::FILE* file_ = nullptr;
};

struct ScalarEvent {
  std::string tag;
  double value = 0.0;
  int64_t step = 0;
};
// Reads every scalar of an event file, verifying both CRCs of every record (tests, `stride ckpt`).
std::vector<ScalarEvent> read_tensorboard_scalars(const std::string& path);

}  // namespace stride::trainer
