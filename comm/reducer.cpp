#include "comm/reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <mutex>

#include "comm/flight_recorder.h"
#include "comm/powersgd.h"

namespace stride::comm {

Compression parse_compression(const std::string& name) {
  if (name == "none") return Compression::kNone;
  if (name == "fp16") return Compression::kFp16;
  if (name == "bf16") return Compression::kBf16;
  if (name == "powersgd") return Compression::kPowerSgd;
  throw UsageError(concat("--grad-compression: unknown '", name, "' (none, fp16, bf16, powersgd)"));
}

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kFp16:
      return "fp16";
    case Compression::kBf16:
      return "bf16";
    case Compression::kPowerSgd:
      return "powersgd";
  }
  return "?";
}
namespace {

using Clock = std::chrono::steady_clock;

struct Param {
  std::string name;
  torch::Tensor tensor;
  torch::Tensor grad_view;  // the view into its arena (and so its bucket) that .grad should be
  size_t arena = 0;         // Note [Gradient arena]
  int64_t offset = 0;       // elements into the arena
  size_t bucket = 0;
  std::shared_ptr<torch::autograd::Node> accumulator;
  uintptr_t hook = 0;
};

struct Bucket {
  torch::Tensor flat;        // the gradients, in the parameters' dtype
  torch::Tensor compressed;  // 16-bit copy when compressing
  std::unique_ptr<PowerSgdBucket> powersgd;
  bool powersgd_step = false;  // this step's collectives are PowerSGD's
  WorkPtr q_work;              // PowerSGD's second collective
  std::vector<size_t> params;
  size_t pending = 0;  // parameters not yet ready this step
  bool launched = false;
  WorkPtr work;
  Clock::time_point ready_at{}, launched_at{}, waited_at{};  // this step (Note [Overlap timeline])
};

// Bytes a bucket puts on the wire per step: PowerSGD's factors, the 16-bit copy, or the gradients themselves.
int64_t communicated_bytes(const Bucket& b) {
  if (b.powersgd_step) return b.powersgd->bytes();
  return b.compressed.defined() ? b.compressed.numel() * 2
                                : b.flat.numel() * static_cast<int64_t>(b.flat.element_size());
}

// A view into `flat` at `offset` with `p`'s sizes and (dense) strides, so autograd's gradient layout contract
// holds for channels-last parameters too.
torch::Tensor view_like(const torch::Tensor& flat, int64_t offset, const torch::Tensor& p) {
  if (p.is_non_overlapping_and_dense()) return flat.as_strided(p.sizes(), p.strides(), offset);
  return flat.narrow(0, offset, p.numel()).view(p.sizes());
}

bool same_arena(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.device() == b.device();
}

// Note [Bucket layout]: consecutive parameters (in the reducer's reverse registration order) of one dtype and
// device, up to the cap; the first bucket holds at most first_bucket_bytes. Indices into `tensors`.
std::vector<std::vector<size_t>> group_parameters(const std::vector<torch::Tensor>& tensors, int64_t cap_bytes,
                                                  int64_t first_bucket_bytes) {
  int64_t cap = std::min(first_bucket_bytes > 0 ? first_bucket_bytes : cap_bytes, cap_bytes);
  std::vector<std::vector<size_t>> groups;
  int64_t group_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    const bool compatible = !groups.empty() && same_arena(tensors[groups.back().front()], t);
    if (groups.empty() || !compatible || group_bytes + bytes > cap) {
      if (!groups.empty()) cap = cap_bytes;
      groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().push_back(i);
    group_bytes += bytes;
  }
  return groups;
}

}  // namespace

struct GradientReducer::State {
  std::shared_ptr<Communicator> comm;
  ReducerOptions options;
  std::vector<Param> params;
  std::vector<Bucket> buckets;
  std::mutex mu;
  bool built_skipping = false;  // built with skip_communication: no compression buffers
  bool reduce = true;           // this micro-batch communicates
  bool alive = true;
  size_t next_launch = 0;
  std::vector<bool> ready;
  ReducerStats stats;
  std::vector<std::string> unused;
  int64_t reduced_steps = 0;   // steps that communicated (PowerSGD's warm-up counts them)
  int64_t timeline_steps = 0;  // steps finish() reduced (StepTimeline::step)
  Clock::time_point backward_start{};
  StepTimeline timeline;
  std::vector<torch::Tensor> arenas;  // Note [Gradient arena]

