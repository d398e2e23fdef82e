#include "server/openai_api.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <set>

#include "server/http_json.h"  // parse_request_json
#include "server/model.h"
#include "server/text_models.h"
#include "tokenizer/chat_template.h"

namespace kiln::server {

namespace {

using json = nlohmann::json;

constexpr int64_t kDefaultCompletionTokens = 16;  // OpenAI's default max_tokens for /v1/completions
constexpr double kNoLogProb = -9999.0;            // OpenAI's value for a log-prob of -inf

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const int64_t kServerStart = unix_seconds();

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 gen{std::random_device{}() ^ static_cast<uint64_t>(unix_seconds())};
  uint64_t a, b;
  {
    std::lock_guard<std::mutex> lock(mu);
    a = gen();
    b = gen();
  }
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%08llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b >> 32));
  return std::string(prefix) + hex;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

OpenAiError bad(std::string param, std::string message, std::string code = "") {
  OpenAiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

OpenAiError not_supported(const std::string& param, const std::string& what) {
  return bad(param, "'" + param + "' is not supported by kiln" + (what.empty() ? "" : ": " + what), "unsupported_parameter");
}

std::string type_of(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

OpenAiError wrong_type(const std::string& param, const char* want, const json& v) {
  return bad(param, "'" + param + "' must be " + want + ", got " + type_of(v), "invalid_type");
}

std::string number_text(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%g", v);
  return b;
}

// The fields a request may carry. Anything else is refused: OpenAI answers "Unrecognized request argument".
const std::set<std::string> kCompletionFields = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs",
    "echo", "stop", "presence_penalty", "frequency_penalty", "best_of", "seed", "user", "suffix", "logit_bias"};
const std::set<std::string> kChatFields = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "logprobs", "top_logprobs", "stop", "presence_penalty", "frequency_penalty", "seed", "user",
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format", "logit_bias",
    "store", "metadata", "modalities", "audio", "prediction", "reasoning_effort", "service_tier",
    "web_search_options", "safety_identifier", "prompt_cache_key"};

// ---- field readers: each returns an error, or nothing when the value is absent (null) or was stored ----

using MaybeError = std::optional<OpenAiError>;

MaybeError read_number(const json& body, const char* key, double lo, double hi, bool lo_open, double& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return wrong_type(key, "a number", *it);
  const double v = it->get<double>();
  if (!std::isfinite(v) || v > hi || (lo_open ? v <= lo : v < lo))
    return bad(key, number_text(v) + " is " + (v > hi ? "greater than the maximum of " + number_text(hi)
                                                      : std::string(lo_open ? "not greater than " : "less than the minimum of ") +
                                                            number_text(lo)) +
                        " - '" + key + "'",
               "invalid_value");
  out = v;
  return std::nullopt;
}

MaybeError read_int(const json& body, const char* key, int64_t lo, int64_t hi, std::optional<int64_t>& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() && !it->is_number_unsigned()) return wrong_type(key, "an integer", *it);
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi))
    return bad(key, std::to_string(it->get<uint64_t>()) + " is greater than the maximum of " + std::to_string(hi) +
                        " - '" + key + "'", "invalid_value");
  const int64_t v = it->get<int64_t>();
  if (v < lo) return bad(key, std::to_string(v) + " is less than the minimum of " + std::to_string(lo) + " - '" + key + "'", "invalid_value");
  if (v > hi) return bad(key, std::to_string(v) + " is greater than the maximum of " + std::to_string(hi) + " - '" + key + "'", "invalid_value");
  out = v;
  return std::nullopt;
}

MaybeError read_bool(const json& body, const char* key, bool& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return wrong_type(key, "a boolean", *it);
  out = it->get<bool>();
  return std::nullopt;
}

// A value that is fine only when absent or "empty" (null, false, "", [], {}): a feature kiln does not have.
bool given(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return false;
  if (it->is_boolean()) return it->get<bool>();
  if (it->is_string() || it->is_array() || it->is_object()) return !it->empty();
  return true;
}

MaybeError read_stop(const json& body, std::vector<std::string>& out) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) {
    if (!it->get<std::string>().empty()) out.push_back(it->get<std::string>());
    return std::nullopt;
  }
  if (!it->is_array()) return wrong_type("stop", "a string or an array of strings", *it);
  if (it->size() > static_cast<size_t>(kOpenAiMaxStops))
    return bad("stop", "'stop' holds " + std::to_string(it->size()) + " sequences; at most " +
                           std::to_string(kOpenAiMaxStops) + " are allowed", "invalid_value");
  for (const json& s : *it) {
    if (!s.is_string()) return wrong_type("stop", "a string or an array of strings", s);
    if (!s.get<std::string>().empty()) out.push_back(s.get<std::string>());
  }
  return std::nullopt;
}

