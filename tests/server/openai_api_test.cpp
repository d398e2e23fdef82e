// The OpenAI API's request parsing and validation (every refusal names its field, in OpenAI's error shape),
// planning against a tokenizer and an engine's limits (chat template, lengths, max_tokens, seeds), the
// responder's response and stream shapes, and TextStream (stop strings, ids outside the tokenizer, token
// strings). No network and no engine.
#include "server/openai_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/text_stream.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace kiln::server {
namespace {

using json = nlohmann::json;

constexpr OpenAiEndpoint kChat = OpenAiEndpoint::kChatCompletions;
constexpr OpenAiEndpoint kCompletions = OpenAiEndpoint::kCompletions;

OpenAiRequest parse_ok(OpenAiEndpoint ep, const json& body) {
  auto r = parse_openai_request(ep, body.dump(), 64);
  if (auto* e = std::get_if<OpenAiError>(&r)) ADD_FAILURE() << body.dump() << " -> " << openai_error_json(*e);
  return std::holds_alternative<OpenAiRequest>(r) ? std::get<OpenAiRequest>(r) : OpenAiRequest{};
}

OpenAiError parse_error(OpenAiEndpoint ep, const std::string& body) {
  auto r = parse_openai_request(ep, body, 64);
  if (!std::holds_alternative<OpenAiError>(r)) {
    ADD_FAILURE() << "accepted: " << body;
    return {};
  }
  return std::get<OpenAiError>(r);
}

std::shared_ptr<const Tokenizer> phi3() {
  static auto tok = [] {
    auto t = Tokenizer::from_file(test::data_path("tokenizers/phi3/tokenizer.json.gz"));
    KILN_CHECK(t.ok(), t.status().to_string());
    return *t;
  }();
  return tok;
}

const json kMessages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                    {{"role", "user"}, {"content", "Hello"}}});

TEST(OpenAiParse, ChatFieldsAndDefaults) {
  OpenAiRequest r = parse_ok(kChat, {{"model", "ensemble"}, {"messages", kMessages}});
  EXPECT_EQ(r.model, "ensemble");
  EXPECT_EQ(r.messages, kMessages);
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.temperature, 1.0);  // OpenAI's defaults: sampling over the whole distribution
  EXPECT_EQ(r.top_p, 1.0);
  EXPECT_FALSE(r.max_tokens);
  EXPECT_FALSE(r.stream);

  r = parse_ok(kChat, {{"model", "m"},
                       {"messages", kMessages},
                       {"max_completion_tokens", 7},
                       {"temperature", 0},
                       {"top_p", 0.5},
                       {"n", 3},
                       {"stop", "\n"},
                       {"seed", -1},
                       {"logprobs", true},
                       {"top_logprobs", 20},
                       {"presence_penalty", -2},
                       {"frequency_penalty", 2.0},
                       {"stream", true},
                       {"stream_options", {{"include_usage", true}}},
                       {"user", "someone"},
                       {"tools", json::array()},
                       {"tool_choice", "none"},
                       {"response_format", {{"type", "text"}}},
                       {"logit_bias", json::object()}});
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(*r.seed, ~uint64_t{0});
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 20);
  EXPECT_TRUE(r.stream && r.include_usage);
}

TEST(OpenAiParse, MessageContentPartsAndRoles) {
  json messages = json::array(
      {{{"role", "developer"}, {"content", "rules"}},
       {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}})}},
       {{"role", "assistant"}, {"content", nullptr}, {"refusal", nullptr}, {"tool_calls", json::array()}},
       {{"role", "tool"}, {"content", "42"}, {"tool_call_id", "call_1"}}});
  OpenAiRequest r = parse_ok(kChat, {{"model", "m"}, {"messages", messages}});
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0]["role"], "system");
  EXPECT_EQ(r.messages[1]["content"], "a\nb");
  EXPECT_EQ(r.messages[2]["content"], "");
  EXPECT_EQ(r.messages[3]["tool_call_id"], "call_1");
}

