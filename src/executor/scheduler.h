// Iteration-level scheduling: which sequences run in the next forward, and how many tokens each.
// Running requests first (decode tokens, then unfinished prefill chunks), in arrival order, then waiting
// requests by priority, then first come first served, within max_batch_size requests and max_num_tokens.
// Capacity: guaranteed_no_evict admits a request only when the worst-case blocks of everything running
// still fit the pool; max_utilization admits whatever fits now and, when the pool runs dry, pauses the
// lowest-priority, most recently arrived request (its blocks freed; it resumes later by recomputing its tokens).
#pragma once

#include <deque>
#include <vector>

#include "executor/kv_cache_manager.h"
#include "executor/request_state.h"

namespace kiln {

struct SchedulerConfig {
  CapacityPolicy policy = CapacityPolicy::kGuaranteedNoEvict;
  bool enable_chunked_context = true;  // split prompts longer than the token budget over iterations
  int64_t max_queue_size = 4096;       // waiting requests beyond this are refused as overloaded
  Status validate() const;
};

struct ScheduledChunk {
  RequestState* request;
  int seq;             // index into request->seqs
  int32_t num_tokens;  // tokens [computed, computed + num_tokens) run in this forward
};

struct ScheduleResult {
  std::vector<ScheduledChunk> chunks;
  std::vector<std::pair<int32_t, int32_t>> block_copies;  // copy-on-write before the forward
  int32_t paused = 0;                                     // requests preempted in this step
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, int64_t max_batch_size, int64_t max_num_tokens, KvCacheManager& kv)
      : config_(config), max_batch_size_(max_batch_size), max_num_tokens_(max_num_tokens), kv_(kv) {}

  // Moves admitted requests from `waiting` to `running` and paused ones back to `waiting` (running kept in
  // arrival order, waiting in admitted_before order) and returns this iteration's work.
  ScheduleResult schedule(std::vector<RequestState*>& running, std::deque<RequestState*>& waiting);
  // Forget a request leaving `running` (finished or cancelled): its blocks must already be released.
  void on_finished(const RequestState& r);
  // Frees a request's blocks and resets it to recompute its tokens when it runs again.
  void preempt(RequestState& r);

  const SchedulerConfig& config() const { return config_; }

 private:
  bool try_schedule_sequence(RequestState& r, int seq, int32_t& budget, ScheduleResult& out);
  bool admit(RequestState& r);

  SchedulerConfig config_;
  int64_t max_batch_size_, max_num_tokens_;
  KvCacheManager& kv_;
  int64_t reserved_blocks_ = 0;  // sum of worst_case_blocks of the running requests (guaranteed_no_evict)
};

}  // namespace kiln