// A token-id prompt: a non-empty array of integers.
MaybeError read_ids(const json& v, std::vector<int32_t>& out) {
  for (const json& e : v) {
    if (!e.is_number_integer() && !e.is_number_unsigned()) return wrong_type("prompt", "a string, an array of strings or token ids", e);
    const int64_t id = e.get<int64_t>();
    if (e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))
      return bad("prompt", "token id " + std::to_string(e.get<uint64_t>()) + " is outside the vocabulary", "invalid_value");
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      return bad("prompt", "token id " + std::to_string(id) + " is outside the vocabulary", "invalid_value");
    out.push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

MaybeError read_prompt(const json& body, OpenAiRequest& r) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return bad("prompt", "'prompt' is required", "missing_required_parameter");
  const json& p = *it;
  if (p.is_string()) {
    r.prompts.push_back(p.get<std::string>());
    return std::nullopt;
  }
  if (!p.is_array()) return wrong_type("prompt", "a string, an array of strings or token ids", p);
  if (p.empty()) return bad("prompt", "'prompt' is empty", "invalid_value");
  if (p[0].is_string()) {
    for (const json& s : p) {
      if (!s.is_string()) return wrong_type("prompt", "an array of strings", s);
      r.prompts.push_back(s.get<std::string>());
    }
  } else if (p[0].is_array()) {
    for (const json& ids : p) {
      if (!ids.is_array()) return wrong_type("prompt", "an array of token-id arrays", ids);
      if (ids.empty()) return bad("prompt", "'prompt' holds an empty token-id array", "invalid_value");
      r.prompt_ids.emplace_back();
      if (auto e = read_ids(ids, r.prompt_ids.back())) return e;
    }
  } else {
    r.prompt_ids.emplace_back();
    if (auto e = read_ids(p, r.prompt_ids.back())) return e;
  }
  return std::nullopt;
}

// messages -> [{"role", "content" as a string, "name"?, "tool_call_id"?}]: a content given as parts is the
// text of its text parts joined by newlines (other part types are refused).
MaybeError read_messages(const json& body, OpenAiRequest& r) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) return bad("messages", "'messages' is required", "missing_required_parameter");
  if (!it->is_array()) return wrong_type("messages", "an array", *it);
  if (it->empty()) return bad("messages", "'messages' must hold at least one message", "invalid_value");
  static const std::set<std::string> kRoles = {"system", "developer", "user", "assistant", "tool"};
  r.messages = json::array();
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return wrong_type(at, "an object", m);
    json out = json::object();
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      return bad(at + ".role", "'" + at + ".role' is required (a string)", "missing_required_parameter");
    const std::string rs = role->get<std::string>();
    if (!kRoles.count(rs))
      return bad(at + ".role", "'" + rs + "' is not one of 'system', 'developer', 'user', 'assistant', 'tool' - '" + at + ".role'",
                 "invalid_value");
    out["role"] = rs == "developer" ? "system" : rs;  // chat templates know system; developer is its new name
    for (const auto& [key, v] : m.items()) {
      if (key == "role") continue;
      if (key == "content") {
        if (v.is_null()) {
          if (rs != "assistant") return bad(at + ".content", "'" + at + ".content' is required", "missing_required_parameter");
          out["content"] = "";
        } else if (v.is_string()) {
          out["content"] = v;
        } else if (v.is_array()) {
          std::string text;
          for (size_t k = 0; k < v.size(); ++k) {
            const json& part = v[k];
            const std::string pat = at + ".content[" + std::to_string(k) + "]";
            if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
              return bad(pat, "'" + pat + "' must be an object with a 'type'", "invalid_type");
            const std::string type = part["type"].get<std::string>();
            if (type != "text") return not_supported(pat + ".type", "content parts of type '" + type + "' (only text)");
            if (!part.contains("text") || !part["text"].is_string())
              return bad(pat + ".text", "'" + pat + ".text' must be a string", "invalid_type");
            for (const auto& [pk, pv] : part.items())
              if (pk != "type" && pk != "text") return not_supported(pat + "." + pk, "");
            if (k) text += "\n";
            text += part["text"].get<std::string>();
          }
          out["content"] = text;
        } else {
          return wrong_type(at + ".content", "a string or an array of content parts", v);
        }
      } else if (key == "name" || key == "tool_call_id") {
        if (v.is_null()) continue;
        if (!v.is_string()) return wrong_type(at + "." + key, "a string", v);
        out[key] = v;
      } else if (key == "refusal" && v.is_null()) {
        continue;
      } else if (key == "tool_calls" || key == "function_call" || key == "audio") {
        if (v.is_null() || (v.is_array() && v.empty())) continue;
        return not_supported(at + "." + key, "tool calls are not supported");
      } else {
        return bad(at + "." + key, "Unrecognized message field supplied: " + key, "unknown_parameter");
      }
    }
    if (!out.contains("content")) return bad(at + ".content", "'" + at + ".content' is required", "missing_required_parameter");
    r.messages.push_back(std::move(out));
  }
  return std::nullopt;
}