  bool communicates() const { return !options.skip_communication && comm->size() > 1; }

  // Note [Gradient arena]: every parameter's gradient lives at a fixed offset of one flat buffer per dtype and
  // device (from the communicator: in shared memory on the MPI back-end), in bucket order. A bucket is a slice of
  // its arena, so the layout can change (rebuild) without moving a gradient or allocating: shared-memory segments
  // are collective and stay mapped by the peers for the group's life, so per-bucket buffers would pile up.
  void allocate_arenas() {
    std::vector<int64_t> numel;
    for (auto& p : params) {
      size_t a = 0;
      while (a < arenas.size() && !same_arena(arenas[a], p.tensor)) ++a;
      if (a == arenas.size()) {
        arenas.push_back(torch::empty({0}, p.tensor.options().requires_grad(false)));  // placeholder: dtype, device
        numel.push_back(0);
      }
      p.arena = a;
      p.offset = numel[a];
      numel[a] += p.tensor.numel();
    }
    // Collective when communicating: every rank has the same parameters, so the same arenas in the same order.
    for (size_t a = 0; a < arenas.size(); ++a) {
      const auto opts = arenas[a].options();
      arenas[a] = communicates() ? comm->alloc_buffer(numel[a], opts) : torch::zeros({numel[a]}, opts);
    }
    for (auto& p : params) {
      p.grad_view = view_like(arenas[p.arena], p.offset, p.tensor);
      if (p.tensor.grad().defined()) p.grad_view.copy_(p.tensor.grad());
      p.tensor.mutable_grad() = p.grad_view;
    }
  }

  // Cuts the arenas into buckets at options.bucket_cap_bytes (Note [Bucket layout]).
  void build_buckets() {
    const auto& o = options;
    std::vector<torch::Tensor> tensors;
    for (const auto& p : params) tensors.push_back(p.tensor);
    buckets.clear();
    for (auto& group : group_parameters(tensors, o.bucket_cap_bytes, o.first_bucket_bytes)) {
      Bucket b;
      int64_t numel = 0;
      for (size_t i : group) numel += params[i].tensor.numel();
      const Param& first = params[group.front()];
      b.flat = arenas[first.arena].narrow(0, first.offset, numel);
      if ((o.compression == Compression::kFp16 || o.compression == Compression::kBf16) && !o.skip_communication) {
        b.compressed = torch::empty(
            {numel}, b.flat.options().dtype(o.compression == Compression::kFp16 ? torch::kHalf : torch::kBFloat16));
      }
      for (size_t i : group) params[i].bucket = buckets.size();
      b.params = group;
      if (o.compression == Compression::kPowerSgd && communicates()) {
        PowerSgdOptions po;
        po.rank = o.powersgd_rank;
        po.min_compression_rate = o.powersgd_min_compression_rate;
        po.seed = o.powersgd_seed;
        std::vector<PowerSgdBucket::Gradient> grads;
        for (size_t i : group) {
          // The index in registration order seeds the initial Q (params are stored in reverse).
          grads.push_back({params[i].name, params[i].grad_view, static_cast<int64_t>(params.size() - 1 - i)});
        }
        b.powersgd = std::make_unique<PowerSgdBucket>(std::move(grads), po, *comm);
      }
      buckets.push_back(std::move(b));
    }
  }

