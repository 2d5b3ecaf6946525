#include "comm/shm/shm_group.h"

#include "comm/shm/reduce_kernels.h"
#include "comm/shm/segment.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <new>
#include <sstream>
#include <thread>

namespace stride::comm {
namespace {

using Clock = std::chrono::steady_clock;
using shm_kernels::reduce;

using shm::Fd;
using shm::kHeaderBytes;
using shm::kUserOffset;
using shm::Mapping;
using shm::pid_alive;
using shm::random_nonce;

enum Kind : int32_t { kAllreduce = 1, kBroadcast = 2, kAllgather = 3, kBarrier = 4 };

// What a rank is about to do; written before it arrives at the first barrier of a collective, read by its
// peers after it. Two slots (by collective parity): a peer can be at most one collective ahead.
struct Desc {
  int32_t kind;
  int32_t dtype;
  int32_t op;
  int32_t root;
  int64_t numel;
  int64_t segment;  // the shared buffer holding the tensor, or -1: it goes through the staging area
  int64_t offset;   // byte offset of the tensor in that buffer
};

struct Control {
  alignas(64) std::atomic<uint64_t> arrived;  // barriers this rank has reached
  alignas(64) Desc desc[2];
  alignas(64) std::atomic<uint32_t> epoch;  // rank 0's: the futex word every arrival bumps
  std::atomic<uint32_t> sleepers;           // rank 0's: ranks asleep on it
};
static_assert(sizeof(Control) + kUserOffset <= kHeaderBytes, "the control block fits the header page");
Control* control_of(const Mapping& m) { return static_cast<Control*>(m.user()); }
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free,
              "cross-process atomics must be lock-free");

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout = nullptr) {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

const char* kind_name(int32_t kind) {
  switch (kind) {
    case kAllreduce:
      return "allreduce";
    case kBroadcast:
      return "broadcast";
    case kAllgather:
      return "allgather";
    case kBarrier:
      return "barrier";
  }
  return "?";
}

std::string describe(const Desc& d) {
  if (d.kind == kBarrier) return "barrier";
  std::string s = concat(kind_name(d.kind), "(", d.numel, " x ", static_cast<torch::ScalarType>(d.dtype));
  if (d.kind == kAllreduce) s += concat(", ", reduce_op_name(static_cast<ReduceOp>(d.op)));
  if (d.kind == kBroadcast) s += concat(", root ", d.root);
  return s + ")";
}

}  // namespace

struct ShmGroup::Impl {
  ShmBootstrap boot;
  ShmOptions opt;
  int rank = 0, size = 1;
  uint64_t nonce = 0;
  std::vector<std::shared_ptr<Mapping>> control;  // every rank's control segment (this rank's included)
  std::vector<int> pids;
  std::vector<std::weak_ptr<Mapping>> mine;                    // this rank's buffers, by id - 1
  std::vector<std::vector<std::shared_ptr<Mapping>>> buffers;  // [id - 1][rank]: peers' buffers (own: null)
  uint64_t passed = 0;                                         // barriers passed
  uint64_t collectives = 0;                                    // collectives started (picks the Desc slot)
  // Why an earlier collective failed. After a failure the group is unusable, and the caller is expected to end
  // the process (the trainer exits): a peer that arrived late may still write its slice into this rank's buffer.
  std::string broken;
  // The last collective skipped its closing rendezvous (every rank wrote only private memory), so peers may still
  // be reading this rank's staging slot: a collective that writes the whole staging area first waits for them.
  bool readers_pending = false;
  const char* what = "";
  Clock::time_point deadline;
  std::chrono::microseconds spin{0};  // this collective's spin budget
  std::atomic<bool> waiters_spin{false};

