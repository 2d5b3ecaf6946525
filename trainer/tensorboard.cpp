#include "trainer/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "proto/tensorboard.pb.h"
#include "storage/crc32c.h"

namespace stride::trainer {
namespace {

uint32_t masked_crc(const void* data, size_t n) {
  const uint32_t crc = storage::crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  std::filesystem::create_directories(dir);
  path_ = concat(dir, "/events.out.tfevents.", static_cast<int64_t>(now_seconds()), ".", host);
  file_ = std::fopen(path_.c_str(), "ab");
  if (!file_) throw Error(concat("cannot create ", path_, ": ", std::strerror(errno)));
  tensorboard::Event e;
  e.set_wall_time(now_seconds());
  e.set_file_version("brain.Event:2");
  write_record(e.SerializeAsString());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& payload) {
  const uint64_t len = payload.size();
  char header[12];
  std::memcpy(header, &len, 8);  // little endian on every platform we build for
  const uint32_t len_crc = masked_crc(header, 8);
  std::memcpy(header + 8, &len_crc, 4);
  const uint32_t data_crc = masked_crc(payload.data(), payload.size());
  if (std::fwrite(header, 1, 12, file_) != 12 ||
      std::fwrite(payload.data(), 1, payload.size(), file_) != payload.size() ||
      std::fwrite(&data_crc, 1, 4, file_) != 4) {
    throw Error(concat("write to ", path_, " failed: ", std::strerror(errno)));
  }
}

void TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
  tensorboard::Event e;
  e.set_wall_time(now_seconds());
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(e.SerializeAsString());
}

void TensorBoardWriter::flush() { std::fflush(file_); }

std::vector<ScalarEvent> read_tensorboard_scalars(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(concat("cannot open ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string bytes = buf.str();
  std::vector<ScalarEvent> out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (pos + 12 > bytes.size()) throw Error(concat(path, ": truncated record header at ", pos));
    uint64_t len;
    uint32_t len_crc, data_crc;
    std::memcpy(&len, bytes.data() + pos, 8);
    std::memcpy(&len_crc, bytes.data() + pos + 8, 4);
    if (len_crc != masked_crc(bytes.data() + pos, 8)) throw Error(concat(path, ": bad length CRC at ", pos));
    if (pos + 12 + len + 4 > bytes.size()) throw Error(concat(path, ": truncated record at ", pos));
    std::memcpy(&data_crc, bytes.data() + pos + 12 + len, 4);
    if (data_crc != masked_crc(bytes.data() + pos + 12, len)) throw Error(concat(path, ": bad data CRC at ", pos));
    tensorboard::Event e;
    if (!e.ParseFromArray(bytes.data() + pos + 12, static_cast<int>(len))) {
      throw Error(concat(path, ": unparsable event at ", pos));
    }
    for (const auto& v : e.summary().value()) out.push_back({v.tag(), v.simple_value(), e.step()});
    pos += 12 + len + 4;
  }
  return out;
}

}  // namespace stride::trainer
