#include "trainer/checkpoint_writer.h"

#include <pthread.h>

#include <chrono>
#include <cstdlib>
#include <optional>

#include "common/env.h"
#include "common/error.h"
#include "trainer/safetensors.h"

namespace stride::trainer {

NamedTensors snapshot_to_host(const NamedTensors& tensors) {
  NamedTensors copy;
  std::optional<torch::Device> cuda;
  for (const auto& [name, t] : tensors) {
    if (t.is_cuda()) {
      auto h = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
      h.copy_(t.contiguous(), /*non_blocking=*/true);
      copy[name] = h;
      cuda = t.device();
    } else {
      copy[name] = t.detach().clone();
    }
  }
  if (cuda) torch::cuda::synchronize(cuda->index());
  return copy;
}

CheckpointWriter::CheckpointWriter(std::string checkpoint_root, Sink sink, std::shared_ptr<FileOps> ops)
    : root_(std::move(checkpoint_root)), sink_(std::move(sink)), ops_(std::move(ops)) {
  fault_delay_s_ = env_number("STRIDE_FAULT_CHECKPOINT_DELAY_S", 0.0, 3600.0).value_or(0.0);
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "stride-ckpt");
    run();
  });
}

CheckpointWriter::~CheckpointWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CheckpointWriter::submit(CheckpointJob job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_all();
}

void CheckpointWriter::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return jobs_.empty() && !busy_; });
}

size_t CheckpointWriter::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.size() + (busy_ ? 1 : 0);
}

std::pair<uint64_t, double> CheckpointWriter::last_write() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {last_bytes_, last_seconds_};
}

void CheckpointWriter::run() {
  for (;;) {
    CheckpointJob job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_ and nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
    }
    const auto t0 = std::chrono::steady_clock::now();
    proto::CheckpointReport report;
    report.set_step(job.step);
    uint64_t bytes = 0;
    try {
      storage::prepare_step_dir(*ops_, root_, job.step);
      const std::string dir = storage::step_dir(root_, job.step);
      for (auto& [name, tensors] : job.files) {
        if (fault_delay_s_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(fault_delay_s_));
        const std::string encoded = encode_safetensors(tensors);
        tensors.clear();  // free the snapshot as soon as it is encoded
        *report.add_files() = storage::write_checkpoint_file(*ops_, dir, name, encoded);
        bytes += encoded.size();
      }
      if (job.manifest) *report.mutable_manifest() = *job.manifest;
      report.set_ok(true);
    } catch (const std::exception& e) {
      report.set_ok(false);
      report.set_error(e.what());
      report.clear_files();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report.set_write_seconds(secs);
    sink_(std::move(report));
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      last_bytes_ = bytes;
      last_seconds_ = secs;
    }
    cv_.notify_all();
  }
}

}  // namespace stride::trainer