  Control* ctl(int p) const { return control_of(*control[static_cast<size_t>(p)]); }
  char* staging(int p) const { return control[static_cast<size_t>(p)]->data(); }
  // Small collectives use half of the staging area, alternating by collective: peers that are still reading the
  // previous collective's half never see it overwritten, which lets those collectives skip their closing
  // rendezvous (one rendezvous per SyncBatchNorm layer and direction instead of two).
  int64_t half() const { return opt.staging_bytes / 2 / 64 * 64; }
  char* slot(int p) const { return staging(p) + static_cast<int64_t>(collectives & 1) * half(); }
  Desc& my_desc() const { return ctl(rank)->desc[collectives & 1]; }
  const Desc& desc(int p) const { return ctl(p)->desc[collectives & 1]; }

  // An allgather whose entries "error ..." make every rank throw the same Error.
  std::vector<std::string> exchange(const std::string& mine_text, const char* step) {
    auto all = boot.allgather(mine_text);
    if (static_cast<int>(all.size()) != size)
      throw Error(concat("shared memory ", step, ": bootstrap returned ", all.size(), " entries"));
    for (int p = 0; p < size; ++p) {
      if (all[static_cast<size_t>(p)].rfind("error ", 0) == 0) {
        throw Error(concat("shared memory ", step, " failed on rank ", p, ": ", all[static_cast<size_t>(p)].substr(6)));
      }
    }
    return all;
  }

  // Creates this rank's segment `id`, maps every peer's; collective.
  std::vector<std::shared_ptr<Mapping>> make_segments(int64_t id, int64_t data_bytes, std::shared_ptr<Mapping>& own,
                                                      const char* step) {
    Fd fd;
    std::string announce;
    try {
      own = shm::create_segment(data_bytes, nonce, rank, id, fd);
      if (id == 0) new (own->user()) Control();
      announce = concat(::getpid(), " ", fd.fd, " ", nonce, " ", data_bytes);
    } catch (const std::exception& e) {
      announce = concat("error ", e.what());
    }
    const auto all = exchange(announce, step);
    std::vector<std::shared_ptr<Mapping>> maps(static_cast<size_t>(size));
    std::string status = "ok";
    try {
      for (int p = 0; p < size; ++p) {
        std::istringstream in(all[static_cast<size_t>(p)]);
        int pid = 0, peer_fd = 0;
        uint64_t peer_nonce = 0;
        int64_t bytes = 0;
        in >> pid >> peer_fd >> peer_nonce >> bytes;
        if (bytes != data_bytes) {
          throw Error(concat("rank ", p, " made a ", bytes, "-byte segment where rank ", rank, " made ", data_bytes,
                             " bytes (the ranks disagree on the buffers)"));
        }
        if (id == 0) pids.push_back(pid);
        if (p == rank) continue;
        maps[static_cast<size_t>(p)] = shm::open_segment(pid, peer_fd, peer_nonce, p, id, data_bytes);
      }
    } catch (const std::exception& e) {
      status = concat("error ", e.what());
    }
    exchange(status, step);  // every peer has mapped this rank's segment: its fd may close
    return maps;
  }

  // ---- waiting ----
  // Every rank's progress lives in its Control (`arrived`: barriers reached).
  // A rank that changes its progress bumps rank 0's epoch and wakes the sleepers; a rank that waits spins for a
  // while, then sleeps on that epoch, checking every poll interval that the ranks it waits for are alive.

  void notify() {
    Control* c0 = ctl(0);
    c0->epoch.fetch_add(1, std::memory_order_seq_cst);
    if (c0->sleepers.load(std::memory_order_seq_cst) != 0) futex(&c0->epoch, FUTEX_WAKE, INT_MAX);
  }

