#include "core/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace kiln {

namespace {
// How long an idle worker spins before it sleeps.
constexpr auto kSpinFor = std::chrono::microseconds(2000);
// Pauses (tens of cycles each) before a spinning thread starts yielding its core.
constexpr uint32_t kPauseSpins = 4096;
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for new work for a while, then sleep until notified.
    auto spin_start = std::chrono::steady_clock::now();
    uint32_t spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
      // Pause first; then also yield, so that a busy machine (more runnable threads than cores) can run
      // the thread we are waiting for.
      if (spins < kPauseSpins) _mm_pause();
      else std::this_thread::yield();
      if ((++spins & 1023) == 0 && std::chrono::steady_clock::now() - spin_start > kSpinFor) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);
        cv_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
        sleepers_.fetch_sub(1);
        break;
      }
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    (*job_)(index, num_threads());
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (workers_.empty()) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> caller(run_mu_);
  job_ = &fn;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1);  // seq_cst: pairs with sleepers_ in worker_loop (no lost wake-up)
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  fn(0, num_threads());
  for (uint32_t spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kPauseSpins) _mm_pause();
    else std::this_thread::yield();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int threads = num_threads();
  if (threads == 1 || n == 1) {
    fn(0, n);
    return;
  }
  // Several chunks per thread, taken in order by whichever thread is free: a thread the OS preempts (a
  // server's network threads share the cores) delays only its current chunk, not a fixed half of the work.
  const int64_t chunks = std::min<int64_t>(n, static_cast<int64_t>(threads) * kChunksPerThread);
  std::atomic<int64_t> next{0};
  run([&](int, int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
      if (begin < end) fn(begin, end);
    }
  });
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    const char* env = std::getenv("KILN_NUM_THREADS");
    return env ? std::atoi(env) : 0;
  }());
  return pool;
}

}  // namespace kiln