MaybeError parse_fields(OpenAiEndpoint endpoint, const json& body, OpenAiRequest& r) {
  const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
  const std::set<std::string>& known = chat ? kChatFields : kCompletionFields;
  for (const auto& [key, v] : body.items())
    if (!known.count(key))
      return bad(key, "Unrecognized request argument supplied: " + key.substr(0, 100), "unknown_parameter");

  auto model = body.find("model");
  if (model == body.end() || model->is_null()) return bad("model", "'model' is required", "missing_required_parameter");
  if (!model->is_string()) return wrong_type("model", "a string", *model);
  r.model = model->get<std::string>();
  if (r.model.empty()) return bad("model", "'model' is empty", "invalid_value");

  // Fields that change the result and that kiln does not implement: refused rather than ignored.
  if (given(body, "logit_bias")) return not_supported("logit_bias", "");
  if (chat) {
    if (given(body, "tools")) return not_supported("tools", "tool calling is not implemented");
    if (given(body, "functions")) return not_supported("functions", "tool calling is not implemented");
    if (auto tc = body.find("tool_choice"); tc != body.end() && !tc->is_null() && !(tc->is_string() && *tc == "none"))
      return not_supported("tool_choice", "tool calling is not implemented");
    if (auto fc = body.find("function_call"); fc != body.end() && !fc->is_null() && !(fc->is_string() && *fc == "none"))
      return not_supported("function_call", "tool calling is not implemented");
    if (auto rf = body.find("response_format"); rf != body.end() && !rf->is_null()) {
      if (!rf->is_object()) return wrong_type("response_format", "an object", *rf);
      if (!(rf->contains("type") && (*rf)["type"] == "text" && rf->size() == 1))
        return not_supported("response_format", "only {\"type\": \"text\"} (no JSON mode or schemas)");
    }
    if (auto mo = body.find("modalities"); mo != body.end() && !mo->is_null() && *mo != json::array({"text"}))
      return not_supported("modalities", "only [\"text\"]");
    for (const char* k : {"audio", "prediction", "reasoning_effort", "web_search_options"})
      if (given(body, k)) return not_supported(k, "");
    bool store = false;  // storing completions on the server is OpenAI's product, not an inference setting
    if (auto e = read_bool(body, "store", store)) return e;
    if (store) return not_supported("store", "completions are not stored");
    if (auto pt = body.find("parallel_tool_calls"); pt != body.end() && !pt->is_null() && !pt->is_boolean())
      return wrong_type("parallel_tool_calls", "a boolean", *pt);
    if (auto md = body.find("metadata"); md != body.end() && !md->is_null() && !md->is_object())
      return wrong_type("metadata", "an object", *md);
    if (auto st = body.find("service_tier"); st != body.end() && !st->is_null() && !st->is_string())
      return wrong_type("service_tier", "a string", *st);
  } else {
    if (auto s = body.find("suffix"); s != body.end() && !s->is_null()) {
      if (!s->is_string()) return wrong_type("suffix", "a string", *s);
      if (!s->get<std::string>().empty()) return not_supported("suffix", "insertion (fill in the middle) is not implemented");
    }
  }
  // Identification and caching hints: checked, otherwise ignored (they change no result).
  for (const char* k : {"user", "safety_identifier", "prompt_cache_key"})
    if (auto u = body.find(k); u != body.end() && !u->is_null() && !u->is_string()) return wrong_type(k, "a string", *u);

  if (chat) {
    if (auto e = read_messages(body, r)) return e;
  } else {
    if (auto e = read_prompt(body, r)) return e;
  }

  std::optional<int64_t> v;
  if (auto e = read_int(body, "n", 1, kOpenAiMaxChoices, v)) return e;
  if (v) r.n = static_cast<int>(*v);
  const int64_t prompts = static_cast<int64_t>(r.prompts.size() + r.prompt_ids.size());
  if (!chat && prompts * r.n > kOpenAiMaxChoices)
    return bad(prompts > kOpenAiMaxChoices ? "prompt" : "n",
               std::to_string(prompts) + " prompts x n=" + std::to_string(r.n) + " asks for " +
                   std::to_string(prompts * r.n) + " completions; at most " + std::to_string(kOpenAiMaxChoices) +
                   " per request",
               "invalid_value");
  if (!chat) {
    v.reset();
    if (auto e = read_int(body, "best_of", 1, kOpenAiMaxChoices, v)) return e;
    if (v && *v < r.n) return bad("best_of", "best_of must be at least n", "invalid_value");
    if (v && *v > r.n) return not_supported("best_of", "best_of greater than n (candidates ranked by log-prob)");
  }

  std::optional<int64_t> max_tokens, max_completion_tokens;
  if (auto e = read_int(body, "max_tokens", 1, std::numeric_limits<int32_t>::max(), max_tokens)) return e;
  if (chat) {
    if (auto e = read_int(body, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max(), max_completion_tokens))
      return e;
    if (max_tokens && max_completion_tokens && *max_tokens != *max_completion_tokens)
      return bad("max_completion_tokens", "give max_completion_tokens or max_tokens, not both", "invalid_value");
    if (max_completion_tokens) max_tokens = max_completion_tokens;
  }
  r.max_tokens = max_tokens;

  if (auto e = read_number(body, "temperature", 0.0, 2.0, false, r.temperature)) return e;
  if (auto e = read_number(body, "top_p", 0.0, 1.0, true, r.top_p)) return e;
  if (auto e = read_number(body, "presence_penalty", -2.0, 2.0, false, r.presence_penalty)) return e;
  if (auto e = read_number(body, "frequency_penalty", -2.0, 2.0, false, r.frequency_penalty)) return e;
  if (auto e = read_stop(body, r.stop)) return e;

  if (auto s = body.find("seed"); s != body.end() && !s->is_null()) {
    if (s->is_number_unsigned()) {
      r.seed = s->get<uint64_t>();
    } else if (s->is_number_integer()) {
      r.seed = static_cast<uint64_t>(s->get<int64_t>());  // negative seeds are seeds too
    } else {
      return wrong_type("seed", "an integer", *s);
    }
  }

  if (chat) {
    if (auto e = read_bool(body, "logprobs", r.logprobs)) return e;
    std::optional<int64_t> top;
    if (auto e = read_int(body, "top_logprobs", 0, kOpenAiMaxTopLogprobs, top)) return e;
    if (top && !r.logprobs && *top > 0)
      return bad("top_logprobs", "top_logprobs needs logprobs set to true", "invalid_value");
    r.top_logprobs = top ? static_cast<int>(*top) : 0;
  } else {
    std::optional<int64_t> lp;
    if (auto l = body.find("logprobs"); l != body.end() && l->is_boolean())
      return wrong_type("logprobs", "an integer (0 to 5: alternatives per token)", *l);
    if (auto e = read_int(body, "logprobs", 0, kOpenAiMaxCompletionLogprobs, lp)) return e;
    r.logprobs = lp.has_value();
    r.top_logprobs = lp ? static_cast<int>(*lp) : 0;
    if (auto e = read_bool(body, "echo", r.echo)) return e;
    if (r.echo && r.logprobs)
      return not_supported("echo", "echo together with logprobs (the prompt's log-probs are not computed)");
  }

  if (auto e = read_bool(body, "stream", r.stream)) return e;
  if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object()) return wrong_type("stream_options", "an object", *so);
    if (!r.stream) return bad("stream_options", "stream_options is only allowed when stream is true", "invalid_value");
    for (const auto& [key, val] : so->items()) {
      if (key != "include_usage") return bad("stream_options." + key, "Unrecognized stream option: " + key, "unknown_parameter");
      if (!val.is_null() && !val.is_boolean()) return wrong_type("stream_options.include_usage", "a boolean", val);
      r.include_usage = val.is_boolean() && val.get<bool>();
    }
  }
  return std::nullopt;
}

