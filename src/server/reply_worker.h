// One thread that delivers a model's replies, in the order they were posted. The executor's engine thread
// only posts (a lock and a push): converting tokens to tensors, detokenizing (text models) and starting the
// gRPC/HTTP writes happen here, so transport work never stalls a forward pass (on the CPU the engine
// thread is also a compute thread, and the other compute threads would wait for it).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace kiln::server {

class ReplyWorker {
 public:
  ReplyWorker() : thread_([this] { loop(); }) {}
  ~ReplyWorker() { stop(); }
  ReplyWorker(const ReplyWorker&) = delete;
  ReplyWorker& operator=(const ReplyWorker&) = delete;

  // Queues `job`; after stop() it runs at once on the caller's thread (nothing is ever dropped).
  void post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopping_) {
        jobs_.push_back(std::move(job));
        cv_.notify_one();
        return;
      }
    }
    job();
  }

  // Runs what was posted so far, then ends the thread. Idempotent.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void loop() {
    std::deque<std::function<void()>> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and everything delivered
        batch.swap(jobs_);
      }
      for (auto& job : batch) job();
      batch.clear();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace kiln::server
