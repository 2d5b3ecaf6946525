#include "launcher/rank_output.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

namespace stride::launcher {
namespace {

bool parse_uint(const std::string& s, size_t begin, size_t end) {
  if (begin >= end) return false;
  for (size_t i = begin; i < end; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

}  // namespace

RankOutput::RankOutput(bool live) : live_(live) {}

RankOutput::~RankOutput() {
  finish();
  std::lock_guard<std::mutex> lock(mu_);
  if (live_line_) std::fputc('\n', stdout);
}

void RankOutput::follow(int fd) {
  finish();
  finishing_ = false;
  thread_ = std::thread([this, fd] { run(fd); });
}

void RankOutput::finish() {
  finishing_ = true;
  if (thread_.joinable()) thread_.join();
}

void RankOutput::run(int fd) {
  std::string pending;
  char buf[4096];
  for (;;) {
    const bool last_pass = finishing_;  // read to the end once more after the job is gone
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    if (n == 0) {
      if (last_pass) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
      if (pending[i] != '\n' && pending[i] != '\r') continue;
      if (i > start) emit(pending.substr(start, i - start));
      start = i + 1;
    }
    pending.erase(0, start);
  }
  if (!pending.empty()) emit(pending);
  ::close(fd);
}

std::string RankOutput::render(const std::string& raw, std::string* progress, bool* is_stderr) {
  *is_stderr = false;
  progress->clear();
  int rank = -1;
  std::string text = raw;
  // mpirun --tag-output: "[JOB,RANK]<stdout>:" or "<stderr>:".
  if (!raw.empty() && raw[0] == '[') {
    const size_t comma = raw.find(','), close = raw.find(']');
    if (comma != std::string::npos && close != std::string::npos && comma < close && parse_uint(raw, 1, comma) &&
        parse_uint(raw, comma + 1, close)) {
      const std::string rest = raw.substr(close + 1);
      for (const char* stream : {"<stdout>:", "<stderr>:"}) {
        if (rest.rfind(stream, 0) == 0) {
          rank = std::stoi(raw.substr(comma + 1, close - comma - 1));
          *is_stderr = stream[3] == 'e';
          text = rest.substr(std::strlen(stream));
        }
      }
    }
  } else {
    // srun --label: "RANK: ".
    const size_t colon = raw.find(": ");
    if (colon != std::string::npos && parse_uint(raw, 0, colon)) {
      rank = std::stoi(raw.substr(0, colon));
      text = raw.substr(colon + 2);
    }
  }
  // The escape sequence of a live line from a rank that thought it had a terminal.
  if (text.rfind("\033[K", 0) == 0) text = text.substr(3);
  if (text.rfind(kProgressMarker, 0) == 0) {
    *progress = text.substr(std::strlen(kProgressMarker));
    return "";
  }
  return rank > 0 ? "[rank " + std::to_string(rank) + "] " + text : text;
}

void RankOutput::emit(const std::string& raw) {
  if (hook_) hook_(raw);
  std::string progress;
  bool is_stderr = false;
  const std::string line = render(raw, &progress, &is_stderr);
  if (!progress.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (live_) {
      std::fprintf(stdout, "\r\033[K%s", progress.c_str());
      live_line_ = true;
    } else {
      std::fprintf(stdout, "%s\n", progress.c_str());
    }
    std::fflush(stdout);
    return;
  }
  print_line(line, is_stderr);
}

void RankOutput::print_line(const std::string& line, bool to_stderr) {
  std::lock_guard<std::mutex> lock(mu_);
  if (live_line_) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
    live_line_ = false;
  }
  std::FILE* out = to_stderr ? stderr : stdout;
  std::fprintf(out, "%s\n", line.c_str());
  std::fflush(out);
}

}  // namespace stride::launcher