const char* finish_name(TextFinish f) {
  switch (f) {
    case TextFinish::kStop:
      return "stop";
    case TextFinish::kLength:
      return "length";
    case TextFinish::kCancelled:
      return "abort";
    case TextFinish::kNone:
      break;
  }
  return "";
}

double log_prob_value(float v) { return std::isfinite(v) ? static_cast<double>(v) : kNoLogProb; }

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
  return b;
}

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

}  // namespace

// ---- errors ----------------------------------------------------------------------------------------------

std::string openai_error_json(const OpenAiError& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return dump(json{{"error", err}});
}

OpenAiError openai_error_from(const Status& s) {
  OpenAiError e;
  e.message = s.message();
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnimplemented:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kResourceExhausted:  // a request the KV cache can never hold
      e.status = 400;
      break;
    case StatusCode::kNotFound:
      e.status = 404;
      e.code = "model_not_found";
      break;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
      e.status = 503;
      e.type = "server_error";
      break;
    default:
      e.status = 500;
      e.type = "server_error";
  }
  return e;
}

// ---- parsing -----------------------------------------------------------------------------------------------

std::variant<OpenAiRequest, OpenAiError> parse_openai_request(OpenAiEndpoint endpoint, std::string_view body,
                                                              int max_json_depth) {
  auto j = parse_request_json(body, max_json_depth);
  if (!j.ok()) {
    OpenAiError e = bad("", "We could not parse the JSON body of your request: " + j.status().message(), "invalid_json");
    return e;
  }
  if (!j->is_object()) return bad("", "The request body must be a JSON object", "invalid_json");
  OpenAiRequest r;
  r.endpoint = endpoint;
  if (auto e = parse_fields(endpoint, *j, r)) return *e;
  return r;
}

