// The executor's private view of a request while it is queued or running: its sequences (one, or one
// per live beam), how much of each is in the KV cache, and its decoding state.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "executor/beam_search.h"
#include "executor/kv_cache_manager.h"
#include "executor/logits_processor.h"
#include "executor/request.h"
#include "executor/sampler.h"

namespace kiln {

// One sequence of a request: the prompt followed by its generated tokens.
struct Sequence {
  std::vector<int32_t> tokens;           // prompt + generated
  int32_t computed = 0;                  // leading tokens (of tokens + pending) whose K/V are in the cache
  // Tokens picked on the device by forwards not collected yet: they follow `tokens`, and the host learns them
  // at collect. pending_row: the logit row of this sequence's pick in the forward launched last.
  int32_t pending = 0;
  int32_t pending_row = -1;
  SequenceBlocks kv;
  std::vector<float> log_probs;          // [generated]
  std::vector<std::vector<TokenLogProb>> top_log_probs;  // [generated][k], when asked
  std::vector<float> generation_logits;  // [generated, vocab] raw logits, when asked
  FinishReason finish = FinishReason::kNotFinished;
};

enum class CapacityPolicy { kGuaranteedNoEvict, kMaxUtilization };

struct RequestState {
  RequestState(RequestId id, Request r, std::vector<int32_t> end_ids, int64_t vocab, uint64_t seed)
      : id(id),
        req(std::move(r)),
        prompt_len(static_cast<int32_t>(req.input_ids.size())),
        end_ids(std::move(end_ids)),
        processor(req, this->end_ids, vocab),
        sampler(sampler_config(req.sampling), seed) {}

  // The sampler's settings: TensorRT-LLM's greedy default (top_k 0 and top_p 0) made explicit.
  static SamplingConfig sampler_config(SamplingConfig c) {
    if (c.is_greedy()) c.top_k = 1;
    return c;
  }

  RequestId id;
  Request req;
  int32_t prompt_len;
  std::vector<int32_t> end_ids;
  LogitsProcessor processor;
  TokenSampler sampler;
  std::unique_ptr<BeamSearcher> beams;  // beam_width > 1
  std::vector<Sequence> seqs;           // [1] before the first beam step, then [live beams]
  std::vector<BeamHypothesis> hypotheses;  // beam search's result, best first, once it is done
  std::vector<float> context_logits;    // [prompt_len, vocab] collected during the first prefill
  int32_t context_logits_rows = 0;
  int64_t worst_case_blocks = 0;        // KV blocks it can hold at most (guaranteed_no_evict accounting)
  int32_t streamed = 0;                 // generated tokens already sent (beam_width 1)
  int32_t preemptions = 0;
  bool cancel_requested = false;
  bool finished = false;
  std::chrono::steady_clock::time_point arrival;
  std::optional<std::chrono::steady_clock::time_point> scheduled;  // first iteration that ran it

  int32_t generated() const { return static_cast<int32_t>(seqs[0].tokens.size()) - prompt_len; }
  int32_t length() const { return static_cast<int32_t>(seqs[0].tokens.size()) + seqs[0].pending; }
  bool is_beam_search() const { return req.sampling.beam_width > 1; }
  // Prefill not finished yet (no token generated).
  bool in_context_phase() const { return seqs.size() == 1 && seqs[0].computed < prompt_len; }
};

// The waiting queue's order: higher priority first, then arrival (ids grow with arrival).
inline bool admitted_before(const RequestState* a, const RequestState* b) {
  if (a->req.priority != b->req.priority) return a->req.priority > b->req.priority;
  return a->id < b->id;
}

}  // namespace kiln
