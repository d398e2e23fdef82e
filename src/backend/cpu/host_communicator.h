// Collectives between ranks that are threads of one process over host memory (the CPU backend's multi-rank
// mode): a group's ranks meet at a barrier and read each other's buffers. Sums are taken in rank order in f32,
// so every rank gets the same bits.
#pragma once

#include <barrier>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "backend/communicator.h"
#include "model/parallel_layout.h"

namespace kiln {

// What the ranks of one engine share: per stage a barrier and the buffers its tp ranks publish; per rank the
// queue of tensors sent to it by the previous stage.
class HostCommWorld {
 public:
  HostCommWorld(int tp_size, int pp_size);
  // The communicator of `rank` (rank = pp_rank * tp_size + tp_rank); lives as long as the world.
  Communicator& rank(int r) { return *ranks_[r]; }

 private:
  friend class HostCommunicator;
  struct Stage {
    explicit Stage(int tp) : barrier(tp), published(tp, nullptr) {}
    std::barrier<> barrier;
    std::vector<const void*> published;  // [tp] each rank's buffer of the collective in progress
  };
  struct Inbox {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::vector<char>> queue;
  };
  int tp_, pp_;
  std::vector<std::unique_ptr<Stage>> stages_;   // [pp]
  std::vector<std::unique_ptr<Inbox>> inboxes_;  // [tp * pp] by receiving rank
  std::vector<std::unique_ptr<Communicator>> ranks_;
};

}  // namespace kiln