  // Waits until behind(p) is false for every rank p.
  template <typename Behind>
  void wait_for(Behind behind) {
    auto done = [&] {
      for (int p = 0; p < size; ++p) {
        if (behind(p)) return false;
      }
      return true;
    };
    if (done()) return;
    const auto spin_start = Clock::now();
    for (uint32_t i = 1;; ++i) {
      cpu_relax();
      if (done()) return;
      if (i % 64 == 0) {
        const auto now = Clock::now();
        const auto spun = now - spin_start;
        if (spun >= spin || now >= deadline) break;
        if (spun >= std::chrono::microseconds(10)) std::this_thread::yield();  // let a runnable thread have the core
      }
    }
    Control* c0 = ctl(0);
    // Peers are checked a poll interval after the wait began (at once when a long spin already took that
    // long), then every poll interval.
    auto next_check = std::min(spin_start + opt.poll, deadline);
    for (;;) {
      if (Clock::now() >= next_check) {
        check_peers(behind);
        next_check = Clock::now() + opt.poll;
      }
      const uint32_t e = c0->epoch.load(std::memory_order_seq_cst);
      if (done()) return;
      c0->sleepers.fetch_add(1, std::memory_order_seq_cst);
      if (!done()) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(opt.poll).count();
        const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
        futex(&c0->epoch, FUTEX_WAIT, e, &ts);
      }
      c0->sleepers.fetch_sub(1, std::memory_order_seq_cst);
      if (done()) return;
    }
  }

  template <typename Behind>
  void check_peers(Behind behind) {
    std::vector<int> missing;
    for (int p = 0; p < size; ++p) {
      if (!behind(p)) continue;
      if (!pid_alive(pids[static_cast<size_t>(p)])) {
        throw CommError(concat("shared-memory ", what, " on rank ", rank, ": rank ", p, " (pid ",
                               pids[static_cast<size_t>(p)], ") has exited"));
      }
      missing.push_back(p);
    }
    if (Clock::now() >= deadline) {
      std::string list;
      for (int p : missing) list += concat(list.empty() ? "" : ", ", p);
      throw CommError(concat("shared-memory ", what, " on rank ", rank, " did not complete within the timeout: rank",
                             missing.size() == 1 ? " " : "s ", list, " did not arrive"));
    }
  }

  // A barrier.
  void arrive() {
    const uint64_t target = ++passed;
    ctl(rank)->arrived.store(target, std::memory_order_seq_cst);
    notify();
    wait_for([&](int p) { return ctl(p)->arrived.load(std::memory_order_acquire) < target; });
  }

  // ---- collectives ----
  // body(pending): pending is true when the previous collective skipped its closing rendezvous.
  template <typename F>
  void run(const char* name, std::chrono::milliseconds timeout, bool caller_waits, F body) {
    if (!broken.empty()) {
      throw CommError(
          concat("shared-memory ", name, " on rank ", rank, ": an earlier collective failed (", broken, ")"));
    }
    what = name;
    deadline = Clock::now() + timeout;
    spin =
        waiters_spin.load(std::memory_order_relaxed) ? opt.idle_host_spin : (caller_waits ? opt.caller_spin : opt.spin);
    const bool pending = readers_pending;
    readers_pending = false;
    try {
      body(pending);
      ++collectives;
    } catch (const CommError& e) {
      broken = e.what();
      throw;
    }
  }

  void publish(const Desc& d) { my_desc() = d; }

  void validate() const {
    const Desc& m = my_desc();
    for (int p = 0; p < size; ++p) {
      const Desc& d = desc(p);
      if (d.kind != m.kind || d.dtype != m.dtype || d.op != m.op || d.root != m.root || d.numel != m.numel) {
        throw CommError(concat("collective mismatch: rank ", rank, " called ", describe(m), " while rank ", p,
                               " called ", describe(d),
                               " (every rank must issue the same collectives in the same "
                               "order)"));
      }
    }
  }

  // Where rank p's data for elements [off, ...) is, in this process.
  const char* source(int p, int64_t off, int64_t elem) const {
    const Desc& d = desc(p);
    if (d.segment < 0) return staging(p);
    const char* base = p == rank ? mine[static_cast<size_t>(d.segment - 1)].lock()->data()
                                 : buffers[static_cast<size_t>(d.segment - 1)][static_cast<size_t>(p)]->data();
    return base + d.offset + off * elem;
  }

  std::pair<int64_t, int64_t> locate(const torch::Tensor& t) const {
    const char* p = static_cast<const char*>(t.data_ptr());
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (!p || bytes == 0) return {-1, 0};
    for (size_t i = 0; i < mine.size(); ++i) {
      auto m = mine[i].lock();
      if (m && p >= m->data() && p + bytes <= m->data() + m->data_bytes) {
        return {static_cast<int64_t>(i) + 1, p - m->data()};
      }
    }
    return {-1, 0};
  }

  // [lo, hi) of the elements rank q reduces, 16-element aligned.
  std::pair<int64_t, int64_t> slice(int q, int64_t n) const {
    const int64_t per = ((n + size - 1) / size + 15) / 16 * 16;
    return {std::min(n, q * per), std::min(n, (q + 1) * per)};
  }

  int64_t cap(int64_t elem) const { return std::max<int64_t>(1, opt.staging_bytes / elem); }
};

