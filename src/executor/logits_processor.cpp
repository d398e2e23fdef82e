#include "executor/logits_processor.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_map>

namespace kiln {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::string num(float v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

Status outside(const std::string& field, const std::string& value, const std::string& range) {
  return invalid_argument(field + "=" + value + " is outside " + range);
}

std::string id_range(int64_t vocab) { return "[0, " + std::to_string(vocab) + ")"; }

// Every SamplingConfig field but beam_width (whose limit is the engine's, not the vocabulary's).
Status validate_sampling_fields(const SamplingConfig& s, int64_t vocab) {
  if (!(std::isfinite(s.temperature) && s.temperature >= 0.0f))
    return outside("temperature", num(s.temperature), "[0, inf)");
  if (s.top_k < 0 || s.top_k > vocab)
    return outside("runtime_top_k", std::to_string(s.top_k), "[0, " + std::to_string(vocab) + "]");
  if (!(s.top_p >= 0.0f && s.top_p <= 1.0f)) return outside("runtime_top_p", num(s.top_p), "[0, 1]");
  if (!(s.top_p_min > 0.0f && s.top_p_min <= 1.0f)) return outside("runtime_top_p_min", num(s.top_p_min), "(0, 1]");
  if (!(s.top_p_decay > 0.0f && s.top_p_decay <= 1.0f))
    return outside("runtime_top_p_decay", num(s.top_p_decay), "(0, 1]");
  if (s.top_p_reset_id && (*s.top_p_reset_id < 0 || *s.top_p_reset_id >= vocab))
    return outside("runtime_top_p_reset_ids", std::to_string(*s.top_p_reset_id), id_range(vocab));
  if (!(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.0f))
    return outside("repetition_penalty", num(s.repetition_penalty), "(0, inf)");
  if (!std::isfinite(s.presence_penalty)) return outside("presence_penalty", num(s.presence_penalty), "(-inf, inf)");
  if (!std::isfinite(s.frequency_penalty)) return outside("frequency_penalty", num(s.frequency_penalty), "(-inf, inf)");
  if (s.min_length < 0) return outside("min_length", std::to_string(s.min_length), "[0, inf)");
  if (!std::isfinite(s.length_penalty)) return outside("len_penalty", num(s.length_penalty), "(-inf, inf)");
  if (!(std::isfinite(s.beam_search_diversity_rate) && s.beam_search_diversity_rate >= 0.0f))
    return outside("beam_search_diversity_rate", num(s.beam_search_diversity_rate), "[0, inf)");
  return {};
}

Status validate_words(const char* field, const std::vector<std::vector<int32_t>>& words, int64_t vocab) {
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i].empty()) return invalid_argument(std::string(field) + "[" + std::to_string(i) + "] is an empty word");
    for (size_t j = 0; j < words[i].size(); ++j) {
      const int32_t t = words[i][j];
      if (t < 0 || t >= vocab)
        return outside(std::string(field) + "[" + std::to_string(i) + "][" + std::to_string(j) + "]", std::to_string(t),
                       id_range(vocab));
    }
  }
  return {};
}

// Per-thread scratch [vocab] reused across calls: `stamp` marks tokens already seen in this call (a fresh
// generation number per call, so nothing is cleared), `count` is all zeros between calls.
struct Scratch {
  std::vector<uint32_t> stamp;
  std::vector<int32_t> count;
  uint32_t generation = 0;

  void fit(int64_t vocab) {
    if (static_cast<int64_t>(stamp.size()) < vocab) {
      stamp.resize(vocab, 0);
      count.resize(vocab, 0);
    }
  }
  uint32_t next_generation() {
    if (++generation == 0) {  // wrapped: old stamps could collide
      std::fill(stamp.begin(), stamp.end(), 0);
      generation = 1;
    }
    return generation;
  }
};

Scratch& scratch(int64_t vocab) {
  thread_local Scratch s;
  s.fit(vocab);
  return s;
}

}  // namespace

