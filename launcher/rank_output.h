// What `stride launch` shows of its ranks' output. mpirun (--tag-output: "[1,R]<stdout>:text") or srun (--label:
// "R: text") append the ranks' output to RUN/logs/ranks.log, which outlives the launcher (a killed launcher loses
// nothing of the job's own messages); this reader follows the file on a thread of its own and shows:
//   - rank 0's progress lines (marked by the trainer, see kProgressMarker) as ONE live line for the job when the
//     launcher's stdout is a terminal, and as plain lines otherwise (no carriage returns or escape codes);
//   - other lines whole, rank 0's as they are and other ranks' after "[rank R] ";
//   - mpirun's and srun's own lines as they are.
// Thread-safety: construct and destroy on one thread; print_line() may be called from any thread.
#pragma once

#include <atomic>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace stride::launcher {

// The trainer starts a progress line with this when STRIDE_PROGRESS=tagged (set by the launcher).
constexpr const char* kProgressMarker = "@progress ";

class RankOutput {
 public:
  // `live`: render progress as a live line (the launcher's stdout is a terminal).
  explicit RankOutput(bool live);
  ~RankOutput();
  RankOutput(const RankOutput&) = delete;
  RankOutput& operator=(const RankOutput&) = delete;

  // Called on the reader thread with every raw line (the launcher looks for mpirun's verdict on a dead rank).
  // Set before follow().
  void set_line_hook(std::function<void(const std::string&)> hook) { hook_ = std::move(hook); }
  // Starts following `fd`, a file the job appends to, from its current offset; closed by finish(). One at a time.
  void follow(int fd);
  // Once the job's processes are gone: shows what is left in the file and stops following it.
  void finish();
  // One line of the launcher's own (ends a live line first).
  void print_line(const std::string& line, bool to_stderr = false);

  // Exposed for tests: how one raw line is shown ("" when it is a progress line, which goes to `progress`).
  static std::string render(const std::string& raw, std::string* progress, bool* is_stderr);

 private:
  void run(int fd);
  void emit(const std::string& raw);

  const bool live_;
  std::function<void(const std::string&)> hook_;
  std::atomic<bool> finishing_{false};
  std::mutex mu_;
  bool live_line_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace stride::launcher