TEST(OpenAiParse, CompletionPromptsInEveryShape) {
  OpenAiRequest r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", "hi"}});
  EXPECT_EQ(r.prompts, std::vector<std::string>{"hi"});
  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", {"a", "b"}}, {"n", 2}, {"logprobs", 0}});
  EXPECT_EQ(r.prompts.size(), 2u);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_TRUE(parse_ok(kCompletions, {{"model", "m"}, {"prompt", "a"}, {"echo", true}}).echo);
  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", {1, 2, 3}}, {"best_of", 1}, {"suffix", ""}});
  EXPECT_EQ(r.prompt_ids, (std::vector<std::vector<int32_t>>{{1, 2, 3}}));
  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", {{1, 2}, {3}}}});
  EXPECT_EQ(r.prompt_ids.size(), 2u);
}

// Each bad request: its endpoint, body, the field the error must name and words its message must hold.
struct BadCase {
  OpenAiEndpoint ep;
  std::string body;
  std::string param;
  std::string words;
};

TEST(OpenAiParse, RefusesBadRequestsNamingTheField) {
  const std::string chat = R"("model": "m", "messages": [{"role": "user", "content": "hi"}])";
  const std::string comp = R"("model": "m", "prompt": "hi")";
  const std::vector<BadCase> cases = {
      {kChat, "{" + chat + R"(, "n": 0})", "n", "minimum of 1"},
      {kChat, "{" + chat + R"(, "n": 17})", "n", "maximum of 16"},
      {kChat, "{" + chat + R"(, "n": 1.5})", "n", "integer"},
      {kChat, "{" + chat + R"(, "max_tokens": 0})", "max_tokens", "minimum"},
      {kChat, "{" + chat + R"(, "max_tokens": "8"})", "max_tokens", "integer"},
      {kChat, "{" + chat + R"(, "max_tokens": 8, "max_completion_tokens": 9})", "max_completion_tokens", "not both"},
      {kChat, "{" + chat + R"(, "temperature": 2.5})", "temperature", "maximum of 2"},
      {kChat, "{" + chat + R"(, "temperature": -0.1})", "temperature", "minimum of 0"},
      {kChat, "{" + chat + R"(, "top_p": 0})", "top_p", "not greater than 0"},
      {kChat, "{" + chat + R"(, "top_p": 1.01})", "top_p", "maximum of 1"},
      {kChat, "{" + chat + R"(, "presence_penalty": 3})", "presence_penalty", "maximum of 2"},
      {kChat, "{" + chat + R"(, "frequency_penalty": -2.5})", "frequency_penalty", "minimum of -2"},
      {kChat, "{" + chat + R"(, "top_logprobs": 21, "logprobs": true})", "top_logprobs", "maximum of 20"},
      {kChat, "{" + chat + R"(, "top_logprobs": 2})", "top_logprobs", "logprobs"},
      {kChat, "{" + chat + R"(, "logprobs": 1})", "logprobs", "boolean"},
      {kChat, "{" + chat + R"(, "stop": ["a", "b", "c", "d", "e"]})", "stop", "at most 4"},
      {kChat, "{" + chat + R"(, "stop": [1]})", "stop", "string"},
      {kChat, "{" + chat + R"(, "seed": "x"})", "seed", "integer"},
      {kChat, "{" + chat + R"(, "stream": "yes"})", "stream", "boolean"},
      {kChat, "{" + chat + R"(, "stream_options": {"include_usage": true}})", "stream_options", "stream is true"},
      {kChat, "{" + chat + R"(, "stream": true, "stream_options": {"x": 1}})", "stream_options.x", "Unrecognized"},
      {kChat, "{" + chat + R"(, "tools": [{"type": "function", "function": {"name": "f"}}]})", "tools", "not supported"},
      {kChat, "{" + chat + R"(, "tool_choice": "auto"})", "tool_choice", "not supported"},
      {kChat, "{" + chat + R"(, "response_format": {"type": "json_object"}})", "response_format", "not supported"},
      {kChat, "{" + chat + R"(, "logit_bias": {"50256": -100}})", "logit_bias", "not supported"},
      {kChat, "{" + chat + R"(, "best_of": 2})", "best_of", "Unrecognized"},
      {kChat, "{" + chat + R"(, "frobnicate": 1})", "frobnicate", "Unrecognized request argument"},
      {kChat, R"({"messages": [{"role": "user", "content": "hi"}]})", "model", "required"},
      {kChat, R"({"model": 3, "messages": []})", "model", "string"},
      {kChat, R"({"model": "m", "messages": []})", "messages", "at least one"},
      {kChat, R"({"model": "m"})", "messages", "required"},
      {kChat, R"({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})", "messages[0].role", "wizard"},
      {kChat, R"({"model": "m", "messages": [{"role": "user"}]})", "messages[0].content", "required"},
      {kChat, R"({"model": "m", "messages": [{"role": "user", "content": 5}]})", "messages[0].content", "string"},
      {kChat, R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})",
       "messages[0].content[0].type", "not supported"},
      {kChat, R"({"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]})",
       "messages[0].tool_calls", "not supported"},
      {kCompletions, R"({"model": "m"})", "prompt", "required"},
      {kCompletions, "{" + comp + R"(, "logprobs": 6})", "logprobs", "maximum of 5"},
      {kCompletions, "{" + comp + R"(, "logprobs": true})", "logprobs", "integer"},
      {kCompletions, "{" + comp + R"(, "echo": true, "logprobs": 1})", "echo", "not supported"},
      {kCompletions, "{" + comp + R"(, "suffix": "end"})", "suffix", "not supported"},
      {kCompletions, "{" + comp + R"(, "best_of": 3, "n": 2})", "best_of", "not supported"},
      {kCompletions, "{" + comp + R"(, "best_of": 1, "n": 2})", "best_of", "at least n"},
      {kCompletions, "{" + comp + R"(, "messages": []})", "messages", "Unrecognized"},
      {kCompletions, R"({"model": "m", "prompt": []})", "prompt", "empty"},
      {kCompletions, R"({"model": "m", "prompt": [1, -2]})", "prompt", "outside the vocabulary"},
      {kCompletions, R"({"model": "m", "prompt": [[1], []]})", "prompt", "empty"},
      {kCompletions, R"({"model": "m", "prompt": {"text": "x"}})", "prompt", "must be"},
      {kCompletions, R"({"model": "m", "prompt": ["a", "b", "c", "d", "e", "f", "g", "h", "i"], "n": 2})", "n", "at most 16"},
  };
  for (const BadCase& c : cases) {
    const OpenAiError e = parse_error(c.ep, c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
    EXPECT_NE(e.message.find(c.words), std::string::npos) << c.body << " -> " << e.message;
  }
}

