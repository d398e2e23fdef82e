// Per-request logits processing: what a request's penalties and bans do to one row of logits [vocab] before
// the sampler sees it. Built once per request, stateless across steps (the prompt and the output so far are
// passed in), so a paused or re-scheduled request needs nothing saved.
//
// apply() runs, in this order:
//   a. embedding_bias        logits[i] += bias[i]
//   b. repetition_penalty    over the distinct tokens of prompt + output, as transformers'
//                            RepetitionPenaltyLogitsProcessor: l < 0 ? l * p : l / p
//   c. presence_penalty,     over OUTPUT tokens only, as OpenAI defines them:
//      frequency_penalty     l -= presence * (count > 0) + frequency * count
//   d. bad_words             as transformers' NoBadWordsLogitsProcessor: a one-token word is always banned; a
//                            longer word bans its last token when the others equal the tail of prompt + output
//                            (also when they are the whole of it, where transformers skips the word). -inf.
//                            End ids are not exempt (transformers drops one-token words equal to EOS).
//   e. min_length            while output.size() < min_length, every end id gets -inf (new tokens only, as
//                            transformers' MinNewTokensLengthLogitsProcessor)
// Temperature, top-k and top-p belong to the sampler (executor/sampler.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "executor/request.h"

namespace kiln {

class LogitsProcessor {
 public:
  // Checks everything apply() and the sampler rely on: the sampling fields (all of SamplingConfig::validate but
  // beam_width), embedding_bias size and values, bad/stop word and end ids in [0, vocab), no empty word.
  // Each error names the field and the allowed range.
  static Status validate(const Request& request, int64_t vocab_size);

  // `end_ids`: the request's end ids resolved against the model's EOS ids (used by min_length only).
  // The request must have passed validate(); ids outside [0, vocab) are ignored, never written.
  LogitsProcessor(const Request& request, std::vector<int32_t> end_ids, int64_t vocab_size);

  // False when apply() would change nothing at any step.
  bool active() const { return active_; }

  // False when apply() does something the device sampler (Backend::sample_rows) cannot: an embedding bias.
  bool device_compatible() const { return embedding_bias_.empty(); }
  // What apply() does to the row (but the embedding bias) as one entry per token it changes, appended to `out`.
  void penalty_entries(std::span<const int32_t> prompt, std::span<const int32_t> output,
                       std::vector<PenaltyEntry>& out) const;

  // Modifies one row of logits [vocab] in place. `prompt` and `output` are this sequence's tokens so far
  // (output: generated tokens only).
  void apply(std::span<const int32_t> prompt, std::span<const int32_t> output, float* logits) const;

 private:
  int64_t vocab_;
  bool active_ = false;
  std::vector<float> embedding_bias_;  // [vocab] or empty
  float repetition_penalty_;
  float presence_penalty_;
  float frequency_penalty_;
  int32_t min_length_;
  std::vector<int32_t> end_ids_;
  std::vector<int32_t> banned_;                      // one-token bad words
  std::vector<std::vector<int32_t>> bad_sequences_;  // bad words of two tokens or more
};

}  // namespace kiln
