#include "executor/decoding.h"

#include <algorithm>
#include <cmath>
#include <span>

namespace kiln {

namespace {

std::span<const int32_t> prompt_of(const RequestState& r, const Sequence& s) {
  return {s.tokens.data(), static_cast<size_t>(r.prompt_len)};
}
std::span<const int32_t> output_of(const RequestState& r, const Sequence& s) {
  return {s.tokens.data() + r.prompt_len, s.tokens.size() - r.prompt_len};
}

bool ends_with(std::span<const int32_t> seq, const std::vector<int32_t>& word) {
  return word.size() <= seq.size() && std::equal(word.rbegin(), word.rend(), seq.rbegin());
}

// In place: row = log_softmax(row), stably (float exp terms, double sum and subtraction).
void log_softmax(float* row, int64_t n) {
  const float mx = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(row[i] - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) row[i] = static_cast<float>(row[i] - lse);
}

// Appends a picked token to the only sequence and sets its finish reason (end id, stop word, length).
void append_token(RequestState& r, Sample pick) {
  Sequence& s = r.seqs[0];
  r.sampler.advance(pick.token);
  s.tokens.push_back(pick.token);
  s.log_probs.push_back(pick.log_prob);
  if (r.req.output.top_log_probs > 0) s.top_log_probs.push_back(std::move(pick.top));
  const auto out = output_of(r, s);
  if (std::find(r.end_ids.begin(), r.end_ids.end(), pick.token) != r.end_ids.end()) {
    s.finish = FinishReason::kEndId;
  } else if (std::any_of(r.req.stop_words.begin(), r.req.stop_words.end(),
                         [&](const std::vector<int32_t>& w) { return ends_with(out, w); })) {
    s.finish = FinishReason::kStopWords;
  } else if (static_cast<int64_t>(out.size()) >= r.req.max_new_tokens) {
    s.finish = FinishReason::kLength;
  }
}

}  // namespace

void sample_next_token(RequestState& r, const float* raw, int64_t vocab, std::vector<float>& scratch) {
  Sequence& s = r.seqs[0];
  if (r.req.output.return_generation_logits) s.generation_logits.insert(s.generation_logits.end(), raw, raw + vocab);
  scratch.assign(raw, raw + vocab);
  r.processor.apply(prompt_of(r, s), output_of(r, s), scratch.data());
  append_token(r, r.sampler.sample(scratch.data(), vocab, r.req.output.return_log_probs, r.req.output.top_log_probs));
}

bool next_token_is_argmax(const RequestState& r) {
  const OutputConfig& o = r.req.output;
  return !r.is_beam_search() && r.req.sampling.is_greedy() && !r.processor.active() && !o.return_generation_logits &&
         !o.return_log_probs && o.top_log_probs == 0;
}

void append_argmax_token(RequestState& r, int32_t token) {
  Sample pick;
  pick.token = token;
  append_token(r, std::move(pick));
}

TokenPick token_pick(const RequestState& r, bool device_sampling) {
  const OutputConfig& o = r.req.output;
  if (r.is_beam_search() || o.return_generation_logits || o.top_log_probs > 0) return TokenPick::kHost;
  if (next_token_is_argmax(r)) return TokenPick::kArgmax;
  return device_sampling && r.processor.device_compatible() ? TokenPick::kDevice : TokenPick::kHost;
}

bool picks_without_last_token(const RequestState& r) {
  return !r.processor.active() && !r.req.sampling.top_p_reset_id;
}

SamplingRow sampling_row(const RequestState& r, int32_t pending, std::vector<PenaltyEntry>& penalties) {
  const SamplingConfig c = RequestState::sampler_config(r.req.sampling);
  SamplingRow row;
  row.temperature = r.sampler.greedy() ? 0.0f : c.temperature;
  row.top_k = c.top_k;
  row.top_p = r.sampler.top_p();
  for (int32_t i = 0; i < pending; ++i)  // TokenSampler::advance for tokens picked but not seen (no reset id here)
    if (c.top_p_decay != 1.0f && c.top_p > 0.0f) row.top_p = std::max(row.top_p * c.top_p_decay, c.top_p_min);
  row.seed = r.sampler.seed();
  row.step = r.sampler.step() + static_cast<uint64_t>(pending);
  row.repetition_penalty = c.repetition_penalty;
  row.presence_penalty = c.presence_penalty;
  row.frequency_penalty = c.frequency_penalty;
  row.penalties_begin = static_cast<int32_t>(penalties.size());
  const Sequence& s = r.seqs[0];
  r.processor.penalty_entries(prompt_of(r, s), output_of(r, s), penalties);
  row.penalties_end = static_cast<int32_t>(penalties.size());
  return row;
}

void append_device_token(RequestState& r, int32_t token, float log_prob) {
  Sample pick;
  pick.token = token;
  pick.log_prob = r.req.output.return_log_probs ? log_prob : 0.0f;
  append_token(r, std::move(pick));
}

void beam_step(RequestState& r, const float* rows, int64_t vocab, KvCacheManager& kv, std::vector<float>& scratch) {
  const int live = static_cast<int>(r.seqs.size());
  if (!r.beams) {
    const SamplingConfig& c = r.req.sampling;
    r.beams = std::make_unique<BeamSearcher>(BeamSearchConfig{c.beam_width, c.length_penalty, c.early_stopping,
                                                              c.beam_search_diversity_rate, r.end_ids,
                                                              r.req.max_new_tokens});
  }
  // transformers' order: log-softmax first, then the logits processors on the log-probs.
  scratch.assign(rows, rows + static_cast<size_t>(live) * vocab);
  for (int i = 0; i < live; ++i) {
    float* row = scratch.data() + static_cast<size_t>(i) * vocab;
    log_softmax(row, vocab);
    r.processor.apply(prompt_of(r, r.seqs[i]), output_of(r, r.seqs[i]), row);
  }
  const std::vector<BeamChoice> next = r.beams->step(scratch.data(), live, vocab);
  std::vector<Sequence> grown;
  grown.reserve(next.size());
  for (const BeamChoice& c : next) {
    const Sequence& parent = r.seqs[c.parent];
    Sequence s;
    s.tokens = parent.tokens;
    s.tokens.push_back(c.token);
    s.computed = parent.computed;
    s.kv = kv.fork(parent.kv);
    s.log_probs = parent.log_probs;
    s.log_probs.push_back(scratch[static_cast<size_t>(c.parent) * vocab + c.token]);
    if (r.req.output.return_generation_logits) {
      s.generation_logits = parent.generation_logits;
      const float* raw = rows + static_cast<size_t>(c.parent) * vocab;
      s.generation_logits.insert(s.generation_logits.end(), raw, raw + vocab);
    }
    grown.push_back(std::move(s));
  }
  for (Sequence& s : r.seqs) kv.release(s.kv);
  r.seqs = std::move(grown);
  if (r.beams->done()) {
    r.hypotheses = r.beams->finalize();
    for (Sequence& s : r.seqs) kv.release(s.kv);
  }
}

bool request_done(const RequestState& r) {
  if (r.is_beam_search()) return !r.hypotheses.empty();
  return r.seqs[0].finish != FinishReason::kNotFinished;
}

int32_t visible_output_len(const RequestState& r, const Sequence& s) {
  const int32_t n = static_cast<int32_t>(s.tokens.size()) - r.prompt_len;
  return s.finish == FinishReason::kEndId ? n - 1 : n;
}

Response stream_chunk(RequestState& r, int64_t vocab) {
  Response resp;
  resp.id = r.id;
  resp.prompt_len = r.prompt_len;
  if (r.is_beam_search()) {
    for (const Sequence& s : r.seqs) {
      resp.output_ids.emplace_back(s.tokens.begin() + r.prompt_len, s.tokens.end());
      if (r.req.output.return_log_probs) resp.output_log_probs.push_back(s.log_probs);
      resp.sequence_lengths.push_back(static_cast<int32_t>(s.tokens.size()) - r.prompt_len);
      resp.finish_reasons.push_back(FinishReason::kNotFinished);
    }
    return resp;
  }
  const Sequence& s = r.seqs[0];
  const int32_t end = visible_output_len(r, s);
  const int32_t from = std::min(r.streamed, end);
  resp.is_delta = true;
  resp.output_ids.emplace_back(s.tokens.begin() + r.prompt_len + from, s.tokens.begin() + r.prompt_len + end);
  if (r.req.output.return_log_probs) resp.output_log_probs.emplace_back(s.log_probs.begin() + from, s.log_probs.begin() + end);
  if (r.req.output.top_log_probs > 0)
    resp.top_log_probs.emplace_back(s.top_log_probs.begin() + from, s.top_log_probs.begin() + end);
  if (r.req.output.return_generation_logits)
    resp.generation_logits.assign(s.generation_logits.begin() + static_cast<size_t>(from) * vocab,
                                  s.generation_logits.begin() + static_cast<size_t>(end) * vocab);
  resp.sequence_lengths.push_back(end);
  resp.finish_reasons.push_back(s.finish);
  r.streamed = end;
  return resp;
}

Response final_response(RequestState& r, int64_t vocab, FinishReason forced) {
  Response resp;
  const bool echo = !r.req.output.exclude_input_from_output && !r.req.streaming;
  const bool log_probs = r.req.output.return_log_probs;
  auto add_beam = [&](std::vector<int32_t> ids, std::vector<float> lps, FinishReason why) {
    resp.cum_log_probs.push_back(0.0f);
    for (float lp : lps) resp.cum_log_probs.back() += lp;
    resp.sequence_lengths.push_back(static_cast<int32_t>(ids.size()) + (echo ? r.prompt_len : 0));
    if (echo) ids.insert(ids.begin(), r.req.input_ids.begin(), r.req.input_ids.end());
    resp.output_ids.push_back(std::move(ids));
    if (log_probs) resp.output_log_probs.push_back(std::move(lps));
    resp.finish_reasons.push_back(forced != FinishReason::kNotFinished ? forced : why);
  };
  if (r.is_beam_search() && !r.hypotheses.empty()) {
    for (const BeamHypothesis& h : r.hypotheses) {
      const size_t n = h.tokens.size() - (h.ended_by_end_id && !h.tokens.empty() ? 1 : 0);
      add_beam({h.tokens.begin(), h.tokens.begin() + n}, {h.log_probs.begin(), h.log_probs.begin() + n},
               h.ended_by_end_id ? FinishReason::kEndId : FinishReason::kLength);
      resp.cum_log_probs.back() = h.sum_log_prob;
    }
  } else if (r.is_beam_search()) {  // cancelled mid-search: the live beams as they are
    for (const Sequence& s : r.seqs)
      add_beam({s.tokens.begin() + r.prompt_len, s.tokens.end()}, s.log_probs, FinishReason::kNotFinished);
  } else {
    Sequence& s = r.seqs[0];
    const int32_t end = visible_output_len(r, s);
    const int32_t from = r.req.streaming ? std::min(r.streamed, end) : 0;
    add_beam({s.tokens.begin() + r.prompt_len + from, s.tokens.begin() + r.prompt_len + end},
             {s.log_probs.begin() + from, s.log_probs.begin() + end}, s.finish);
    if (r.req.output.top_log_probs > 0)
      resp.top_log_probs.emplace_back(s.top_log_probs.begin() + from, s.top_log_probs.begin() + end);
    // Cumulative log-prob and length cover the whole output, also when the chunk holds only the tail.
    resp.cum_log_probs.back() = 0.0f;
    for (int32_t i = 0; i < end; ++i) resp.cum_log_probs.back() += s.log_probs[i];
    resp.sequence_lengths.back() = end + (echo ? r.prompt_len : 0);
    if (r.req.output.return_generation_logits)
      resp.generation_logits.assign(s.generation_logits.begin() + static_cast<size_t>(from) * vocab,
                                    s.generation_logits.begin() + static_cast<size_t>(end) * vocab);
    resp.is_delta = r.req.streaming;
    r.streamed = end;
  }
  if (!log_probs) resp.cum_log_probs.clear();
  resp.id = r.id;
  resp.is_final = true;
  resp.prompt_len = r.prompt_len;
  resp.context_logits = std::move(r.context_logits);
  return resp;
}

}  // namespace kiln