// ---- planning ----------------------------------------------------------------------------------------------

std::variant<OpenAiPlan, OpenAiError> plan_openai_request(const OpenAiRequest& r, const Tokenizer& tok,
                                                          bool add_special_tokens, const OpenAiLimits& limits) {
  const bool chat = r.endpoint == OpenAiEndpoint::kChatCompletions;
  const std::string prompt_param = chat ? "messages" : "prompt";
  OpenAiPlan plan;
  if (chat) {
    auto text = apply_chat_template(tok.config(), r.messages, /*add_generation_prompt=*/true);
    if (!text.ok()) {
      if (text.status().code() == StatusCode::kNotFound)
        return bad("model", "model '" + r.model + "' has no chat template (its tokenizer_config.json has no chat_template); "
                            "use /v1/completions", "no_chat_template");
      return bad("messages", "the model's chat template refused the messages: " + text.status().message(), "invalid_value");
    }
    // As transformers' apply_chat_template(tokenize=True): the template writes the special tokens itself.
    auto ids = tok.encode(*text, /*add_special_tokens=*/false);
    if (!ids.ok()) return bad("messages", ids.status().message(), "invalid_value");
    plan.prompt_texts.push_back(std::move(*text));
    plan.prompt_ids.push_back(std::move(*ids));
  } else {
    for (const std::string& p : r.prompts) {
      auto ids = tok.encode(p, add_special_tokens);
      if (!ids.ok()) return bad("prompt", ids.status().message(), "invalid_value");
      plan.prompt_texts.push_back(p);
      plan.prompt_ids.push_back(std::move(*ids));
    }
    for (const std::vector<int32_t>& ids : r.prompt_ids) {
      for (int32_t id : ids)
        if (id >= limits.vocab_size)
          return bad("prompt", "token id " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                                   std::to_string(limits.vocab_size) + ")", "invalid_value");
      std::vector<int32_t> known;  // the echo's text: ids the tokenizer has
      for (int32_t id : ids)
        if (id < tok.vocab_size()) known.push_back(id);
      auto text = tok.decode(known, /*skip_special_tokens=*/false);
      plan.prompt_texts.push_back(text.ok() ? *text : "");
      plan.prompt_ids.push_back(ids);
    }
  }
  int64_t longest = 0;
  for (const auto& ids : plan.prompt_ids) {
    const int64_t len = static_cast<int64_t>(ids.size());
    if (len == 0) return bad(prompt_param, "the prompt is empty (no tokens)", "invalid_value");
    if (len > limits.max_input_len)
      return bad(prompt_param, "This model's maximum input length is " + std::to_string(limits.max_input_len) +
                                   " tokens (max_input_len at build). However, your " + prompt_param + " resulted in " +
                                   std::to_string(len) + " tokens.", "context_length_exceeded");
    longest = std::max(longest, len);
  }
  const int64_t room = limits.max_seq_len - longest;
  if (room < 1)
    return bad(prompt_param, "the prompt (" + std::to_string(longest) + " tokens) leaves no room for output within the model's "
                             "maximum context length of " + std::to_string(limits.max_seq_len) + " tokens",
               "context_length_exceeded");
  const int64_t choices = static_cast<int64_t>(plan.prompt_ids.size()) * r.n;
  if (r.max_tokens) {
    if (*r.max_tokens > room)
      return bad("max_tokens", "This model's maximum context length is " + std::to_string(limits.max_seq_len) +
                                   " tokens. However, you requested " + std::to_string(longest + *r.max_tokens) +
                                   " tokens (" + std::to_string(longest) + " in the " + prompt_param + ", " +
                                   std::to_string(*r.max_tokens) + " in the completion). Please reduce the length of the " +
                                   prompt_param + " or the completion.", "context_length_exceeded");
    if (choices * *r.max_tokens > kOpenAiMaxTokens)
      return bad("n", "n x max_tokens = " + std::to_string(choices) + " x " + std::to_string(*r.max_tokens) +
                          " tokens is more than the " + std::to_string(kOpenAiMaxTokens) + " one request may ask for",
                 "invalid_value");
    plan.max_tokens = *r.max_tokens;
  } else {
    // Completions: OpenAI's 16; chat: the rest of the context, within the per-request token budget.
    plan.max_tokens = chat ? std::min(room, std::max<int64_t>(1, kOpenAiMaxTokens / choices))
                           : std::min(room, kDefaultCompletionTokens);
  }

  TextGenerationCall& call = plan.call;
  call.stop = r.stop;
  call.token_details = r.logprobs;
  for (const auto& ids : plan.prompt_ids) {
    for (int j = 0; j < r.n; ++j) {
      Request q;
      q.input_ids = ids;
      q.max_new_tokens = static_cast<int32_t>(plan.max_tokens);
      if (r.temperature == 0.0) {
        q.sampling.temperature = 0.0f;  // greedy
      } else {
        q.sampling.temperature = static_cast<float>(r.temperature);
        q.sampling.top_p = static_cast<float>(r.top_p);  // 1: the whole distribution
      }
      q.sampling.presence_penalty = static_cast<float>(r.presence_penalty);
      q.sampling.frequency_penalty = static_cast<float>(r.frequency_penalty);
      if (r.seed) q.sampling.random_seed = *r.seed + static_cast<uint64_t>(j);
      q.output.return_log_probs = r.logprobs;
      q.output.top_log_probs = r.top_logprobs;
      call.choices.push_back(std::move(q));
    }
  }
  return plan;
}

