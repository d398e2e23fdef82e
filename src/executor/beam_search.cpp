#include "executor/beam_search.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace kiln {
namespace {

struct Candidate {
  float key;       // ranking value: sum less the diversity penalty
  float sum;       // parent's sum + log_prob (float, as transformers accumulates)
  float log_prob;
  int parent;
  int32_t token;
};

// The k largest values of row[0, n), best first; equal values keep the lower index first. One pass with a
// sorted buffer of k: after the first k elements almost every value fails the single compare with the k-th.
// NaNs are never picked.
void top_k(const float* row, int64_t n, int k, std::vector<std::pair<float, int32_t>>& out) {
  out.clear();
  for (int64_t i = 0; i < n; ++i) {
    const float v = row[i];
    if (static_cast<int>(out.size()) == k ? !(v > out.back().first) : std::isnan(v)) continue;
    // After every kept value >= v: indices arrive in order, so ties stay lower-index first.
    size_t pos = std::upper_bound(out.begin(), out.end(), v, [](float x, const auto& e) { return x > e.first; }) -
                 out.begin();
    if (static_cast<int>(out.size()) == k) out.pop_back();
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(pos), {v, static_cast<int32_t>(i)});
  }
}

// generated_len ** length_penalty, as transformers computes it (a double power, used as a float divisor).
float length_factor(int32_t len, float length_penalty) {
  return static_cast<float>(std::pow(static_cast<double>(len), static_cast<double>(length_penalty)));
}

}  // namespace

Status BeamSearchConfig::validate() const {
  if (width < 1) return invalid_argument("beam width must be >= 1, got " + std::to_string(width));
  if (max_new_tokens < 0) return invalid_argument("max_new_tokens must be >= 0");
  if (early_stopping < -1 || early_stopping > 1)
    return invalid_argument("early_stopping must be 1 (true), 0 (false) or -1 (never), got " +
                            std::to_string(early_stopping));
  if (!std::isfinite(length_penalty)) return invalid_argument("length_penalty must be finite");
  if (!std::isfinite(diversity_rate) || diversity_rate < 0)
    return invalid_argument("beam_search_diversity_rate must be >= 0");
  for (int32_t id : end_ids)
    if (id < 0) return invalid_argument("end id " + std::to_string(id) + " is negative");
  return {};
}

BeamSearcher::BeamSearcher(BeamSearchConfig config) : config_(std::move(config)) {
  Status s = config_.validate();
  KILN_CHECK(s.ok(), s.message());
  // Each live beam can lose at most end_ids.size() of its candidates to end ids, so K leaves `width` that live on.
  candidates_ = std::max<int>(2, 1 + static_cast<int>(config_.end_ids.size())) * config_.width;
  if (config_.max_new_tokens == 0) {
    done_ = true;
    live_tokens_.clear();
    live_log_probs_.clear();
    live_sums_.clear();
  }
}

void BeamSearcher::add_finished(BeamHypothesis h) {
  if (std::isnan(h.score)) return;
  const size_t width = static_cast<size_t>(config_.width);
  if (finished_.size() == width && !(h.score > finished_.back().score)) return;
  // After every hypothesis scored >= h: ties keep the earlier one first.
  auto pos = std::upper_bound(finished_.begin(), finished_.end(), h.score,
                              [](float s, const BeamHypothesis& e) { return s > e.score; });
  finished_.insert(pos, std::move(h));
  if (finished_.size() > width) finished_.pop_back();
}