TEST(OpenAiParse, MalformedBodiesAndTheErrorShape) {
  for (const std::string body : {"", "{", "[1, 2]", "\"text\"", R"({"model": "m", "model": "n"})"}) {
    const OpenAiError e = parse_error(kChat, body);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "invalid_json") << body;
  }
  std::string deep(100, '[');
  EXPECT_EQ(parse_error(kChat, deep).code, "invalid_json");

  const json j = json::parse(openai_error_json(parse_error(kChat, R"({"model": "m", "messages": [], "n": 0})")));
  ASSERT_EQ(j.size(), 1u);
  const json& err = j.at("error");
  EXPECT_TRUE(err.at("message").is_string());
  EXPECT_EQ(err.at("type"), "invalid_request_error");
  EXPECT_TRUE(err.contains("param") && err.contains("code"));
  EXPECT_TRUE(json::parse(openai_error_json(OpenAiError{400, "x"})).at("error").at("param").is_null());

  EXPECT_EQ(openai_error_from(not_found("x")).status, 404);
  EXPECT_EQ(openai_error_from(unavailable("x")).status, 503);
  EXPECT_EQ(openai_error_from(deadline_exceeded("x")).status, 503);
  EXPECT_EQ(openai_error_from(invalid_argument("x")).status, 400);
  EXPECT_EQ(openai_error_from(internal_error("x")).type, "server_error");
}

// ---- planning ----

const OpenAiLimits kLimits{.max_input_len = 64, .max_seq_len = 96, .vocab_size = 32064};

