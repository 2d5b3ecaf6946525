#include "trainer/stop_signals.h"

#include <atomic>
#include <csignal>
#include <cstdlib>

namespace stride::trainer {
namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (sig == SIGINT && g_stop_signal.load() != 0) std::_Exit(130);
  g_stop_signal.store(sig);
}

}  // namespace

void install_stop_signals() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGUSR2, on_stop_signal);
}

int stop_signal() { return g_stop_signal.load(); }

}  // namespace stride::trainer