// ---- models ------------------------------------------------------------------------------------------------

namespace {

json model_object(const std::string& name) {
  return {{"id", name}, {"object", "model"}, {"created", kServerStart}, {"owned_by", "kiln"}};
}

}  // namespace

std::string openai_models_json(ServerCore& core) {
  json data = json::array();
  for (const ModelStatus& m : core.repository_index(/*ready_only=*/true))
    if (text_generation_model(core, m.name).ok()) data.push_back(model_object(m.name));
  return dump(json{{"object", "list"}, {"data", data}});
}

// ---- responses ---------------------------------------------------------------------------------------------

OpenAiResponder::OpenAiResponder(const OpenAiRequest& request, const OpenAiPlan& plan, std::string id,
                                 int64_t created, OpenAiEmit emit)
    : chat_(request.endpoint == OpenAiEndpoint::kChatCompletions),
      stream_(request.stream),
      include_usage_(request.include_usage),
      logprobs_(request.logprobs),
      echo_(request.echo),
      top_logprobs_(request.top_logprobs),
      n_(static_cast<size_t>(request.n)),
      model_(request.model),
      id_(std::move(id)),
      created_(created),
      prompt_texts_(plan.prompt_texts),
      emit_(std::move(emit)),
      choices_(plan.call.choices.size()),
      remaining_(plan.call.choices.size()) {
  for (const auto& ids : plan.prompt_ids) prompt_tokens_ += static_cast<int64_t>(ids.size());
  if (echo_)
    for (size_t i = 0; i < choices_.size(); ++i) {
      choices_[i].text = prompt_texts_[i / n_];
      choices_[i].text_offset = code_points(choices_[i].text);
    }
}

json OpenAiResponder::chunk_base() const {
  json j = {{"id", id_},
            {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"system_fingerprint", std::string("kiln-") + KILN_VERSION}};
  if (include_usage_) j["usage"] = nullptr;
  return j;
}

json OpenAiResponder::usage_json() const {
  int64_t completion = 0;
  for (const ChoiceState& c : choices_) completion += c.completion_tokens;
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion},
          {"total_tokens", prompt_tokens_ + completion}};
}

void OpenAiResponder::emit_event(const json& j, bool final) {
  emit_(OpenAiOutput{200, dump(j), true, final});
}