OpenAiPlan plan_ok(const OpenAiRequest& r, bool add_special = true) {
  auto p = plan_openai_request(r, *phi3(), add_special, kLimits);
  if (auto* e = std::get_if<OpenAiError>(&p)) ADD_FAILURE() << openai_error_json(*e);
  return std::holds_alternative<OpenAiPlan>(p) ? std::move(std::get<OpenAiPlan>(p)) : OpenAiPlan{};
}

OpenAiError plan_error(const OpenAiRequest& r) {
  auto p = plan_openai_request(r, *phi3(), true, kLimits);
  if (!std::holds_alternative<OpenAiError>(p)) {
    ADD_FAILURE() << "planned";
    return {};
  }
  return std::get<OpenAiError>(p);
}

TEST(OpenAiPlan, ChatUsesTheModelsTemplateWithAGenerationPrompt) {
  const OpenAiRequest r = parse_ok(kChat, {{"model", "m"}, {"messages", kMessages}, {"temperature", 0}});
  const OpenAiPlan p = plan_ok(r);
  auto text = apply_chat_template(phi3()->config(), kMessages, true);
  ASSERT_TRUE(text.ok()) << text.status().to_string();
  EXPECT_EQ(*text, "<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n");
  ASSERT_EQ(p.prompt_ids.size(), 1u);
  EXPECT_EQ(p.prompt_ids[0], *phi3()->encode(*text, false));  // as transformers' apply_chat_template(tokenize=True)
  ASSERT_EQ(p.call.choices.size(), 1u);
  const Request& q = p.call.choices[0];
  EXPECT_EQ(q.input_ids, p.prompt_ids[0]);
  EXPECT_EQ(q.max_new_tokens, 96 - static_cast<int32_t>(q.input_ids.size()));  // chat: the rest of the context
  EXPECT_TRUE(q.sampling.is_greedy());
  EXPECT_FALSE(q.output.return_log_probs);
  EXPECT_FALSE(p.call.token_details);
}

