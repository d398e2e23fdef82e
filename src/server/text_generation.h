// Typed text generation on a text model's tensorrt_llm model: what the OpenAI API runs (the text models' tensor
// contract, text_models.h, is the other way in). A call is a set of executor requests (choices: prompt ids,
// max_new_tokens, sampling, log-prob outputs) sharing stop strings; they run as one TrtllmModel::generate call
// (its statistics, metrics, queue limits). Each choice's ids become text through a TextStream (UTF-8-safe
// deltas, stop strings cut); a stop string ends the choice at once and cancels its request. Chunks carry the
// new text and, when asked, each token's log-prob, its string and its best alternatives.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "executor/request.h"
#include "server/server_core.h"
#include "server/text_models.h"

namespace kiln::server {

struct TextGenerationCall {
  std::vector<Request> choices;   // input_ids set; beam_width 1; on_response is generate_text's own
  std::vector<std::string> stop;  // stop strings (matched on the text of every choice)
  bool token_details = false;     // fill TextChunk::tokens (output.return_log_probs / top_log_probs as asked)
  std::string client_id;
  uint64_t priority = 0;
  std::optional<uint64_t> timeout_us;
};

struct TokenAlternative {
  int32_t id = 0;
  std::string text;
  float log_prob = 0.0f;
};

struct GeneratedToken {
  int32_t id = 0;
  std::string text;                    // TextStream::token_text: special tokens shown, U+FFFD for part of a character
  float log_prob = 0.0f;               // 0 unless the request asked for log-probs
  std::vector<TokenAlternative> top;   // the request's top_log_probs best, best first
};

enum class TextFinish { kNone, kStop, kLength, kCancelled };  // kStop: an end id, or a stop string

struct TextChunk {
  size_t choice = 0;
  Status error;                        // the choice failed (the call's other choices are cancelled)
  std::string text;                    // new text: complete UTF-8 characters, no stop string
  std::vector<GeneratedToken> tokens;  // token_details: the tokens this chunk covers
  bool final = false;                  // the choice's last chunk
  TextFinish finish = TextFinish::kNone;
  int32_t completion_tokens = 0;       // final: tokens generated, an end id that ended it included
};

// Called on the tensorrt_llm model's reply worker, in order; every choice ends with one final chunk.
using TextChunkFn = std::function<void(TextChunk)>;

// Starts the call. Errors found before anything is queued come back here and no chunk follows.
Result<CancelFn> generate_text(const TextModelInfo& model, TextGenerationCall call, TextChunkFn on_chunk);

}  // namespace kiln::server