ShmGroup::ShmGroup(ShmBootstrap bootstrap, ShmOptions options) : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.boot = std::move(bootstrap);
  s.opt = options;
  s.rank = s.boot.rank;
  s.size = s.boot.size;
  STRIDE_CHECK(s.size >= 1 && s.rank >= 0 && s.rank < s.size, "shared-memory group: rank ", s.rank, " of ", s.size);
  STRIDE_CHECK_GE(s.opt.staging_bytes, 256, "shared-memory staging bytes");
  s.nonce = random_nonce();
  std::shared_ptr<Mapping> own;
  s.control = s.make_segments(0, s.opt.staging_bytes, own, "setup");
  s.control[static_cast<size_t>(s.rank)] = own;
  s.waiters_spin = s.opt.waiters_spin;
}

ShmGroup::~ShmGroup() = default;

void ShmGroup::set_waiters_spin(bool spin) { impl_->waiters_spin = spin; }
bool ShmGroup::waiters_spin() const { return impl_->waiters_spin; }

bool ShmGroup::supports(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat:
    case torch::kDouble:
    case torch::kHalf:
    case torch::kBFloat16:
    case torch::kLong:
    case torch::kInt:
    case torch::kShort:
    case torch::kChar:
    case torch::kByte:
    case torch::kBool:
      return true;
    default:
      return false;
  }
}

bool ShmGroup::supports(torch::ScalarType dtype, ReduceOp op) {
  if (dtype == torch::kBool || !supports(dtype)) return false;
  return op != ReduceOp::kAvg || c10::isFloatingType(dtype);
}

torch::Tensor ShmGroup::alloc(int64_t numel, torch::ScalarType dtype) {
  auto& s = *impl_;
  STRIDE_CHECK_GE(numel, 0, "shared buffer size");
  const int64_t id = static_cast<int64_t>(s.mine.size()) + 1;
  std::shared_ptr<Mapping> own;
  auto maps = s.make_segments(id, numel * static_cast<int64_t>(c10::elementSize(dtype)), own, "allocation");
  s.mine.push_back(own);
  s.buffers.push_back(std::move(maps));
  // The tensor keeps its mapping alive; the group only remembers it weakly (to recognise the tensor).
  return torch::from_blob(
      own->data(), {numel}, [own](void*) mutable { own.reset(); }, torch::TensorOptions().dtype(dtype));
}