TEST(OpenAiPlan, CompletionsChoicesSeedsAndLogProbs) {
  OpenAiRequest r = parse_ok(kCompletions, {{"model", "m"},
                                            {"prompt", {"Hello world", "Bye"}},
                                            {"n", 2},
                                            {"seed", 10},
                                            {"temperature", 0.7},
                                            {"top_p", 0.9},
                                            {"logprobs", 3},
                                            {"stop", {"x", "y"}},
                                            {"presence_penalty", 0.5}});
  const OpenAiPlan p = plan_ok(r);
  ASSERT_EQ(p.call.choices.size(), 4u);
  EXPECT_EQ(p.prompt_ids[0], *phi3()->encode("Hello world", true));  // the preprocessing model's add_special_tokens
  EXPECT_EQ(p.prompt_ids[0][0], 1);                                   // <s>
  EXPECT_EQ(p.max_tokens, 16);                                        // OpenAI's default for completions
  for (size_t i = 0; i < 4; ++i) {
    const Request& q = p.call.choices[i];
    EXPECT_EQ(q.input_ids, p.prompt_ids[i / 2]);
    EXPECT_EQ(*q.sampling.random_seed, 10u + i % 2);
    EXPECT_FLOAT_EQ(q.sampling.temperature, 0.7f);
    EXPECT_FLOAT_EQ(q.sampling.top_p, 0.9f);
    EXPECT_FLOAT_EQ(q.sampling.presence_penalty, 0.5f);
    EXPECT_TRUE(q.output.return_log_probs);
    EXPECT_EQ(q.output.top_log_probs, 3);
    EXPECT_EQ(q.sampling.beam_width, 1);
  }
  EXPECT_TRUE(p.call.token_details);
  EXPECT_EQ(p.call.stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(p.prompt_texts, (std::vector<std::string>{"Hello world", "Bye"}));

  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", {5, 6, 32063}}, {"max_tokens", 93}});
  const OpenAiPlan ids = plan_ok(r);
  EXPECT_EQ(ids.prompt_ids[0], (std::vector<int32_t>{5, 6, 32063}));  // as given (no BOS added)
  EXPECT_EQ(ids.call.choices[0].max_new_tokens, 93);
  EXPECT_FALSE(ids.call.choices[0].sampling.random_seed);
}

TEST(OpenAiPlan, LengthsAgainstTheEngine) {
  OpenAiRequest r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", std::vector<int>(65, 7)}});
  OpenAiError e = plan_error(r);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_NE(e.message.find("64"), std::string::npos) << e.message;

  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", std::vector<int>(10, 7)}, {"max_tokens", 87}});
  e = plan_error(r);
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_NE(e.message.find("maximum context length is 96"), std::string::npos) << e.message;
  r.max_tokens = 86;
  EXPECT_EQ(plan_ok(r).max_tokens, 86);

  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", {1, 32064}}});
  EXPECT_EQ(plan_error(r).param, "prompt");

  std::string words;
  for (int i = 0; i < 80; ++i) words += " word";
  r = parse_ok(kChat, {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", words}}})}});
  e = plan_error(r);
  EXPECT_EQ(e.param, "messages");
  EXPECT_EQ(e.code, "context_length_exceeded");

  r = parse_ok(kCompletions, {{"model", "m"}, {"prompt", ""}});
  r.prompts = {""};
  auto p = plan_openai_request(r, *phi3(), /*add_special_tokens=*/false, kLimits);
  ASSERT_TRUE(std::holds_alternative<OpenAiError>(p));
  EXPECT_EQ(std::get<OpenAiError>(p).param, "prompt");
}

TEST(OpenAiPlan, ChatTemplateErrorsAndModelsWithoutOne) {
  // A one-token tokenizer without a chat template, then with one that refuses every conversation.
  const char* doc = R"({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                "vocab": {"a": 0}, "merges": []}})";
  auto bare = Tokenizer::from_json(doc);
  ASSERT_TRUE(bare.ok()) << bare.status().to_string();
  const OpenAiRequest r = parse_ok(kChat, {{"model", "m"}, {"messages", kMessages}});
  auto p = plan_openai_request(r, **bare, false, kLimits);
  ASSERT_TRUE(std::holds_alternative<OpenAiError>(p));
  EXPECT_EQ(std::get<OpenAiError>(p).code, "no_chat_template");

  json config = {{"chat_template", "{{ raise_exception('roles must alternate') }}"}};
  auto strict = Tokenizer::from_json(doc, &config);
  ASSERT_TRUE(strict.ok());
  p = plan_openai_request(r, **strict, false, kLimits);
  ASSERT_TRUE(std::holds_alternative<OpenAiError>(p));
  EXPECT_EQ(std::get<OpenAiError>(p).param, "messages");
  EXPECT_NE(std::get<OpenAiError>(p).message.find("roles must alternate"), std::string::npos);
}

// ---- responses ----

struct Collected {
  std::vector<OpenAiOutput> outs;
  OpenAiEmit emit() {
    return [this](OpenAiOutput o) { outs.push_back(std::move(o)); };
  }
};

OpenAiPlan two_choice_plan() {
  OpenAiPlan p;
  p.prompt_ids = {{1, 2, 3}};
  p.prompt_texts = {"abc"};
  p.call.choices.resize(2);
  return p;
}

TextChunk text_chunk(size_t choice, std::string text, bool final = false, TextFinish f = TextFinish::kNone,
                     int32_t tokens = 0) {
  TextChunk c;
  c.choice = choice;
  c.text = std::move(text);
  c.final = final;
  c.finish = f;
  c.completion_tokens = tokens;
  return c;
}

TEST(OpenAiResponder, CompletionResponseWithUsage) {
  OpenAiRequest r = parse_ok(kCompletions, {{"model", "ens"}, {"prompt", "abc"}, {"n", 2}, {"echo", true}});
  Collected got;
  OpenAiResponder resp(r, two_choice_plan(), "cmpl-1", 123, got.emit());
  resp.begin();
  resp.on_chunk(text_chunk(1, " x"));
  resp.on_chunk(text_chunk(0, " y", true, TextFinish::kLength, 4));
  EXPECT_TRUE(got.outs.empty());
  resp.on_chunk(text_chunk(1, "z", true, TextFinish::kStop, 2));
  ASSERT_EQ(got.outs.size(), 1u);
  EXPECT_FALSE(got.outs[0].sse);
  EXPECT_TRUE(got.outs[0].final);
  const json j = json::parse(got.outs[0].body);
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 123);
  EXPECT_EQ(j["model"], "ens");
  EXPECT_EQ(j["choices"][0]["text"], "abc y");  // echo: the prompt leads
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][1]["text"], "abc xz");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"], (json{{"prompt_tokens", 3}, {"completion_tokens", 6}, {"total_tokens", 9}}));
}