void OpenAiResponder::begin() {
  std::lock_guard<std::mutex> lock(mu_);
  begin_locked();
}

void OpenAiResponder::begin_locked() {
  if (begun_) return;
  begun_ = true;
  if (!stream_) return;
  for (size_t i = 0; i < choices_.size(); ++i) {
    json c;
    if (chat_) {
      c = {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    } else if (echo_) {
      c = {{"index", i}, {"text", choices_[i].text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    } else {
      continue;
    }
    json j = chunk_base();
    j["choices"] = json::array({c});
    emit_event(j);
  }
}

// Log-prob entries of a chunk's tokens: chat's {"content": [...]}, or completions' parallel lists.
json OpenAiResponder::logprobs_json(const std::vector<GeneratedToken>& tokens, ChoiceState& c) const {
  if (chat_) {
    json content = json::array();
    for (const GeneratedToken& t : tokens) {
      json top = json::array();
      for (size_t k = 0; k < t.top.size() && k < static_cast<size_t>(top_logprobs_); ++k)
        top.push_back({{"token", t.top[k].text}, {"logprob", log_prob_value(t.top[k].log_prob)}, {"bytes", bytes_of(t.top[k].text)}});
      content.push_back({{"token", t.text}, {"logprob", log_prob_value(t.log_prob)}, {"bytes", bytes_of(t.text)}, {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json toks = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const GeneratedToken& t : tokens) {
    toks.push_back(t.text);
    lps.push_back(log_prob_value(t.log_prob));
    json top = json::object();  // the k best and the chosen token (OpenAI: up to logprobs + 1 entries)
    for (size_t k = 0; k < t.top.size() && k < static_cast<size_t>(top_logprobs_); ++k)
      if (!top.contains(t.top[k].text)) top[t.top[k].text] = log_prob_value(t.top[k].log_prob);
    if (!top.contains(t.text)) top[t.text] = log_prob_value(t.log_prob);
    tops.push_back(std::move(top));
    offsets.push_back(c.text_offset);
    c.text_offset += code_points(t.text);
  }
  return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

void OpenAiResponder::fail(const Status& s) {
  ended_ = true;
  const OpenAiError e = openai_error_from(s);
  if (!stream_ || !begun_) {  // nothing sent yet: a plain error response with its own status
    emit_(OpenAiOutput{e.status, openai_error_json(e), false, true});
    return;
  }
  // The stream's status line went out as 200: the error is an event, then the end.
  emit_(OpenAiOutput{200, openai_error_json(e), true, false});
  emit_(OpenAiOutput{200, "[DONE]", true, true});
}

void OpenAiResponder::finish_all() {
  ended_ = true;
  if (stream_) {
    if (include_usage_) {
      json j = chunk_base();
      j["choices"] = json::array();
      j["usage"] = usage_json();
      emit_event(j);
    }
    emit_(OpenAiOutput{200, "[DONE]", true, true});
    return;
  }
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    ChoiceState& c = choices_[i];
    json lp;
    if (logprobs_) {  // a choice without tokens (a stop string at once) has empty lists
      lp = c.logprobs;
      if (lp.is_null())
        lp = chat_ ? json{{"content", json::array()}, {"refusal", nullptr}}
                   : json{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                          {"text_offset", json::array()}};
    }
    if (chat_) {
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                         {"logprobs", lp},
                         {"finish_reason", c.finish_reason}});
    } else {
      choices.push_back({{"index", i}, {"text", c.text}, {"logprobs", lp}, {"finish_reason", c.finish_reason}});
    }
  }
  json j = {{"id", id_},
            {"object", chat_ ? "chat.completion" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"system_fingerprint", std::string("kiln-") + KILN_VERSION},
            {"choices", choices},
            {"usage", usage_json()}};
  emit_(OpenAiOutput{200, dump(j), false, true});
}

void OpenAiResponder::on_chunk(TextChunk chunk) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_ || chunk.choice >= choices_.size()) return;
  if (!chunk.error.ok()) return fail(chunk.error);
  begin_locked();
  ChoiceState& c = choices_[chunk.choice];
  if (c.done) return;
  json lp;
  if (logprobs_ && !chunk.tokens.empty()) lp = logprobs_json(chunk.tokens, c);
  if (chunk.final) {
    c.done = true;
    c.finish_reason = finish_name(chunk.finish);
    c.completion_tokens = chunk.completion_tokens;
  }
  if (stream_) {
    if (!chunk.text.empty() || !lp.is_null() || chunk.final) {
      json choice;
      if (chat_) {
        json delta = json::object();
        if (!chunk.text.empty()) delta["content"] = chunk.text;
        choice = {{"index", chunk.choice}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", nullptr}};
      } else {
        choice = {{"index", chunk.choice}, {"text", chunk.text}, {"logprobs", lp}, {"finish_reason", nullptr}};
      }
      if (chunk.final) choice["finish_reason"] = c.finish_reason;
      json j = chunk_base();
      j["choices"] = json::array({choice});
      emit_event(j);
    }
  } else {
    c.text += chunk.text;
    if (!lp.is_null()) {
      if (c.logprobs.is_null()) {
        c.logprobs = lp;
      } else if (chat_) {
        for (auto& e : lp["content"]) c.logprobs["content"].push_back(std::move(e));
      } else {
        for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
          for (auto& e : lp[k]) c.logprobs[k].push_back(std::move(e));
      }
    }
  }
  if (chunk.final && --remaining_ == 0) finish_all();
}

// ---- the endpoints -----------------------------------------------------------------------------------------

namespace {

OpenAiOutput error_output(const OpenAiError& e) { return OpenAiOutput{e.status, openai_error_json(e), false, true}; }

OpenAiStart answer(OpenAiOutput o) {
  OpenAiStart s;
  s.immediate = std::move(o);
  return s;
}

}  // namespace

OpenAiStart handle_openai(ServerCore& core, std::string_view method, std::string_view path, std::string_view body,
                          OpenAiEmit emit) {
  auto method_not_allowed = [&](const char* allowed) {
    OpenAiError e = bad("", std::string("method not allowed; use ") + allowed, "method_not_allowed");
    e.status = 405;
    return answer(error_output(e));
  };
  if (path == "/v1/models") {
    if (method != "GET") return method_not_allowed("GET");
    return answer(OpenAiOutput{200, openai_models_json(core), false, true});
  }
  if (path.rfind("/v1/models/", 0) == 0) {
    if (method != "GET") return method_not_allowed("GET");
    const std::string name(path.substr(std::string_view("/v1/models/").size()));
    if (!text_generation_model(core, name).ok()) {
      OpenAiError e = bad("model", "The model '" + name.substr(0, 200) + "' does not exist", "model_not_found");
      e.status = 404;
      return answer(error_output(e));
    }
    return answer(OpenAiOutput{200, dump(model_object(name)), false, true});
  }
  OpenAiEndpoint endpoint;
  if (path == "/v1/completions") {
    endpoint = OpenAiEndpoint::kCompletions;
  } else if (path == "/v1/chat/completions") {
    endpoint = OpenAiEndpoint::kChatCompletions;
  } else {
    OpenAiError e = bad("", "unknown endpoint " + std::string(path.substr(0, 200)) +
                                " (kiln serves /v1/models, /v1/completions and /v1/chat/completions)", "unknown_url");
    e.status = 404;
    return answer(error_output(e));
  }
  if (method != "POST") return method_not_allowed("POST");

  auto parsed = parse_openai_request(endpoint, body, core.options().max_json_depth);
  if (auto* e = std::get_if<OpenAiError>(&parsed)) return answer(error_output(*e));
  const OpenAiRequest& request = std::get<OpenAiRequest>(parsed);

  auto model = text_generation_model(core, request.model);
  if (!model.ok()) {
    OpenAiError e = openai_error_from(model.status());
    e.param = "model";
    if (model.status().code() == StatusCode::kNotFound)
      e.message = "The model '" + request.model.substr(0, 200) + "' does not exist (" + model.status().message() + ")";
    return answer(error_output(e));
  }
  const TrtllmLimits& limits = model->target->limits();
  auto planned = plan_openai_request(request, *model->tok, model->add_special_tokens,
                                     OpenAiLimits{limits.max_input_len, limits.max_seq_len, limits.vocab_size});
  if (auto* e = std::get_if<OpenAiError>(&planned)) return answer(error_output(*e));
  OpenAiPlan& plan = std::get<OpenAiPlan>(planned);

  auto responder = std::make_shared<OpenAiResponder>(
      request, plan, random_id(endpoint == OpenAiEndpoint::kChatCompletions ? "chatcmpl-" : "cmpl-"), unix_seconds(),
      std::move(emit));
  auto started = generate_text(*model, std::move(plan.call), [responder](TextChunk c) { responder->on_chunk(std::move(c)); });
  if (!started.ok()) return answer(error_output(openai_error_from(started.status())));
  responder->begin();
  OpenAiStart s;
  s.cancel = std::move(*started);
  return s;
}

}  // namespace kiln::server