  void mark_ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!alive || !reduce || ready[i]) return;
    ready[i] = true;
    Bucket& b = buckets[params[i].bucket];
    if (--b.pending == 0) {
      b.ready_at = Clock::now();
      if (options.overlap) launch_ready();
    }
  }

  // Launches, in index order, every bucket whose parameters are all ready.
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) launch(next_launch++);
  }

  void launch(size_t index) {
    Bucket& b = buckets[index];
    for (size_t i : b.params) {
      // Someone replaced .grad (set_grad, a zero_grad that frees): copy it back into the bucket.
      Param& p = params[i];
      const auto& g = p.tensor.grad();
      if (!g.defined()) {
        p.grad_view.zero_();
      } else if (!g.is_same(p.grad_view)) {
        p.grad_view.copy_(g);
      }
      if (!g.defined() || !g.is_same(p.grad_view)) p.tensor.mutable_grad() = p.grad_view;
    }
    b.launched = true;
    b.launched_at = Clock::now();
    if (options.skip_communication || comm->size() == 1) return;
    torch::NoGradGuard no_grad;
    const OriginScope origin(OriginKind::kBucket, static_cast<int64_t>(index));  // the flight recorder's origin
    b.powersgd_step = b.powersgd && reduced_steps >= options.powersgd_warmup_steps;
    if (b.powersgd_step) {
      b.work = b.powersgd->start(*comm);
    } else if (b.compressed.defined()) {
      b.compressed.copy_(b.flat.div(comm->size()));
      b.work = comm->allreduce(b.compressed, ReduceOp::kSum);
    } else {
      b.work = comm->allreduce(b.flat, ReduceOp::kAvg);
    }
  }

  // Note [Overlap timeline]. `backward_end`: when finish() was called.
  void record_timeline(Clock::time_point backward_end) {
    const auto since = [&](Clock::time_point t) { return std::chrono::duration<double>(t - backward_start).count(); };
    StepTimeline& tl = timeline;
    tl.step = ++timeline_steps;
    tl.backward_s = since(backward_end);
    tl.finished_s = since(Clock::now());
    tl.buckets.resize(buckets.size());
    for (size_t i = 0; i < buckets.size(); ++i) {
      const Bucket& b = buckets[i];
      BucketTiming& t = tl.buckets[i];
      t.parameters = static_cast<int64_t>(b.params.size());
      t.bytes = communicated_bytes(b);
      t.ready_s = since(b.ready_at);
      t.launched_s = since(b.launched_at);
      t.communicated = static_cast<bool>(b.work);
      if (!t.communicated) {
        t.started_s = t.done_s = t.launched_s;
        continue;
      }
      Clock::time_point start{}, end{}, q_start{}, q_end{};
      const bool timed = b.work->run_interval(&start, &end);
      t.started_s = timed ? since(start) : t.launched_s;
      t.done_s = timed ? since(end) : since(b.waited_at);
      // PowerSGD's second collective ends the bucket's communication.
      if (b.q_work) t.done_s = b.q_work->run_interval(&q_start, &q_end) ? since(q_end) : since(b.waited_at);
    }
  }

  void reset() {
    for (auto& b : buckets) {
      b.pending = b.params.size();
      b.launched = false;
      b.work.reset();
      b.q_work.reset();
      b.powersgd_step = false;
    }
    std::fill(ready.begin(), ready.end(), false);
    next_launch = 0;
  }
};

GradientReducer::GradientReducer(const NamedParameters& parameters, std::shared_ptr<Communicator> comm,
                                 ReducerOptions options)
    : s_(std::make_shared<State>()) {
  s_->comm = std::move(comm);
  s_->options = options;
  s_->built_skipping = options.skip_communication;
  const auto& o = s_->options;
  if (o.compression == Compression::kPowerSgd && o.powersgd_rank < 1) {
    throw UsageError(concat("--powersgd-rank must be at least 1, got ", o.powersgd_rank));
  }
  if (o.compression == Compression::kPowerSgd && o.powersgd_warmup_steps < 0) {
    throw UsageError(concat("--powersgd-warmup-steps must not be negative, got ", o.powersgd_warmup_steps));
  }
  STRIDE_CHECK_GT(o.bucket_cap_bytes, 0, "bucket cap");
  torch::NoGradGuard no_grad;
  // Reverse registration order: backward produces the last layers' gradients first.
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    if (!it->second.requires_grad()) continue;
    Param p;
    p.name = it->first;
    p.tensor = it->second;
    s_->params.push_back(std::move(p));
  }
  s_->allocate_arenas();
  s_->build_buckets();
  s_->ready.assign(s_->params.size(), false);
  s_->reset();
  // One post-hook per gradient accumulator; it runs after the gradient was added into .grad.
  std::weak_ptr<State> weak = s_;
  for (size_t i = 0; i < s_->params.size(); ++i) {
    Param& p = s_->params[i];
    p.accumulator = torch::autograd::impl::grad_accumulator(p.tensor);
    STRIDE_CHECK(p.accumulator, "parameter ", p.name, " has no gradient accumulator (is it a leaf?)");
    p.hook = p.accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto s = weak.lock()) s->mark_ready(i);
          return outputs;
        }));
  }
}

