// One thread that runs posted tasks in order: the MPI back-end makes every MPI call on it (MPI is initialised
// there with MPI_THREAD_FUNNELED, the cheapest thread level), and each local rank runs its collectives on one.
//
// Shutdown never hangs: stop() lets queued tasks finish for a grace period, then abandons the thread if a task is
// stuck (a blocking collective whose peer died); the process is expected to exit soon after. The queue state is
// shared with the thread, so an abandoned thread never touches freed memory.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace stride::comm {

class OwnerThread {
 public:
  OwnerThread() : state_(std::make_shared<State>()) {
    thread_ = std::thread([s = state_] { loop(*s); });
  }
  ~OwnerThread() { stop(std::chrono::seconds(10)); }
  OwnerThread(const OwnerThread&) = delete;
  OwnerThread& operator=(const OwnerThread&) = delete;

  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->tasks.push_back(std::move(task));
      state_->queued.fetch_add(1, std::memory_order_release);
    }
    state_->cv.notify_all();
  }

  // Queues `last_task` (if any) after the others, waits at most `grace` for the queue to drain, then abandons
  // the thread. Returns false when it had to be abandoned.
  bool stop(std::chrono::milliseconds grace, std::function<void()> last_task = {}) {
    std::unique_lock<std::mutex> lock(state_->mu);
    if (state_->stopping) return !abandoned_;
    state_->stopping = true;
    if (last_task) state_->tasks.push_back(std::move(last_task));
    state_->cv.notify_all();
    if (!state_->cv.wait_for(lock, grace, [&] { return state_->exited; })) {
      abandoned_ = true;
      lock.unlock();
      thread_.detach();
      return false;
    }
    lock.unlock();
    thread_.join();
    return true;
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> tasks;
    std::atomic<uint64_t> queued{0};  // tasks ever posted, for the lock-free spin below
    bool stopping = false, exited = false;
  };

  static void loop(State& s) {
    std::unique_lock<std::mutex> lock(s.mu);
    uint64_t taken = 0;
    for (;;) {
      if (s.tasks.empty() && !s.stopping) {
        // Collectives come in bursts (gradient buckets, SyncBN layers): poll briefly before sleeping, which saves
        // the ~10-20 us of a condition-variable wake-up per collective.
        lock.unlock();
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
        while (s.queued.load(std::memory_order_acquire) == taken && std::chrono::steady_clock::now() < until) {
          std::this_thread::yield();
        }
        lock.lock();
      }
      s.cv.wait(lock, [&] { return !s.tasks.empty() || s.stopping; });
      if (s.tasks.empty()) break;
      auto task = std::move(s.tasks.front());
      s.tasks.pop_front();
      ++taken;
      lock.unlock();
      task();  // tasks report their own errors (through their Work)
      task = nullptr;
      lock.lock();
    }
    s.exited = true;
    s.cv.notify_all();
  }

  std::shared_ptr<State> state_;
  bool abandoned_ = false;
  std::thread thread_;
};

}  // namespace stride::comm
