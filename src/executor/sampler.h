// Token sampling for one sequence (beam_width 1): temperature, top-k, top-p (with TensorRT-LLM's decaying
// top-p) and a draw by inverse CDF from a counter-based RNG. The token drawn depends only on (seed, step, the
// logits row), never on the batch or on other requests, so results reproduce across runs and schedules.
// Exact on one machine; across CPU ISAs the vector exp (AVX-512 / AVX2 / scalar) differs in the last bits, which
// can move a draw that lands within ~1e-7 of a CDF step. Work buffers are thread_local: no allocation per call
// once warm, and the const members may run on several threads at once.
#pragma once

#include <cstdint>

#include "executor/request.h"

namespace kiln {

struct Sample {
  int32_t token = 0;
  // log_softmax(logits / T)[token] of the processed logits (after LogitsProcessor), T the temperature with 0
  // read as 1, BEFORE top-k/top-p truncation (so it is comparable across sampling settings). 0 unless asked.
  float log_prob = 0.0f;
  // The k most likely tokens of the same distribution as log_prob (best first, ties: lower id first), when
  // asked; the drawn token's entry, if it is among them, equals log_prob exactly.
  std::vector<TokenLogProb> top;
};

// What a paused request keeps to resume the same random stream.
struct SamplerState {
  uint64_t step = 0;
  float top_p = 0.0f;  // the current (decayed) top_p
};

class TokenSampler {
 public:
  // `seed`: the request's random_seed, or one the executor drew for it.
  TokenSampler(const SamplingConfig& config, uint64_t seed);

  // True when sample() is an argmax: temperature 0, top_k 1, or top_k 0 with top_p 0 (TensorRT-LLM's rule, as
  // SamplingConfig::is_greedy; sampling from the whole distribution is top_p 1).
  bool greedy() const { return greedy_; }

  // In place over logits [vocab], as transformers' TemperatureLogitsWarper, TopKLogitsWarper and
  // TopPLogitsWarper (min_tokens_to_keep 1) in that order; removed entries become -inf.
  //  - temperature: logits / T, skipped when T is 0 or 1.
  //  - top-k (0 < k < vocab): keeps exactly the k largest; on ties at the k-th value the lower token ids are
  //    kept (transformers keeps every tied entry).
  //  - top-p with the CURRENT top_p (0 or 1: off): keeps the fewest largest entries whose probability sums
  //    to >= top_p, i.e. an entry stays when the mass ranked above it is < top_p (ties ranked by token id).
  void warp(float* logits, int64_t vocab) const;

  // Draws the token of this step from processed logits [vocab] (the row is warped in place, or left as is on
  // the greedy path). Greedy (see greedy()): argmax, the first index on ties. Otherwise warp, softmax, and walk
  // the CDF in token-id order to u = philox_uniform(seed, step). A row whose logits are all -inf yields token 0.
  // `want_log_prob`: fill Sample::log_prob (costs a pass over the vocabulary); `top_log_probs` > 0: fill
  // Sample::top with that many entries (at most vocab). Neither ever changes the token.
  Sample sample(float* logits, int64_t vocab, bool want_log_prob, int32_t top_log_probs = 0) const;

  // After a step emitted `token`: step += 1; top_p = max(top_p * decay, top_p_min) when decay != 1 and the
  // configured top_p > 0; then, if token == top_p_reset_id, top_p returns to its configured value
  // (runtime_top_p_decay / runtime_top_p_min / runtime_top_p_reset_ids of TensorRT-LLM).
  void advance(int32_t token);

  SamplerState state() const { return {step_, top_p_}; }
  void restore(const SamplerState& s) {
    step_ = s.step;
    top_p_ = s.top_p;
  }
  uint64_t seed() const { return seed_; }
  uint64_t step() const { return step_; }
  float top_p() const { return top_p_; }

 private:
  SamplingConfig config_;
  uint64_t seed_;
  bool greedy_;
  uint64_t step_ = 0;
  float top_p_;
};

}  // namespace kiln