TEST(OpenAiResponder, ChatStreamRoleFirstFinishOnTheLastContentChunkUsageThenDone) {
  OpenAiRequest r = parse_ok(kChat, {{"model", "ens"},
                                     {"messages", kMessages},
                                     {"n", 2},
                                     {"stream", true},
                                     {"stream_options", {{"include_usage", true}}}});
  Collected got;
  OpenAiResponder resp(r, two_choice_plan(), "chatcmpl-1", 5, got.emit());
  resp.on_chunk(text_chunk(0, "Hi"));  // before begin(): the role chunks still come first
  resp.begin();
  resp.on_chunk(text_chunk(0, "!", true, TextFinish::kStop, 3));
  resp.on_chunk(text_chunk(1, "", true, TextFinish::kLength, 1));
  std::vector<json> events;
  for (size_t i = 0; i < got.outs.size(); ++i) {
    EXPECT_TRUE(got.outs[i].sse);
    EXPECT_EQ(got.outs[i].final, i + 1 == got.outs.size());
    if (got.outs[i].body != "[DONE]") events.push_back(json::parse(got.outs[i].body));
  }
  EXPECT_EQ(got.outs.back().body, "[DONE]");
  ASSERT_EQ(events.size(), 6u);  // 2 roles, "Hi", "!" + stop, length, usage
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(events[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(events[i]["choices"][0]["index"], i);
    EXPECT_EQ(events[i]["choices"][0]["delta"], (json{{"role", "assistant"}, {"content", ""}}));
    EXPECT_TRUE(events[i]["usage"].is_null());
  }
  EXPECT_EQ(events[2]["choices"][0]["delta"], (json{{"content", "Hi"}}));
  EXPECT_TRUE(events[2]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(events[3]["choices"][0]["delta"], (json{{"content", "!"}}));
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(events[4]["choices"][0]["delta"], json::object());
  EXPECT_EQ(events[4]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events[5]["choices"], json::array());
  EXPECT_EQ(events[5]["usage"]["completion_tokens"], 4);
  for (const json& e : events) EXPECT_EQ(e["id"], "chatcmpl-1");
}

TEST(OpenAiResponder, LogProbsInBothShapes) {
  GeneratedToken t{7, " Paris", -0.25f, {{7, " Paris", -0.25f}, {9, " Lyon", -2.0f}}};
  GeneratedToken banned{8, "x", -std::numeric_limits<float>::infinity(), {}};
  TextChunk c = text_chunk(0, " Parisx", true, TextFinish::kLength, 2);
  c.tokens = {t, banned};
  OpenAiPlan plan;
  plan.prompt_ids = {{1}};
  plan.prompt_texts = {"a"};
  plan.call.choices.resize(1);

  Collected chat;
  OpenAiResponder a(parse_ok(kChat, {{"model", "m"}, {"messages", kMessages}, {"logprobs", true}, {"top_logprobs", 1}}),
                    plan, "id", 1, chat.emit());
  a.on_chunk(c);
  const json content = json::parse(chat.outs.at(0).body)["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], " Paris");
  EXPECT_DOUBLE_EQ(content[0]["logprob"].get<double>(), -0.25);
  EXPECT_EQ(content[0]["bytes"], (json{32, 80, 97, 114, 105, 115}));
  ASSERT_EQ(content[0]["top_logprobs"].size(), 1u);  // top_logprobs=1 of what the executor sent
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], " Paris");
  EXPECT_DOUBLE_EQ(content[1]["logprob"].get<double>(), -9999.0);  // -inf, as OpenAI writes it

  Collected comp;
  OpenAiResponder b(parse_ok(kCompletions, {{"model", "m"}, {"prompt", "a"}, {"logprobs", 2}}), plan, "id", 1, comp.emit());
  b.on_chunk(c);
  const json lp = json::parse(comp.outs.at(0).body)["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], (json{" Paris", "x"}));
  EXPECT_EQ(lp["text_offset"], (json{0, 6}));
  EXPECT_EQ(lp["top_logprobs"][0], (json{{" Paris", -0.25}, {" Lyon", -2.0}}));
  EXPECT_EQ(lp["top_logprobs"][1], (json{{"x", -9999.0}}));  // the chosen token is always there
}

TEST(OpenAiResponder, AnErrorEndsTheResponseOnce) {
  OpenAiRequest r = parse_ok(kChat, {{"model", "m"}, {"messages", kMessages}, {"stream", true}});
  Collected got;
  OpenAiResponder resp(r, two_choice_plan(), "id", 1, got.emit());
  resp.begin();
  TextChunk bad;
  bad.choice = 1;
  bad.error = deadline_exceeded("queued too long");
  bad.final = true;
  resp.on_chunk(bad);
  resp.on_chunk(text_chunk(0, "late", true, TextFinish::kStop, 1));  // dropped
  ASSERT_EQ(got.outs.size(), 4u);  // 2 roles, the error event, [DONE]
  EXPECT_EQ(json::parse(got.outs[2].body)["error"]["message"], "queued too long");
  EXPECT_EQ(got.outs[3].body, "[DONE]");
  EXPECT_TRUE(got.outs[3].final);

  Collected plain;
  OpenAiResponder unary(parse_ok(kChat, {{"model", "m"}, {"messages", kMessages}}), two_choice_plan(), "id", 1,
                        plain.emit());
  unary.on_chunk(bad);
  ASSERT_EQ(plain.outs.size(), 1u);
  EXPECT_EQ(plain.outs[0].status, 503);
  EXPECT_FALSE(plain.outs[0].sse);
}

// ---- TextStream ----

TEST(OpenAiTextStream, StopStringsEndTheTextAndSayWhichIdCompletedThem) {
  auto tok = phi3();
  const std::vector<int32_t> prompt = *tok->encode("The capital", true);
  const std::vector<int32_t> ids = *tok->encode("of France is Paris. It is", false);
  TextStream whole(tok, prompt, true, {"Paris"});
  auto o = whole.add(ids);
  ASSERT_TRUE(o.ok());
  EXPECT_TRUE(o->stopped);
  EXPECT_EQ(o->text, " of France is ");
  EXPECT_LT(o->used, ids.size());
  EXPECT_EQ(*whole.finish(), "");

  TextStream one_by_one(tok, prompt, true, {"Paris"});
  std::string text;
  size_t used = 0;
  for (int32_t id : ids) {
    auto p = one_by_one.add(std::span<const int32_t>(&id, 1));
    text += p->text;
    used += p->used;
    if (p->stopped) break;
  }
  EXPECT_EQ(text, o->text);
  EXPECT_EQ(used, o->used);

  TextStream plain(tok, prompt, true);
  std::vector<int32_t> with_padding = ids;
  with_padding.insert(with_padding.begin() + 2, 32050);  // an engine row past the tokenizer's vocabulary
  auto all = plain.add(with_padding);
  EXPECT_EQ(all->text + *plain.finish(), " of France is Paris. It is");
}

TEST(OpenAiTextStream, TokenTextKeepsTheLeadingSpaceAndShowsSpecialTokens) {
  auto tok = phi3();
  const std::vector<int32_t> prompt = *tok->encode("The capital of France is", true);
  TextStream s(tok, prompt, true);
  const int32_t paris = (*tok->encode("Paris", false))[0];  // "▁Paris"
  EXPECT_EQ(s.token_text(paris), " Paris");
  EXPECT_EQ(s.token_text(32000), "<|endoftext|>");
  EXPECT_EQ(s.token_text(32050), "");  // not in the tokenizer
}

}  // namespace
}  // namespace kiln::server
