#include "comm/local/local_communicator.h"

#include <atomic>

#include "comm/owner_thread.h"

namespace stride::comm {
namespace {

const char* kind_name(LocalWorld::Kind k) {
  switch (k) {
    case LocalWorld::Kind::kAllreduce:
      return "allreduce";
    case LocalWorld::Kind::kBroadcast:
      return "broadcast";
    case LocalWorld::Kind::kAllgather:
      return "allgather";
    case LocalWorld::Kind::kBarrier:
      return "barrier";
  }
  return "?";
}

class LocalCommunicator : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalWorld> world, int rank) : world_(std::move(world)), rank_(rank) {}
  ~LocalCommunicator() override { owner_.stop(std::chrono::seconds(2)); }
  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  std::string backend() const override { return world_->size() == 1 ? "single" : "local"; }
  std::string host() const override { return "local"; }

  WorkPtr allreduce(torch::Tensor t, ReduceOp op) override {
    check_tensor("allreduce", t);
    if (op == ReduceOp::kAvg && !t.is_floating_point()) {
      throw Error(concat("allreduce avg on ", describe(), ": needs a floating-point tensor, got ", t.scalar_type()));
    }
    return submit({LocalWorld::Kind::kAllreduce, op, 0, t, t});
  }
  WorkPtr broadcast(torch::Tensor t, int root) override {
    check_tensor("broadcast", t);
    STRIDE_CHECK(root >= 0 && root < size(), "broadcast root ", root, " of ", size(), " ranks");
    return submit({LocalWorld::Kind::kBroadcast, ReduceOp::kSum, root, t, t});
  }
  WorkPtr allgather(torch::Tensor in, torch::Tensor out) override {
    check_tensor("allgather", in);
    check_tensor("allgather", out);
    STRIDE_CHECK_EQ(out.numel(), in.numel() * size(), "allgather output size on ", describe());
    return submit({LocalWorld::Kind::kAllgather, ReduceOp::kSum, 0, in, out});
  }
  WorkPtr barrier() override { return submit({LocalWorld::Kind::kBarrier, ReduceOp::kSum, 0, {}, {}}); }

 private:
  WorkPtr submit(LocalWorld::Entry e) {
    const uint64_t seq = next_seq_++;
    auto work = std::make_shared<HostWork>(
        concat(kind_name(e.kind), " #", seq, " (", e.input.defined() ? e.input.numel() : 0, " elements) on ",
               describe()),
        timeout() + std::chrono::seconds(2));  // the world's own timeout fires first and names the missing ranks
    owner_.post([world = world_, rank = rank_, seq, e = std::move(e), work, timeout = timeout()] {
      try {
        work->start();
        world->run(rank, seq, e, timeout);
        work->finish();
      } catch (...) {
        work->finish(std::current_exception());
      }
    });
    return work;
  }

  std::shared_ptr<LocalWorld> world_;
  const int rank_;
  std::atomic<uint64_t> next_seq_{0};
  OwnerThread owner_;
};

}  // namespace

std::shared_ptr<LocalWorld> LocalWorld::create(int size) {
  STRIDE_CHECK(size >= 1, "a local world needs at least one rank");
  return std::shared_ptr<LocalWorld>(new LocalWorld(size));
}

std::shared_ptr<Communicator> LocalWorld::communicator(int rank) {
  STRIDE_CHECK(rank >= 0 && rank < size_, "rank ", rank, " of a local world of ", size_);
  return std::make_shared<LocalCommunicator>(shared_from_this(), rank);
}

void LocalWorld::kill(int rank) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead_.at(static_cast<size_t>(rank)) = true;
  }
  cv_.notify_all();
}

