// One decoding step of one request, from the raw logits of its sequences: sampling for a single
// sequence, a beam-search step for beams; finish conditions; and the responses they produce.
#pragma once

#include <vector>

#include "executor/kv_cache_manager.h"
#include "executor/request_state.h"

namespace kiln {

// raw: the sequence's raw logits [vocab]. Appends the chosen token to r.seqs[0] and sets its finish reason.
void sample_next_token(RequestState& r, const float* raw, int64_t vocab, std::vector<float>& scratch);

// Whether the next token of `r` is the plain argmax of the raw logits (greedy, no beam, no logits processor,
// no log-probs or logits returned): then the model may compute it where the logits are.
bool next_token_is_argmax(const RequestState& r);
// Appends `token` (the argmax of the raw logits) as sample_next_token would have.
void append_argmax_token(RequestState& r, int32_t token);

// Where the next token of `r` can be picked: on the host from downloaded logits (beams, returned logits or top
// log-probs, an embedding bias), as the argmax where the logits are (next_token_is_argmax), or by the backend's
// sampler (`device_sampling`: Backend::samples_on_device()).
enum class TokenPick { kHost, kArgmax, kDevice };
TokenPick token_pick(const RequestState& r, bool device_sampling);
// Whether the host may launch the forward after the one that picks r's next token before it knows that token:
// the pick does not depend on the token's value (no penalties or bans, no top_p reset on a token id).
bool picks_without_last_token(const RequestState& r);
// The device sampler's settings for r's next token, `pending` tokens after those the host has (penalty and ban
// entries of the known tokens appended to `penalties`).
SamplingRow sampling_row(const RequestState& r, int32_t pending, std::vector<PenaltyEntry>& penalties);
// Appends a token picked on the device (log_prob: when return_log_probs, Sample::log_prob of it).
void append_device_token(RequestState& r, int32_t token, float log_prob);

// rows: raw logits [live, vocab] of r.seqs in order. Forks the surviving beams' KV blocks; when the
// search is done fills r.hypotheses and releases every beam.
void beam_step(RequestState& r, const float* rows, int64_t vocab, KvCacheManager& kv, std::vector<float>& scratch);

// Whether the request has nothing left to generate.
bool request_done(const RequestState& r);

// Generated tokens of a sequence that a response shows: an end id that stopped it is not shown.
int32_t visible_output_len(const RequestState& r, const Sequence& s);

// A streaming chunk: width 1 sends the tokens since the last chunk; beams send every live beam whole.
Response stream_chunk(RequestState& r, int64_t vocab);
// The final response (with `reason` forced when given, e.g. cancelled).
Response final_response(RequestState& r, int64_t vocab, FinishReason forced = FinishReason::kNotFinished);

}  // namespace kiln
