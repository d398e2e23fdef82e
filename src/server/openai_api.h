// The OpenAI-compatible API on the HTTP port: GET /v1/models[/{id}], POST /v1/completions and
// POST /v1/chat/completions, for the repository's text-generation models (ensemble, tensorrt_llm_bls).
//
// A request goes: body -> parse_openai_request (types, ranges, fields that would change the result but are
// not supported: all refused before any work, in OpenAI's error shape naming the field) -> the model
// (text_generation_model: its tokenizer and tensorrt_llm model) -> plan_openai_request (chat template with
// add_generation_prompt, tokenization, prompt and max_tokens against the engine's limits, one executor
// request per choice, seeds) -> generate_text (text_generation.h: UTF-8-safe deltas, stop strings, log-probs)
// -> OpenAiResponder (OpenAI's response object, or its stream of chunk objects ending in `data: [DONE]`).
// http_frontend only routes /v1/ here and writes what comes back; a client that leaves cancels the call.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "server/server_core.h"
#include "server/text_generation.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

// What the API hands the HTTP frontend: a whole response, or one event of a text/event-stream response.
struct OpenAiOutput {
  int status = 200;   // the response's status (a stream's: its first event's)
  std::string body;   // a JSON document; an SSE event's data (a JSON object, or "[DONE]")
  bool sse = false;   // an SSE event
  bool final = true;  // the request's last output
};
// Called in order, from any thread; keep it short (the frontend posts to the connection).
using OpenAiEmit = std::function<void(OpenAiOutput)>;

struct OpenAiStart {
  std::optional<OpenAiOutput> immediate;  // answered at once (models, any error before generation)
  CancelFn cancel;                        // otherwise: generation runs and `emit` delivers the response
};

// Handles a request whose URL path starts with /v1/.
OpenAiStart handle_openai(ServerCore& core, std::string_view method, std::string_view path, std::string_view body,
                          OpenAiEmit emit);

// ---- the pieces (tests use them directly) ----------------------------------------------------------------

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
struct OpenAiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};
std::string openai_error_json(const OpenAiError& e);
// A Status from the model or the executor as an OpenAI error (InvalidArgument 400, NotFound 404,
// Unavailable / DeadlineExceeded 503, ...).
OpenAiError openai_error_from(const Status& s);

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

constexpr int kOpenAiMaxChoices = 16;           // n, and prompts x n
constexpr int64_t kOpenAiMaxTokens = 1 << 17;   // choices x max_tokens
constexpr int kOpenAiMaxStops = 4;
constexpr int kOpenAiMaxCompletionLogprobs = 5;  // completions: logprobs
constexpr int kOpenAiMaxTopLogprobs = 20;        // chat: top_logprobs

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;
  std::vector<std::string> prompts;               // completions, text prompts
  std::vector<std::vector<int32_t>> prompt_ids;   // completions, token-id prompts (instead of text)
  nlohmann::json messages;                        // chat: [{"role", "content" (a string), "name"?, ...}]
  std::optional<int64_t> max_tokens;
  double temperature = 1.0, top_p = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0;
  std::vector<std::string> stop;
  std::optional<uint64_t> seed;
  int n = 1;
  bool logprobs = false;   // completions: logprobs given (0..5); chat: logprobs true
  int top_logprobs = 0;    // alternatives per token
  bool echo = false;       // completions
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses the body and checks everything that needs no model. Refused: malformed JSON, a missing or
// mistyped field, values out of range, unknown fields, and fields kiln does not support that would change
// the result (tools, response_format, logit_bias, suffix, best_of > n, echo with logprobs, ...).
std::variant<OpenAiRequest, OpenAiError> parse_openai_request(OpenAiEndpoint endpoint, std::string_view body,
                                                              int max_json_depth);

struct OpenAiLimits {
  int64_t max_input_len = 0, max_seq_len = 0, vocab_size = 0;
};

struct OpenAiPlan {
  std::vector<std::vector<int32_t>> prompt_ids;  // per prompt
  std::vector<std::string> prompt_texts;         // per prompt (echo; the rendered chat prompt)
  int64_t max_tokens = 0;                        // per choice
  TextGenerationCall call;                       // choices prompt-major: prompt p, choice j -> p * n + j
};

// Renders / tokenizes the prompts and checks them against the engine: prompt length (max_input_len),
// max_tokens (1 .. max_seq_len - prompt; defaults: completions 16, chat the rest of the sequence), choices x
// max_tokens. Seeds: choice j of a prompt gets seed + j.
std::variant<OpenAiPlan, OpenAiError> plan_openai_request(const OpenAiRequest& r, const Tokenizer& tok,
                                                          bool add_special_tokens, const OpenAiLimits& limits);

// GET /v1/models: the loaded text-generation models in OpenAI's list shape.
std::string openai_models_json(ServerCore& core);

// Turns a call's TextChunks into OpenAI's response object, or (stream) its chunk objects, usage chunk and
// `[DONE]`. Thread-safe; emits in order.
class OpenAiResponder {
 public:
  OpenAiResponder(const OpenAiRequest& request, const OpenAiPlan& plan, std::string id, int64_t created,
                  OpenAiEmit emit);
  // Generation started: a stream's first events (chat: the assistant role of each choice; completions with
  // echo: the prompt). Chunks that come first send them themselves.
  void begin();
  void on_chunk(TextChunk chunk);

 private:
  struct ChoiceState {
    std::string text;
    nlohmann::json logprobs;       // the whole response's log-prob entries (not streaming)
    int64_t text_offset = 0;       // completions: code points before the next token
    std::string finish_reason;
    int32_t completion_tokens = 0;
    bool done = false;
  };
  void begin_locked();
  nlohmann::json chunk_base() const;
  nlohmann::json logprobs_json(const std::vector<GeneratedToken>& tokens, ChoiceState& c) const;
  nlohmann::json usage_json() const;
  void emit_event(const nlohmann::json& j, bool final = false);
  void fail(const Status& s);
  void finish_all();

  const bool chat_, stream_, include_usage_, logprobs_, echo_;
  const int top_logprobs_;
  const size_t n_;
  std::string model_, id_;
  int64_t created_;
  std::vector<std::string> prompt_texts_;
  int64_t prompt_tokens_ = 0;
  OpenAiEmit emit_;
  std::mutex mu_;
  std::vector<ChoiceState> choices_;
  size_t remaining_;
  bool begun_ = false, ended_ = false;
};

}  // namespace kiln::server
