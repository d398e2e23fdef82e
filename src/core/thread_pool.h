// A fixed pool of worker threads for data-parallel loops inside one forward pass.
// The calling thread takes part, so a pool of N threads runs N-1 workers.
//
// A decode step dispatches hundreds of short loops, so waking workers through the kernel each time
// would cost more than the work: workers spin (with pause) for a short while after each job and only
// then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {

class ThreadPool {
 public:
  // num_threads <= 0 means one per available core.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(thread_index, num_threads) once on every thread and waits for all.
  // Not reentrant: fn must not call run() on the same pool; one caller at a time.
  void run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into up to kChunksPerThread contiguous chunks per thread, handed out in order to whichever
  // thread is free: fn(begin, end) once per chunk, possibly several times per thread.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);
  static constexpr int kChunksPerThread = 4;

  // Shared pool sized from KILN_NUM_THREADS or the core count.
  static ThreadPool& global();

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // serializes callers of run()
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace kiln