void LocalWorld::complete(uint64_t seq, Slot& slot) {
  torch::NoGradGuard no_grad;
  const Entry& first = *slot.entries[0];
  for (int r = 1; r < size_; ++r) {
    const Entry& e = *slot.entries[static_cast<size_t>(r)];
    const int64_t n0 = first.input.defined() ? first.input.numel() : 0;
    const int64_t n = e.input.defined() ? e.input.numel() : 0;
    if (e.kind != first.kind || n != n0 || (n > 0 && e.input.scalar_type() != first.input.scalar_type()) ||
        e.root != first.root || e.op != first.op) {
      throw CommError(concat("collective #", seq, " mismatch: rank 0 called ", kind_name(first.kind), " of ", n0,
                             " elements, rank ", r, " called ", kind_name(e.kind), " of ", n,
                             " elements (ranks must issue the same collectives in the same order)"));
    }
  }
  switch (first.kind) {
    case Kind::kBarrier:
      break;
    case Kind::kBroadcast: {
      auto src = slot.entries[static_cast<size_t>(first.root)]->input.clone();
      for (auto& e : slot.entries) e->output.copy_(src);
      break;
    }
    case Kind::kAllgather: {
      std::vector<torch::Tensor> parts;
      for (auto& e : slot.entries) parts.push_back(e->input.reshape({-1}));
      auto all = torch::cat(parts);
      for (auto& e : slot.entries) e->output.view({-1}).copy_(all);
      break;
    }
    case Kind::kAllreduce: {
      // Accumulate in at least float32 so half/bfloat16 sums are as exact as a real back-end's.
      const bool low = first.input.scalar_type() == torch::kHalf || first.input.scalar_type() == torch::kBFloat16;
      auto acc = low ? first.input.to(torch::kFloat) : first.input.clone();
      for (size_t r = 1; r < slot.entries.size(); ++r) {
        const auto& x = slot.entries[r]->input;
        switch (first.op) {
          case ReduceOp::kSum:
          case ReduceOp::kAvg:
            acc.add_(x.to(acc.scalar_type()));
            break;
          case ReduceOp::kMax:
            acc = torch::maximum(acc, x.to(acc.scalar_type()));
            break;
          case ReduceOp::kMin:
            acc = torch::minimum(acc, x.to(acc.scalar_type()));
            break;
        }
      }
      if (first.op == ReduceOp::kAvg) acc.div_(size_);
      for (auto& e : slot.entries) e->output.copy_(acc);
      break;
    }
  }
}

void LocalWorld::run(int rank, uint64_t seq, const Entry& entry, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const std::string what = concat(kind_name(entry.kind), " #", seq, " on local rank ", rank, "/", size_);
  if (dead_[static_cast<size_t>(rank)]) throw CommError(concat(what, ": this rank was killed"));
  Slot& slot = slots_[seq];
  if (slot.entries.empty()) slot.entries.resize(static_cast<size_t>(size_));
  slot.entries[static_cast<size_t>(rank)] = entry;
  if (++slot.arrived == size_ && !slot.done) {
    try {
      complete(seq, slot);
    } catch (...) {
      slot.error = std::current_exception();
    }
    slot.done = true;
    cv_.notify_all();
  }
  std::string missing_dead;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const bool finished = cv_.wait_until(lock, deadline, [&] {
    if (slot.done) return true;
    for (int r = 0; r < size_; ++r) {
      if (dead_[static_cast<size_t>(r)] && !slot.entries[static_cast<size_t>(r)]) {
        missing_dead = concat(r);
        return true;
      }
    }
    return false;
  });
  std::exception_ptr error = slot.error;
  if (!slot.done) {
    // Give up; later arrivals fail fast instead of computing into our tensors.
    std::string missing;
    for (int r = 0; r < size_; ++r) {
      if (!slot.entries[static_cast<size_t>(r)]) missing += concat(missing.empty() ? "" : ", ", r);
    }
    error = std::make_exception_ptr(CommError(
        finished ? concat(what, ": peer rank ", missing_dead, " died before joining")
                 : concat(what, " timed out after ", timeout.count() / 1000.0, " s waiting for rank(s) ", missing)));
    slot.error = error;
    slot.done = true;
    cv_.notify_all();
  }
  if (++slot.left == slot.arrived && slot.arrived == size_) slots_.erase(seq);
  if (error) std::rethrow_exception(error);
}

}  // namespace stride::comm
