// What a client asks of the executor (Request) and what it gets back (Response): the decoding
// contract of the `tensorrt_llm` model (docs/PROTOCOL.md), as plain structs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace kiln {

using RequestId = uint64_t;

// Per-request sampling and logits processing. Defaults mean "off" (greedy, no penalties).
struct SamplingConfig {
  int beam_width = 1;                  // > 1: beam search (deterministic; top-k/top-p unused)
  float temperature = 1.0f;            // 0 = greedy
  int32_t top_k = 0;                   // runtime_top_k; 0 = off (1 = greedy)
  float top_p = 0.0f;                  // runtime_top_p; 0 = off, 1 = the whole distribution
                                       // (top_k 0 and top_p 0: greedy, as TensorRT-LLM)
  float top_p_min = 1e-6f;             // runtime_top_p_min: the decay floor
  float top_p_decay = 1.0f;            // runtime_top_p_decay: top_p *= decay after every step
  std::optional<int32_t> top_p_reset_id;  // runtime_top_p_reset_ids: top_p returns to its start after this token
  float repetition_penalty = 1.0f;     // multiplicative over prompt + output tokens (as transformers)
  float presence_penalty = 0.0f;       // additive over output tokens (as OpenAI)
  float frequency_penalty = 0.0f;      // additive per occurrence in the output (as OpenAI)
  int32_t min_length = 0;              // end ids are banned until this many tokens were generated
  std::optional<uint64_t> random_seed; // unset: drawn from the executor's seed source
  float length_penalty = 1.0f;         // beam search: score = sum log p / generated_len ** length_penalty
  int early_stopping = 1;              // beam search: 1 = stop when width hypotheses are done, 0 = heuristic, -1 = never
  float beam_search_diversity_rate = 0.0f;  // beam search: penalty per rank within a parent beam (TensorRT-LLM)

  // As TensorRT-LLM: top_k 0 with top_p 0 means greedy; sampling over the whole vocabulary is top_p 1.
  bool is_greedy() const {
    return beam_width == 1 && (temperature == 0.0f || top_k == 1 || (top_k == 0 && top_p == 0.0f));
  }
  Status validate(int64_t vocab_size, int max_beam_width) const;
};

struct OutputConfig {
  bool return_log_probs = false;         // cum_log_probs and output_log_probs
  // Per generated token, the k most likely tokens with their log-probs (0 = off, at most kMaxTopLogProbs;
  // beam_width 1), from the same distribution as output_log_probs: the processed logits over the temperature
  // (0 read as 1), before top-k/top-p truncation.
  int32_t top_log_probs = 0;
  bool return_context_logits = false;    // raw logits at every prompt position
  bool return_generation_logits = false; // raw logits of every generation step
  bool exclude_input_from_output = true; // output_ids hold generated tokens only
};

constexpr int32_t kMaxTopLogProbs = 20;

// One entry of a position's top alternatives.
struct TokenLogProb {
  int32_t token = 0;
  float log_prob = 0.0f;
  bool operator==(const TokenLogProb&) const = default;
};

enum class FinishReason { kNotFinished, kEndId, kStopWords, kLength, kCancelled };
const char* finish_reason_name(FinishReason r);

struct Response;
using ResponseCallback = std::function<void(const Response&)>;

struct Request {
  std::vector<int32_t> input_ids;           // the prompt
  int32_t max_new_tokens = 16;              // request_output_len
  bool streaming = false;                   // a response per step, then a final one
  SamplingConfig sampling;
  OutputConfig output;
  std::optional<std::vector<int32_t>> end_ids;  // unset: the model's EOS ids; empty: never stop on a token
  std::optional<int32_t> pad_id;
  std::vector<std::vector<int32_t>> stop_words;  // token sequences that end generation (kept in the output)
  std::vector<std::vector<int32_t>> bad_words;   // token sequences never generated
  std::vector<float> embedding_bias;             // [vocab] added to the logits, or empty
  // Admission order among waiting requests: higher first, then arrival (TensorRT-LLM's executor convention,
  // [0, 1], default 0.5). Under max_utilization the lowest priority, latest arrival is paused first.
  float priority = 0.5f;
  // A request still waiting for its first iteration this long after enqueue fails with kDeadlineExceeded
  // (Triton's request `timeout`); unset: it waits as long as it takes.
  std::optional<std::chrono::microseconds> queue_timeout;
  // Inputs of the tensorrt_llm contract that this executor does not implement yet: a request that sets
  // one is refused, naming it, never run as if it were not there.
  std::optional<uint64_t> lora_task_id;
  std::vector<int32_t> draft_input_ids;       // speculative decoding
  std::vector<float> prompt_embedding_table;  // prompt tuning
  // Called on the engine thread for every response of this request (keep it short: hand the response
  // to another thread). When unset, responses queue for await_responses().
  ResponseCallback on_response;
};

// One chunk of a request's result. Streaming: a chunk per step with the new tokens of each beam, then a
// final chunk; otherwise one final chunk with everything.
struct Response {
  RequestId id = 0;
  Status error;                                   // set: the request failed; nothing else is meaningful
  bool is_final = false;
  // [beams][tokens]: new tokens since the last chunk when streaming (beam_width 1), else all output tokens.
  // Beam search streams every live beam whole (`is_delta` false), since beams reorder as they grow.
  std::vector<std::vector<int32_t>> output_ids;
  bool is_delta = false;
  std::vector<std::vector<float>> output_log_probs;  // like output_ids
  // [beams][tokens][k]: the k best alternatives of each token in output_ids, best first (ties: lower id
  // first), when OutputConfig::top_log_probs > 0.
  std::vector<std::vector<std::vector<TokenLogProb>>> top_log_probs;
  std::vector<float> cum_log_probs;                  // [beams]
  std::vector<FinishReason> finish_reasons;          // [beams]
  std::vector<int32_t> sequence_lengths;             // [beams] output tokens (plus the prompt unless excluded)
  std::vector<float> context_logits;                 // [prompt_len, vocab], in the final chunk
  std::vector<float> generation_logits;              // [beams, steps, vocab]: this chunk's steps
  int32_t prompt_len = 0;
  // Final chunk: nanoseconds from enqueue to the first iteration that ran the request, and to the end.
  uint64_t queue_ns = 0, total_ns = 0;
};

// Appends a chunk to what was collected so far: streamed deltas extend each beam; a whole chunk replaces it.
void merge_response(Response& into, Response& more);

// Builds a request's stop/bad words from the [2, -1] offsets layout of the tensorrt_llm model:
// row 0 the concatenated ids, row 1 the cumulative end offsets, padded with -1.
Result<std::vector<std::vector<int32_t>>> words_from_offsets(const std::vector<int32_t>& ids,
                                                             const std::vector<int32_t>& offsets);

}  // namespace kiln