Status SamplingConfig::validate(int64_t vocab_size, int max_beam_width) const {
  if (beam_width < 1 || beam_width > max_beam_width)
    return outside("beam_width", std::to_string(beam_width), "[1, " + std::to_string(max_beam_width) + "]");
  return validate_sampling_fields(*this, vocab_size);
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNotFinished:
      return "not_finished";
    case FinishReason::kEndId:
      return "end_id";
    case FinishReason::kStopWords:
      return "stop_words";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Result<std::vector<std::vector<int32_t>>> words_from_offsets(const std::vector<int32_t>& ids,
                                                             const std::vector<int32_t>& offsets) {
  std::vector<std::vector<int32_t>> words;
  int32_t start = 0;
  bool padding = false;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const int32_t end = offsets[i];
    const std::string at = "offsets[" + std::to_string(i) + "]=" + std::to_string(end);
    if (end == -1) {
      padding = true;
      continue;
    }
    if (padding) return invalid_argument(at + " follows -1 padding (only the end of the offsets row is padded)");
    if (end < 0) return invalid_argument(at + " is negative (only -1, as padding, is allowed)");
    if (end < start)
      return invalid_argument(at + " is below the previous offset " + std::to_string(start) +
                              " (offsets are cumulative end positions)");
    if (end == start) return invalid_argument(at + " equals the previous end: word " + std::to_string(i) + " is empty");
    if (end > static_cast<int64_t>(ids.size()))
      return invalid_argument(at + " is past the " + std::to_string(ids.size()) + " ids of row 0");
    words.emplace_back(ids.begin() + start, ids.begin() + end);
    start = end;
  }
  return words;
}

Status LogitsProcessor::validate(const Request& request, int64_t vocab_size) {
  KILN_RETURN_IF_ERROR(validate_sampling_fields(request.sampling, vocab_size));
  const auto& bias = request.embedding_bias;
  if (!bias.empty()) {
    if (static_cast<int64_t>(bias.size()) != vocab_size)
      return invalid_argument("embedding_bias has " + std::to_string(bias.size()) +
                              " values; it must be empty or hold one per vocabulary entry (" +
                              std::to_string(vocab_size) + ")");
    for (size_t i = 0; i < bias.size(); ++i)  // -inf is allowed: it bans the token
      if (std::isnan(bias[i]) || bias[i] == std::numeric_limits<float>::infinity())
        return outside("embedding_bias[" + std::to_string(i) + "]", num(bias[i]), "[-inf, inf)");
  }
  KILN_RETURN_IF_ERROR(validate_words("bad_words_list", request.bad_words, vocab_size));
  KILN_RETURN_IF_ERROR(validate_words("stop_words_list", request.stop_words, vocab_size));
  if (request.end_ids)
    for (int32_t t : *request.end_ids)
      if (t < 0 || t >= vocab_size) return outside("end_id", std::to_string(t), id_range(vocab_size));
  return {};
}

LogitsProcessor::LogitsProcessor(const Request& request, std::vector<int32_t> end_ids, int64_t vocab_size)
    : vocab_(vocab_size),
      embedding_bias_(request.embedding_bias),
      repetition_penalty_(request.sampling.repetition_penalty),
      presence_penalty_(request.sampling.presence_penalty),
      frequency_penalty_(request.sampling.frequency_penalty),
      min_length_(request.sampling.min_length) {
  if (static_cast<int64_t>(embedding_bias_.size()) != vocab_) embedding_bias_.clear();
  auto in_range = [&](int32_t t) { return t >= 0 && t < vocab_; };
  for (int32_t t : end_ids)
    if (in_range(t)) end_ids_.push_back(t);
  for (const auto& w : request.bad_words) {
    bool ok = !w.empty();
    for (int32_t t : w) ok = ok && in_range(t);
    if (!ok) continue;
    if (w.size() == 1)
      banned_.push_back(w[0]);
    else
      bad_sequences_.push_back(w);
  }
  active_ = !embedding_bias_.empty() || repetition_penalty_ != 1.0f || presence_penalty_ != 0.0f ||
            frequency_penalty_ != 0.0f || !banned_.empty() || !bad_sequences_.empty() ||
            (min_length_ > 0 && !end_ids_.empty());
}

