#include "cluster/coordinator.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <future>

#include "cluster/auth.h"
#include "cluster/coordinator_impl.h"
#include "cluster/wire.h"
#include "common/error.h"

namespace stride::cluster {

void Coordinator::Impl::listen(tcp::acceptor& acc, const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) throw UsageError(concat("cannot listen on '", host, "': not an IP address"));
  tcp::endpoint ep(addr, port);
  acc.open(ep.protocol(), ec);
  if (!ec) acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acc.bind(ep, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    boost::system::error_code ignored;
    acc.close(ignored);
    throw Error(concat("cannot listen on ", host, ":", port, ": ", ec.message()));
  }
}

void Coordinator::Impl::publish_on_writer(PublishJob job) {
  asio::post(writer, [self = shared_from_this(), job = std::move(job)] {
    const PublishResult r =
        CoordinatorCore::publish(*self->o.core.ops, self->o.core.checkpoint_root, self->o.core.keep, job);
    {
      std::lock_guard<std::mutex> lock(self->mu);
      self->core->published(job, r, steady_now());
    }
    asio::post(self->ioc, [self] { self->flush(); });
  });
}

void Coordinator::Impl::start() {
  CoreOptions core_options = o.core;
  core_options.publish_elsewhere = [this](PublishJob job) { publish_on_writer(std::move(job)); };
  core = std::make_unique<CoordinatorCore>(core_options, steady_now(), wall_now());
  listen(ranks_acceptor, o.bind, o.port);
  if (o.status_port >= 0) {
    try {
      listen(http_acceptor, o.status_bind, static_cast<uint16_t>(o.status_port));
    } catch (const Error& e) {
      if (!o.status_port_fallback || o.status_port == 0) throw;
      listen(http_acceptor, o.status_bind, 0);
      core->note(
          "warning",
          concat(e.what(), "; the status endpoint uses port ", http_acceptor.local_endpoint().port(), " instead"),
          steady_now());
    }
    http_port = http_acceptor.local_endpoint().port();
    accept_http();
  }
  accept_ranks();
  tick();
  thread = std::thread([self = shared_from_this()] {
    ::pthread_setname_np(::pthread_self(), "stride-coord");
    // Serving people and scrapers must not take cores from training (bench/status_load.sh): run at a lower
    // priority. Ranks' heartbeats are sent from their own normal-priority threads, and this thread's share
    // under full load (~10% of a core at nice 10) is far more than its work needs.
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 10);
    for (;;) {
      try {
        self->ioc.run();
        break;
      } catch (const std::exception& e) {  // a handler threw: log it and keep serving
        std::fprintf(stderr, "stride: coordinator: internal error: %s\n", e.what());
      }
    }
  });
}

void Coordinator::Impl::stop() {
  // Commits in flight finish first (their files are all written; the ranks wait for the word), and the io thread
  // still sends their COMMITTED before it closes the connections.
  writer.join();
  asio::post(ioc, [this] {
    stopping = true;
    boost::system::error_code ec;
    ranks_acceptor.close(ec);
    http_acceptor.close(ec);
    tick_timer.cancel();
    ranks_accept_retry.cancel();
    http_accept_retry.cancel();
    close_rank_connections();
    close_http_connections();
  });
  if (thread.joinable()) thread.join();
}

void Coordinator::Impl::accept_later(asio::steady_timer& timer, const boost::system::error_code& ec,
                                     std::function<void()> again) {
  if (!accept_failing) {
    accept_failing = true;
    std::lock_guard<std::mutex> lock(mu);
    core->note("warning",
               concat("accepting a connection failed: ", ec.message(), "; retrying every ", kAcceptRetryMs, " ms"),
               steady_now());
  }
  timer.expires_after(std::chrono::milliseconds(kAcceptRetryMs));
  timer.async_wait([this, again = std::move(again)](const boost::system::error_code& e) {
    if (!e && !stopping) again();
  });
}

void Coordinator::Impl::tick() {
  {
    std::lock_guard<std::mutex> lock(mu);
    core->tick(steady_now());
  }
  flush();
  tick_timer.expires_after(std::chrono::milliseconds(200));
  tick_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (!ec && !self->stopping) self->tick();
  });
}

Coordinator::Coordinator(CoordinatorOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  if (impl_->o.core.token.empty()) impl_->o.core.token = random_token();
  impl_->start();
}

Coordinator::~Coordinator() { impl_->stop(); }

std::string Coordinator::address() const { return concat(impl_->o.bind, ":", port()); }
uint16_t Coordinator::port() const { return impl_->ranks_acceptor.local_endpoint().port(); }
int Coordinator::status_port() const { return impl_->http_port; }
std::string Coordinator::status_url() const {
  if (impl_->http_port < 0) return "";
  return concat("http://", impl_->o.status_bind, ":", impl_->http_port, "/");
}
const std::string& Coordinator::token() const { return impl_->o.core.token; }

void Coordinator::request(proto::Command::Kind kind, const std::string& reason) {
  asio::post(impl_->ioc, [impl = impl_, kind, reason] {
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      impl->core->request(kind, reason, steady_now());
    }
    impl->flush();
  });
}

std::optional<std::string> Coordinator::failure() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->failure();
}

bool Coordinator::finished() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->finished();
}

uint64_t Coordinator::last_committed_step() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->last_committed_step();
}

std::string Coordinator::status_json() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->status_json(steady_now());
}

void Coordinator::set_restarts(int restarts) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->core->set_restarts(restarts);
}

void Coordinator::restart(uint32_t world_size, uint32_t attempt, const std::string& reason) {
  std::promise<void> done;
  asio::post(impl_->ioc, [impl = impl_, world_size, attempt, reason, &done] {
    impl->drop_ranks();
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      impl->core->restart(world_size, attempt, reason, steady_now());
    }
    impl->http_cache.clear();
    impl->failure_reported = false;
    done.set_value();
  });
  done.get_future().wait();
}

void Coordinator::with_core(const std::function<void(CoordinatorCore&)>& fn) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  fn(*impl_->core);
}

}  // namespace stride::cluster
