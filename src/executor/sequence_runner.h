// Runs one sequence at a time through a model: chunked prefill, then greedy decoding.
// (The in-flight batching executor builds on the same forward; this is what `kiln run` uses.)
#pragma once

#include <memory>
#include <vector>

#include "model/llama_model.h"

namespace kiln {

struct GreedyOptions {
  int64_t max_new_tokens = 16;
  bool stop_at_eos = true;         // stop after emitting one of the model's EOS ids
  bool return_prompt_logits = false;  // logits at every prompt position (for golden tests)
  bool return_log_probs = true;       // log-softmax of each chosen token (a pass over the vocabulary)
};

struct GreedyResult {
  std::vector<int32_t> output_ids;   // generated tokens only
  std::vector<float> log_probs;      // log-softmax of each chosen token
  std::vector<float> prompt_logits;  // [prompt_len, vocab] when asked
  std::vector<float> first_logits;   // [vocab] logits that chose the first output token
  bool stopped_at_eos = false;
};

// log_softmax(logits)[index], computed stably (float exp, double sum).
float log_softmax_at(const float* logits, int64_t n, int64_t index);
// Index of the largest value (the first one on ties).
int32_t argmax(const float* logits, int64_t n);

class SequenceRunner {
 public:
  static Result<std::unique_ptr<SequenceRunner>> create(LlamaModel& model, Backend& backend);
  Result<GreedyResult> generate(const std::vector<int32_t>& prompt, const GreedyOptions& options);

 private:
  SequenceRunner(LlamaModel& model) : model_(model) {}
  LlamaModel& model_;
  std::unique_ptr<KvStorage> kv_;
  std::vector<int32_t> block_table_;
};

}  // namespace kiln