void LogitsProcessor::penalty_entries(std::span<const int32_t> prompt, std::span<const int32_t> output,
                                      std::vector<PenaltyEntry>& out) const {
  if (!active_) return;
  std::unordered_map<int32_t, size_t> at;  // token -> its entry
  auto entry = [&](int32_t t) -> PenaltyEntry& {
    auto [it, fresh] = at.try_emplace(t, out.size());
    if (fresh) out.push_back(PenaltyEntry{t});
    return out[it->second];
  };
  auto in_range = [&](int32_t t) { return t >= 0 && t < vocab_; };
  if (repetition_penalty_ != 1.0f) {
    for (int32_t t : prompt)
      if (in_range(t)) entry(t).repetition = true;
    for (int32_t t : output)
      if (in_range(t)) entry(t).repetition = true;
  }
  if (presence_penalty_ != 0.0f || frequency_penalty_ != 0.0f)
    for (int32_t t : output)
      if (in_range(t)) ++entry(t).output_count;
  for (int32_t t : banned_) entry(t).banned = true;
  if (!bad_sequences_.empty()) {
    const size_t n = prompt.size() + output.size();
    auto tok = [&](size_t i) { return i < prompt.size() ? prompt[i] : output[i - prompt.size()]; };
    for (const auto& w : bad_sequences_) {
      const size_t prefix = w.size() - 1;
      if (prefix > n) continue;
      bool match = true;
      for (size_t j = 0; j < prefix && match; ++j) match = tok(n - prefix + j) == w[j];
      if (match) entry(w.back()).banned = true;
    }
  }
  if (static_cast<int64_t>(output.size()) < min_length_)
    for (int32_t t : end_ids_) entry(t).banned = true;
}

void LogitsProcessor::apply(std::span<const int32_t> prompt, std::span<const int32_t> output, float* logits) const {
  if (!active_) return;
  auto in_range = [&](int32_t t) { return t >= 0 && t < vocab_; };

  if (!embedding_bias_.empty())
    for (int64_t i = 0; i < vocab_; ++i) logits[i] += embedding_bias_[i];

  if (repetition_penalty_ != 1.0f) {
    Scratch& s = scratch(vocab_);
    const uint32_t gen = s.next_generation();
    const float p = repetition_penalty_;
    auto penalize = [&](int32_t t) {
      if (!in_range(t) || s.stamp[t] == gen) return;  // once per distinct token
      s.stamp[t] = gen;
      float& l = logits[t];
      l = l < 0.0f ? l * p : l / p;
    };
    for (int32_t t : prompt) penalize(t);
    for (int32_t t : output) penalize(t);
  }

  if (presence_penalty_ != 0.0f || frequency_penalty_ != 0.0f) {
    Scratch& s = scratch(vocab_);
    for (int32_t t : output)
      if (in_range(t)) ++s.count[t];
    for (int32_t t : output) {
      if (!in_range(t) || s.count[t] == 0) continue;  // zeroed below once applied: each token once
      logits[t] -= presence_penalty_ + frequency_penalty_ * static_cast<float>(s.count[t]);
      s.count[t] = 0;
    }
  }

  for (int32_t t : banned_) logits[t] = kNegInf;
  if (!bad_sequences_.empty()) {
    const size_t n = prompt.size() + output.size();
    auto at = [&](size_t i) { return i < prompt.size() ? prompt[i] : output[i - prompt.size()]; };
    for (const auto& w : bad_sequences_) {
      const size_t prefix = w.size() - 1;
      if (prefix > n) continue;
      bool match = true;
      for (size_t j = 0; j < prefix && match; ++j) match = at(n - prefix + j) == w[j];
      if (match) logits[w.back()] = kNegInf;
    }
  }

  if (static_cast<int64_t>(output.size()) < min_length_)
    for (int32_t t : end_ids_) logits[t] = kNegInf;
}

}  // namespace kiln