std::vector<BeamChoice> BeamSearcher::step(const float* log_probs, int live, int64_t vocab) {
  KILN_CHECK(!done_, "beam search stepped after it was done");
  KILN_CHECK(live == num_live(), "beam search given " + std::to_string(live) + " rows for " +
                                     std::to_string(num_live()) + " live beams");
  KILN_CHECK(vocab > 0, "empty vocabulary");
  const int width = config_.width;
  const int per_beam = static_cast<int>(std::min<int64_t>(candidates_, vocab));

  // The step's global top K lies within the union of every beam's top K (the diversity penalty only grows
  // with the rank inside a beam), so each beam contributes its K best tokens.
  std::vector<Candidate> cands;
  cands.reserve(static_cast<size_t>(live) * per_beam);
  for (int b = 0; b < live; ++b) {
    top_k(log_probs + static_cast<int64_t>(b) * vocab, vocab, per_beam, row_top_);
    for (int r = 0; r < static_cast<int>(row_top_.size()); ++r) {
      const auto [lp, token] = row_top_[r];
      const float sum = live_sums_[b] + lp;
      const float key = config_.diversity_rate == 0.0f ? sum : sum - config_.diversity_rate * static_cast<float>(r);
      cands.push_back({key, sum, lp, b, token});
    }
  }
  const size_t k = std::min<size_t>(candidates_, cands.size());
  std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(k), cands.end(),
                    [](const Candidate& a, const Candidate& b) {
                      if (a.key != b.key) return a.key > b.key;
                      return a.parent != b.parent ? a.parent < b.parent : a.token < b.token;
                    });

  const int32_t generated = steps_ + 1;
  const bool at_max = generated >= config_.max_new_tokens;
  const float factor = length_factor(generated, config_.length_penalty);
  std::vector<BeamChoice> next;
  std::vector<std::vector<int32_t>> next_tokens;
  std::vector<std::vector<float>> next_log_probs;
  std::vector<float> next_sums;
  for (size_t i = 0; i < k; ++i) {
    const Candidate& c = cands[i];
    const bool is_end = std::find(config_.end_ids.begin(), config_.end_ids.end(), c.token) != config_.end_ids.end();
    if (is_end || at_max) {
      // Only the first `width` candidates may finish; the rest are there to keep `width` beams alive.
      if (i < static_cast<size_t>(width)) {
        BeamHypothesis h;
        h.tokens = live_tokens_[c.parent];
        h.tokens.push_back(c.token);
        h.log_probs = live_log_probs_[c.parent];
        h.log_probs.push_back(c.log_prob);
        h.sum_log_prob = c.sum;
        h.score = c.sum / factor;
        h.ended_by_end_id = is_end;
        add_finished(std::move(h));
      }
      continue;
    }
    if (static_cast<int>(next.size()) == width) continue;
    next.push_back({c.parent, c.token});
    next_tokens.push_back(live_tokens_[c.parent]);
    next_tokens.back().push_back(c.token);
    next_log_probs.push_back(live_log_probs_[c.parent]);
    next_log_probs.back().push_back(c.log_prob);
    next_sums.push_back(c.sum);
  }
  live_tokens_ = std::move(next_tokens);
  live_log_probs_ = std::move(next_log_probs);
  live_sums_ = std::move(next_sums);
  steps_ = generated;

  if (next.empty()) {
    done_ = true;  // max_new_tokens: every candidate ended
  } else if (finished_.size() == static_cast<size_t>(width)) {
    if (config_.early_stopping == 1) {
      done_ = true;
    } else {
      // Can the best live beam still beat the worst finished hypothesis? "never" with a positive length
      // penalty bounds it at max_new_tokens (longer is better there); otherwise at the current length.
      const int32_t len =
          config_.early_stopping == -1 && config_.length_penalty > 0.0f ? config_.max_new_tokens : steps_;
      const float best = *std::max_element(live_sums_.begin(), live_sums_.end()) /
                         length_factor(len, config_.length_penalty);
      done_ = !(best > finished_.back().score);
    }
  }
  if (done_) {
    live_tokens_.clear();
    live_log_probs_.clear();
    live_sums_.clear();
    return {};
  }
  return next;
}

std::vector<BeamHypothesis> BeamSearcher::finalize() {
  if (!done_) {
    const float factor = length_factor(steps_, config_.length_penalty);
    for (size_t b = 0; b < live_tokens_.size() && steps_ > 0; ++b) {
      BeamHypothesis h;
      h.tokens = live_tokens_[b];
      h.log_probs = live_log_probs_[b];
      h.sum_log_prob = live_sums_[b];
      h.score = live_sums_[b] / factor;
      add_finished(std::move(h));
    }
    done_ = true;
    live_tokens_.clear();
    live_log_probs_.clear();
    live_sums_.clear();
  }
  return finished_;
}

}  // namespace kiln