void ShmGroup::allreduce(const torch::Tensor& t, ReduceOp op, std::chrono::milliseconds timeout, bool caller_waits) {
  auto& s = *impl_;
  s.run("allreduce", timeout, caller_waits, [&](bool pending) {
    const int64_t n = t.numel();
    const int64_t elem = static_cast<int64_t>(t.element_size());
    char* data = static_cast<char*>(t.data_ptr());
    const auto [segment, offset] = s.locate(t);
    s.publish(
        Desc{kAllreduce, static_cast<int32_t>(t.scalar_type()), static_cast<int32_t>(op), -1, n, segment, offset});
    const int64_t cap = s.cap(elem);
    const bool staged = segment < 0;
    // Up to one staging slot every rank reduces the whole tensor itself: twice the reads of the split algorithm,
    // and one or two rendezvous fewer (a rendezvous where a rank sleeps costs more than the reads).
    const bool small = n * elem <= s.half();
    if (pending && !small) s.arrive();
    if (staged && n > 0) {
      std::memcpy(small ? s.slot(s.rank) : s.staging(s.rank), data, static_cast<size_t>(std::min(cap, n) * elem));
    }
    s.arrive();
    s.validate();
    std::vector<const char*> src(static_cast<size_t>(s.size));
    if (small) {
      // Every rank reduces everything, into its tensor when that is private, else into its own slot (which no
      // peer reads when the tensor is shared) and copies it back once every peer has read the sources. When every
      // tensor is private nobody writes what a peer reads: no closing rendezvous.
      bool all_staged = true;
      for (int p = 0; p < s.size; ++p) {
        const bool shared = s.desc(p).segment >= 0;
        all_staged = all_staged && !shared;
        src[static_cast<size_t>(p)] = shared ? s.source(p, 0, elem) : s.slot(p);
      }
      char* out = staged ? data : s.slot(s.rank);
      reduce(t.scalar_type(), out, src, n, op, s.size);
      if (all_staged) {
        s.readers_pending = true;
        return;
      }
      s.arrive();
      if (!staged) std::memcpy(data, out, static_cast<size_t>(n * elem));
      return;
    }
    bool all_shared = true;
    for (int p = 0; p < s.size; ++p) all_shared = all_shared && s.desc(p).segment >= 0;
    if (all_shared) {
      // Every source is complete from the start and every rank can write every buffer: each rank reduces its
      // slice of the buffers and stores the result into every rank's buffer in the same pass (per rank: one read
      // of the buffer, one write of it; no gather pass, which would read half of it again). Nobody else touches
      // a rank's slice, so the reads and writes never race. One rendezvous at the end, after which nobody
      // touches this rank's buffer any more.
      const auto [lo, hi] = s.slice(s.rank, n);
      std::vector<char*> dst(static_cast<size_t>(s.size));
      for (int p = 0; p < s.size; ++p) {
        src[static_cast<size_t>(p)] = s.source(p, lo, elem);
        dst[static_cast<size_t>(p)] = const_cast<char*>(src[static_cast<size_t>(p)]);
      }
      if (hi > lo) reduce(t.scalar_type(), dst, src, hi - lo, op, s.size);
      s.arrive();
      return;
    }
    // Some tensors go through the staging areas: in chunks of the staging size, in lock-step.
    for (int64_t off = 0; off < n; off += cap) {
      const int64_t m = std::min(cap, n - off);
      if (off > 0) {
        if (staged) std::memcpy(s.staging(s.rank), data + off * elem, static_cast<size_t>(m * elem));
        s.arrive();
      }
      for (int p = 0; p < s.size; ++p) src[static_cast<size_t>(p)] = s.source(p, off, elem);
      // Reduce-scatter: this rank's slice of every source, into its own source (where peers will read it).
      const auto [lo, hi] = s.slice(s.rank, m);
      std::vector<const char*> part(src);
      for (auto& p : part) p += lo * elem;
      if (hi > lo)
        reduce(t.scalar_type(), const_cast<char*>(part[static_cast<size_t>(s.rank)]), part, hi - lo, op, s.size);
      s.arrive();
      // Allgather: every slice from the rank that reduced it.
      for (int q = 0; q < s.size; ++q) {
        if (q == s.rank && !staged) continue;
        const auto [qlo, qhi] = s.slice(q, m);
        if (qhi > qlo) {
          std::memcpy(data + (off + qlo) * elem, src[static_cast<size_t>(q)] + qlo * elem,
                      static_cast<size_t>((qhi - qlo) * elem));
        }
      }
      s.arrive();  // nobody reads this rank's source any more
    }
  });
}

