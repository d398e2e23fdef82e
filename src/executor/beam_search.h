// Beam search for one request, independent of the backend: the caller runs the model on the live beams and
// hands over their next-token log-probs; the searcher picks the next live beams and keeps the finished
// hypotheses. The algorithm is that of Hugging Face transformers 5.x `_beam_search` (deterministic):
//
// - each step ranks K = max(2, 1 + end_ids.size()) * width candidates (parent beam, token) by the sum of
//   log-probs of their generated tokens (float, accumulated as transformers does);
// - a candidate "ends" when its token is an end id or it reaches max_new_tokens; only an ending candidate
//   ranked within the first `width` of the K may become a finished hypothesis, scored
//   sum / generated_len ** length_penalty (generated_len counts the end id); the best `width` are kept;
// - the next live beams are the best `width` candidates that did not end (there always are that many, which
//   is why K grows with the number of end ids);
// - the search stops when every candidate ended (max_new_tokens), or `width` hypotheses are finished and:
//   early_stopping 1: always; 0: the best live beam's sum / steps_so_far ** length_penalty cannot beat the worst
//   finished score; -1 ("never"): the same, but over max_new_tokens when length_penalty > 0.
//
// Ties (equal sums) rank the lower parent beam, then the lower token id, first; an equal-scored new hypothesis
// ranks after the finished ones it ties (transformers leaves both to torch.topk, which does not specify them).
//
// diversity_rate (TensorRT-LLM's beam_search_diversity_rate, no transformers equivalent): when ranking a step's
// candidates, the candidate of rank r among its own parent's candidates has diversity_rate * r subtracted from its
// sum. The penalty only ranks: beam sums and hypothesis scores stay true log-prob sums.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"

namespace kiln {

struct BeamSearchConfig {
  int width = 1;
  float length_penalty = 1.0f;
  int early_stopping = 1;           // 1 = stop when `width` hypotheses are done, 0 = heuristic, -1 = never
  float diversity_rate = 0.0f;      // >= 0; 0 = off
  std::vector<int32_t> end_ids;     // tokens that finish a hypothesis (may be empty)
  int32_t max_new_tokens = 16;

  Status validate() const;
};

// Next live beam i continues live beam `parent` of the previous step with `token`.
struct BeamChoice {
  int parent;
  int32_t token;
};

struct BeamHypothesis {
  std::vector<int32_t> tokens;   // generated tokens, the end id included when ended_by_end_id
  std::vector<float> log_probs;  // [tokens] log-prob of each token as given to step()
  float sum_log_prob = 0.0f;
  float score = 0.0f;            // sum_log_prob / tokens.size() ** length_penalty
  bool ended_by_end_id = false;  // else it reached max_new_tokens (or finalize() cut it)
};

class BeamSearcher {
 public:
  explicit BeamSearcher(BeamSearchConfig config);  // config must validate()

  // log_probs: [live, vocab], each live beam's next-token log-probs (log-softmax of the processed logits), in
  // the order of the last step's choices; live == 1 (the prompt) at the first step. Returns the next live beams
  // (empty when the search is done). Candidates come from each beam's top K tokens (a partial selection over
  // the vocabulary, O(vocab) a beam).
  std::vector<BeamChoice> step(const float* log_probs, int live, int64_t vocab);

  bool done() const { return done_; }
  int32_t steps() const { return steps_; }  // tokens generated so far by each live beam
  int num_live() const { return static_cast<int>(live_tokens_.size()); }
  const std::vector<std::vector<int32_t>>& live_tokens() const { return live_tokens_; }  // [live][steps]
  const std::vector<float>& live_sum_log_probs() const { return live_sums_; }           // [live]
  int candidates_per_step() const { return candidates_; }                                // K

  // The best `width` hypotheses, best first. Called before done(), the live beams count as hypotheses cut at
  // their current length (as if max_new_tokens had been reached), and the search ends.
  std::vector<BeamHypothesis> finalize();

 private:
  void add_finished(BeamHypothesis h);

  BeamSearchConfig config_;
  int candidates_;  // K
  bool done_ = false;
  int32_t steps_ = 0;
  std::vector<std::vector<int32_t>> live_tokens_{{}};  // one empty beam: the prompt
  std::vector<std::vector<float>> live_log_probs_{{}};
  std::vector<float> live_sums_{0.0f};
  std::vector<BeamHypothesis> finished_;  // best first, at most width
  std::vector<std::pair<float, int32_t>> row_top_;  // scratch: one beam's top tokens
};

}  // namespace kiln