GradientReducer::~GradientReducer() {
  {
    std::lock_guard<std::mutex> lock(s_->mu);
    s_->alive = false;
  }
  for (auto& p : s_->params) p.accumulator->del_post_hook(p.hook);
}

void GradientReducer::prepare(bool reduce) {
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->reduce = reduce;
  if (reduce) s_->backward_start = Clock::now();
}

void GradientReducer::finish() {
  std::unique_lock<std::mutex> lock(s_->mu);
  if (!s_->reduce) {
    s_->reduce = true;  // the default for the next micro-batch
    return;
  }
  torch::NoGradGuard no_grad;
  s_->unused.clear();
  for (size_t i = 0; i < s_->params.size(); ++i) {
    if (!s_->ready[i]) s_->unused.push_back(s_->params[i].name);
  }
  // Buckets not launched yet (overlap off, or unused parameters): launch them now, in order.
  const auto backward_end = Clock::now();
  for (auto& b : s_->buckets) {
    if (b.pending != 0) b.ready_at = backward_end;
    b.pending = 0;
  }
  s_->launch_ready();
  const auto t0 = Clock::now();
  double comm = 0.0;
  for (size_t index = 0; index < s_->buckets.size(); ++index) {
    auto& b = s_->buckets[index];
    if (!b.work) continue;
    lock.unlock();  // a failing wait must not leave the mutex held; hooks of other threads may run meanwhile
    b.work->wait();
    lock.lock();
    b.waited_at = Clock::now();
    comm += b.work->run_seconds();
    if (b.powersgd_step) {
      const OriginScope origin(OriginKind::kBucket, static_cast<int64_t>(index));
      b.q_work = b.powersgd->middle(*s_->comm);
    } else if (b.compressed.defined()) {
      b.flat.copy_(b.compressed);
    }
  }
  // PowerSGD's second collectives were issued in bucket order above; decompress as they complete.
  for (auto& b : s_->buckets) {
    if (!b.powersgd_step) continue;
    if (b.q_work) {
      lock.unlock();
      b.q_work->wait();
      lock.lock();
      b.waited_at = Clock::now();
      comm += b.q_work->run_seconds();
    }
    b.powersgd->finish(*s_->comm);
  }
  auto& st = s_->stats;
  st.exposed_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  st.comm_seconds += comm;
  ++st.steps;
  st.buckets = static_cast<int64_t>(s_->buckets.size());
  st.bytes = 0;
  bool communicated = false;
  for (auto& b : s_->buckets) {
    communicated = communicated || static_cast<bool>(b.work);
    st.bytes += communicated_bytes(b);
  }
  if (communicated) ++s_->reduced_steps;
  st.unused_parameters = static_cast<int64_t>(s_->unused.size());
  s_->record_timeline(backward_end);
  s_->reset();
}

void GradientReducer::set_overlap(bool overlap) {
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->options.overlap = overlap;
}

void GradientReducer::rebuild(int64_t bucket_cap_bytes) {
  std::lock_guard<std::mutex> lock(s_->mu);
  STRIDE_CHECK_GT(bucket_cap_bytes, 0, "bucket cap");
  if (s_->options.compression == Compression::kPowerSgd) {
    // PowerSGD's buffers are per bucket and, on the MPI back-end, in shared memory that is never unmapped.
    throw UsageError("the gradient buckets cannot be rebuilt with --grad-compression powersgd");
  }
  bool in_flight = s_->next_launch != 0;
  for (size_t i = 0; i < s_->params.size(); ++i) in_flight = in_flight || s_->ready[i];
  STRIDE_CHECK(!in_flight, "GradientReducer::rebuild during a backward pass (call it between steps)");
  torch::NoGradGuard no_grad;
  s_->options.bucket_cap_bytes = bucket_cap_bytes;
  s_->build_buckets();
  s_->reset();
}