void ShmGroup::broadcast(const torch::Tensor& t, int root, std::chrono::milliseconds timeout) {
  auto& s = *impl_;
  STRIDE_CHECK(root >= 0 && root < s.size, "broadcast root ", root, " of ", s.size, " ranks");
  s.run("broadcast", timeout, false, [&](bool pending) {
    if (pending) s.arrive();
    const int64_t n = t.numel();
    const int64_t elem = static_cast<int64_t>(t.element_size());
    char* data = static_cast<char*>(t.data_ptr());
    const auto [segment, offset] = s.locate(t);
    s.publish(Desc{kBroadcast, static_cast<int32_t>(t.scalar_type()), 0, root, n, segment, offset});
    const int64_t cap = s.cap(elem);
    const bool stage = s.rank == root && segment < 0;
    if (stage && n > 0) std::memcpy(s.staging(s.rank), data, static_cast<size_t>(std::min(cap, n) * elem));
    s.arrive();
    s.validate();
    const int64_t chunk = s.desc(root).segment >= 0 ? std::max<int64_t>(n, 1) : cap;  // one copy: no reuse
    for (int64_t off = 0; off < n; off += chunk) {
      const int64_t m = std::min(chunk, n - off);
      if (off > 0) {
        if (stage) std::memcpy(s.staging(s.rank), data + off * elem, static_cast<size_t>(m * elem));
        s.arrive();
      }
      if (s.rank != root) std::memcpy(data + off * elem, s.source(root, off, elem), static_cast<size_t>(m * elem));
      s.arrive();
    }
  });
}

void ShmGroup::allgather(const torch::Tensor& in, const torch::Tensor& out, std::chrono::milliseconds timeout,
                         bool caller_waits) {
  auto& s = *impl_;
  STRIDE_CHECK_EQ(out.numel(), in.numel() * s.size, "allgather output size");
  STRIDE_CHECK(in.scalar_type() == out.scalar_type(), "allgather dtypes differ");
  s.run("allgather", timeout, caller_waits, [&](bool pending) {
    const int64_t n = in.numel();
    const int64_t elem = static_cast<int64_t>(in.element_size());
    const char* data = static_cast<const char*>(in.data_ptr());
    char* dst = static_cast<char*>(out.data_ptr());
    s.publish(Desc{kAllgather, static_cast<int32_t>(in.scalar_type()), 0, 0, n, -1, 0});
    const int64_t cap = s.cap(elem);
    const bool small = n * elem <= s.half();
    if (pending && !small) s.arrive();
    if (n > 0) {
      std::memcpy(small ? s.slot(s.rank) : s.staging(s.rank), data, static_cast<size_t>(std::min(cap, n) * elem));
    }
    s.arrive();
    s.validate();
    if (small) {  // the output is private: no closing rendezvous
      for (int p = 0; p < s.size; ++p) {
        if (n > 0) std::memcpy(dst + p * n * elem, s.slot(p), static_cast<size_t>(n * elem));
      }
      s.readers_pending = true;
      return;
    }
    for (int64_t off = 0; off < n; off += cap) {
      const int64_t m = std::min(cap, n - off);
      if (off > 0) {
        std::memcpy(s.staging(s.rank), data + off * elem, static_cast<size_t>(m * elem));
        s.arrive();
      }
      for (int p = 0; p < s.size; ++p) {
        std::memcpy(dst + (p * n + off) * elem, s.staging(p), static_cast<size_t>(m * elem));
      }
      s.arrive();
    }
  });
}

void ShmGroup::barrier(std::chrono::milliseconds timeout) {
  auto& s = *impl_;
  s.run("barrier", timeout, false, [&](bool) {
    s.publish(Desc{kBarrier, 0, 0, 0, 0, -1, 0});
    s.arrive();
    s.validate();
  });
}

}  // namespace stride::comm
