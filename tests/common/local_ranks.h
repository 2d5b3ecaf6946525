// Ranks as threads: runs fn(rank, communicator) for every rank of one comm::LocalWorld.
#pragma once

#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "comm/local/local_communicator.h"

namespace stride::testing {

// Runs fn(rank, communicator) on `n` threads of one LocalWorld (a new one unless given) and rethrows the first
// failure.
template <typename F>
void run_ranks(int n, F fn, std::shared_ptr<comm::LocalWorld> world = nullptr) {
  if (!world) world = comm::LocalWorld::create(n);
  std::vector<std::shared_ptr<comm::Communicator>> comms;
  for (int r = 0; r < n; ++r) comms.push_back(world->communicator(r));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r, comms[static_cast<size_t>(r)]);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace stride::testing