int64_t GradientReducer::bucket_cap_bytes() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->options.bucket_cap_bytes;
}

void GradientReducer::set_skip_communication(bool skip) {
  std::lock_guard<std::mutex> lock(s_->mu);
  STRIDE_CHECK(skip || !s_->built_skipping, "a reducer built with skip_communication cannot start communicating");
  s_->options.skip_communication = skip;
}

std::vector<std::vector<std::string>> GradientReducer::bucket_names() const {
  std::vector<std::vector<std::string>> out;
  for (const auto& b : s_->buckets) {
    out.emplace_back();
    for (size_t i : b.params) out.back().push_back(s_->params[i].name);
  }
  return out;
}

std::vector<int64_t> GradientReducer::bucket_bytes() const {
  std::vector<int64_t> out;
  for (const auto& b : s_->buckets) out.push_back(b.flat.numel() * static_cast<int64_t>(b.flat.element_size()));
  return out;
}

std::vector<std::string> GradientReducer::unused_parameters() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->unused;
}

ReducerStats GradientReducer::stats() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->stats;
}

StepTimeline GradientReducer::timeline() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->timeline;
}

void GradientReducer::reset_stats() {
  std::lock_guard<std::mutex> lock(s_->mu);
  const auto keep = s_->stats;
  s_->stats = {};
  s_->stats.buckets = keep.buckets;
  s_->stats.bytes = keep.bytes;
}

std::map<std::string, torch::Tensor> GradientReducer::compression_state() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  std::map<std::string, torch::Tensor> out;
  if (s_->options.compression != Compression::kPowerSgd) return out;
  out["powersgd.rank"] = torch::tensor({s_->options.powersgd_rank}, torch::kLong);
  out["powersgd.steps"] = torch::tensor({s_->reduced_steps}, torch::kLong);
  for (const auto& b : s_->buckets) {
    if (b.powersgd) b.powersgd->save(out);
  }
  return out;
}

void GradientReducer::load_compression_state(const std::map<std::string, torch::Tensor>& state) {
  std::lock_guard<std::mutex> lock(s_->mu);
  if (s_->options.compression != Compression::kPowerSgd || state.empty()) return;
  const auto rank = state.find("powersgd.rank"), steps = state.find("powersgd.steps");
  STRIDE_CHECK(rank != state.end() && steps != state.end(), "PowerSGD state without powersgd.rank/powersgd.steps");
  const int64_t saved = rank->second.item<int64_t>();
  if (saved != s_->options.powersgd_rank) {
    throw UsageError(concat("--powersgd-rank ", s_->options.powersgd_rank, " differs from the ", saved,
                            " the PowerSGD state was made with"));
  }
  torch::NoGradGuard no_grad;
  s_->reduced_steps = steps->second.item<int64_t>();
  for (auto& b : s_->buckets) {
    if (b.powersgd) b.powersgd->load(state);
  }
}

std::vector<std::vector<std::string>> plan_buckets(const GradientReducer::NamedParameters& parameters,
                                                   int64_t bucket_cap_bytes, int64_t first_bucket_bytes) {
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    if (!it->second.requires_grad()) continue;
    names.push_back(it->first);
    tensors.push_back(it->second);
  }
  std::vector<std::vector<std::string>> out;
  for (const auto& group : group_parameters(tensors, bucket_cap_bytes, first_bucket_bytes)) {
    out.emplace_back();
    for (size_t i : group) out.back().push_back(names[i]);
  }
  return out;
}

void broadcast_module_state(torch::nn::Module& module, Communicator& comm, int root) {
  std::vector<torch::Tensor> tensors;
  for (auto& p : module.parameters()) tensors.push_back(p);
  for (auto& b : module.buffers()) tensors.push_back(b);
  broadcast_coalesced(comm, tensors, root);
}

void average_buffers(torch::nn::Module& module, Communicator& comm) { average_coalesced(comm, module.buffers()); }

}  // namespace stride::comm
