// The in-flight batching executor: requests come and go between iterations of one engine loop that runs
// on its own thread (schedule -> launch forward -> collect the previous or this one -> decode -> respond; a
// step whose tokens are picked on the device is collected while the next one runs). Callers never block it:
// enqueue() only validates and queues, responses go to a per-request queue or callback.
//
//   auto ex = *Executor::create(model, backend, ExecutorConfig{});
//   RequestId id = *ex->enqueue(Request{.input_ids = ids, .max_new_tokens = 32});
//   Response r = *ex->await_final(id);
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "executor/kv_cache_manager.h"
#include "executor/request.h"
#include "executor/request_state.h"
#include "executor/scheduler.h"
#include "model/llama_model.h"
#include "model/model_runner.h"

namespace kiln {

struct ExecutorConfig {
  SchedulerConfig scheduler;
  KvCacheConfig kv_cache;
  std::optional<uint64_t> seed;  // where unseeded requests draw their seeds from (default: random)
  // Launch step N+1 before collecting step N when N's tokens are picked on the device (argmax or the device
  // sampler), so that the host's scheduling overlaps the GPU's work. Results are the same either way;
  // KILN_OVERLAP=0 in the environment turns it off (for comparisons).
  bool overlap = true;
  // Pick sampled tokens with the backend's sampler where it has one (a GPU: logits stay there). The tokens are
  // those the host sampler draws; KILN_DEVICE_SAMPLING=0 in the environment samples on the host (comparisons).
  bool device_sampling = true;
  Status validate() const;
};

struct ExecutorStats {
  int64_t iterations = 0;
  int64_t active_requests = 0;      // admitted and not finished
  int64_t queued_requests = 0;      // waiting, including paused ones
  int64_t paused_requests = 0;      // waiting after a preemption
  int64_t max_active_requests = 0;  // max_batch_size
  // The last iteration:
  int64_t scheduled_requests = 0;
  int64_t context_requests = 0;
  int64_t generation_requests = 0;
  int64_t context_tokens = 0;
  // Since start:
  int64_t completed = 0, failed = 0, cancelled = 0, preemptions = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t launched_ahead = 0;  // forwards launched before the previous one was collected (ExecutorConfig::overlap)
  KvCacheStats kv;
};

class Executor {
 public:
  // Drives `model` (one rank or a RankGroup), which must outlive the executor.
  static Result<std::unique_ptr<Executor>> create(ModelRunner& model, ExecutorConfig config);
  // One rank: `model` on `backend`.
  static Result<std::unique_ptr<Executor>> create(LlamaModel& model, Backend& backend, ExecutorConfig config);
  ~Executor();  // aborts what is still running
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Validates and queues; errors say which field is wrong. kUnavailable when overloaded or shutting down.
  Result<RequestId> enqueue(Request request);
  // Responses of `id` ready now, waiting up to `timeout` (forever when unset) for the first one.
  // A request with an on_response callback gets nothing here.
  std::vector<Response> await_responses(RequestId id, std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  // Waits for the final response; streamed chunks are merged into it (whole outputs, not deltas).
  Result<Response> await_final(RequestId id);
  // Stops a request: its blocks return at once, and a final response says kCancelled.
  void cancel(RequestId id);
  // Stops accepting work; drain: lets everything queued finish; otherwise cancels it. Then joins the loop.
  void shutdown(bool drain = true);
  ExecutorStats stats() const;
  // The KV cache plan: blocks, tokens, bytes and where the numbers came from.
  const std::string& kv_plan() const { return kv_plan_; }
  const ExecutorConfig& config() const { return config_; }

 private:
  Executor(ModelRunner& model, ExecutorConfig config);
  Status validate_request(const Request& r) const;
  void loop();
  bool step();  // one iteration; false when there was nothing to do
  // Takes the output of the forward in flight: its tokens appended, finished requests retired, streams fed.
  void collect_in_flight();
  void publish_stats(int64_t generated_tokens);
  void respond(RequestState& r, Response resp);
  void finish(RequestState* r, FinishReason forced = FinishReason::kNotFinished);
  void fail(RequestState* r, const Status& error);
  void retire(RequestState* r, Response final, int64_t ExecutorStats::*counter);
  void handle_cancels(const std::set<RequestId>& ids);
  void expire_waiting();

  ModelRunner& model_;
  std::unique_ptr<ModelRunner> owned_runner_;  // create(LlamaModel&, Backend&)
  ExecutorConfig config_;
  std::string kv_plan_;
  std::unique_ptr<KvCacheManager> kv_;
  std::unique_ptr<Scheduler> scheduler_;
  int32_t drop_window_ = 0;  // every layer windowed: blocks behind the widest window are freed

  // Engine-thread state.
  std::map<RequestId, std::unique_ptr<RequestState>> requests_;
  std::vector<RequestState*> running_;
  std::deque<RequestState*> waiting_;
  std::vector<float> scratch_;
  ForwardResult out_;
  // The forward launched last, when its tokens were picked on the device and not collected yet: the host
  // schedules and launches the next step (its inputs taken from these picks on the device) before it waits
  // for this one. Requests are named by id: one may be cancelled or retired meanwhile.
  struct InFlight {
    struct Chunk {
      RequestId id;
      int seq;
      int32_t computed;     // the sequence's tokens in the cache after this forward
      int32_t preemptions;  // the request's count at launch (a pause in between resets its cache)
    };
    std::vector<Chunk> chunks;
    std::vector<RequestId> rows;  // the request of each logit row (each picks the next token of seqs[0])
  };
  std::optional<InFlight> in_flight_;

  // Shared with callers, under mu_.
  mutable std::mutex mu_;
  std::condition_variable wake_;       // the engine loop
  std::condition_variable responded_;  // callers in await_responses
  std::vector<std::unique_ptr<RequestState>> incoming_;
  std::set<RequestId> cancels_;
  struct Mailbox {
    std::deque<Response> responses;
  };
  std::map<RequestId, Mailbox> mailboxes_;
  int64_t queued_ = 0;  // incoming + waiting, for the queue limit
  RequestId next_id_ = 1;
  uint64_t seed_base_ = 0;
  bool accepting_ = true, stopping_ = false, drain_ = true;
  ExecutorStats stats_;
  std::thread thread_;
};

// Blocks of KV needed to hold `tokens` tokens.
inline int64_t kv_blocks_for(int64_t tokens, int32_t block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace kiln
