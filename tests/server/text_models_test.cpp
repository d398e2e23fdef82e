// The text-level models (preprocessing, postprocessing, ensemble, tensorrt_llm_bls) through
// ServerCore::infer, on a repository with the phi3 fixture engine and the phi3 tokenizer: the text is the
// detokenized output of the tensorrt_llm model, streamed deltas are UTF-8 and add up to it, stop strings cut
// it, the prompt is not echoed.
#include "server/text_models.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "model/checkpoint.h"
#include "model/engine.h"
#include "server/server_core.h"
#include "server/text_generation.h"
#include "server_test_repo.h"
#include "test_util.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln::server {
namespace {

namespace fs = std::filesystem;
using kiln::test::TempDir;

constexpr int kMaxInputLen = 48;

std::string param(const std::string& key, const std::string& value) {
  return "parameters: { key: \"" + key + "\" value: { string_value: \"" + value + "\" } }\n";
}

// A tensorrt_llm model: the seed's config (prompt echoed in output_ids, not decoupled), or a decoupled one
// that excludes the prompt; both with a copy of the engine and a small KV cache.
void write_trtllm(const std::string& repo, const std::string& engine, const std::string& name, bool decoupled) {
  kiln::test::write_seed_trtllm_model(repo, engine, name, decoupled,
                                      decoupled ? param("exclude_input_in_output", "true") : "");
}

std::string ensemble_config(const std::string& name, const std::string& target) {
  return "name: \"" + name +
         "\"\nplatform: \"ensemble\"\nmax_batch_size: 4\n"
         "ensemble_scheduling { step [\n"
         "  { model_name: \"preprocessing\" model_version: -1 input_map { key: \"QUERY\" value: "
         "\"text_input\" }\n"
         "    output_map { key: \"INPUT_ID\" value: \"_INPUT_ID\" } },\n"
         "  { model_name: \"" +
         target +
         "\" model_version: -1 input_map { key: \"input_ids\" value: \"_INPUT_ID\" }\n"
         "    output_map { key: \"output_ids\" value: \"_TOKENS_BATCH\" } },\n"
         "  { model_name: \"postprocessing\" model_version: -1 input_map { key: \"TOKENS_BATCH\" value: "
         "\"_TOKENS_BATCH\" }\n"
         "    output_map { key: \"OUTPUT\" value: \"text_output\" } }\n"
         "] }\n";
}

void write_model(const std::string& repo, const std::string& name, const std::string& config) {
  fs::create_directories(repo + "/" + name + "/1");
  std::ofstream(repo + "/" + name + "/config.pbtxt") << config;
}

struct Fixture {
  TempDir dir;
  std::string repo;
  std::unique_ptr<ServerCore> core;
  std::shared_ptr<const Tokenizer> tok;
};
Fixture* fx = nullptr;

// What a call returned: the error before anything was queued, or its replies (the last one final).
struct Outcome {
  Status started;
  std::vector<InferReply> replies;
  Status error() const {
    if (!started.ok()) return started;
    for (const InferReply& r : replies)
      if (!r.error.ok()) return r.error;
    return {};
  }
};

Outcome call(InferCall c) {
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<InferReply> replies;
    bool done = false;
  };
  auto w = std::make_shared<Wait>();
  auto cancel = fx->core->infer(std::move(c), [w](InferReply r) {
    std::lock_guard<std::mutex> lock(w->mu);
    w->done |= r.final;
    w->replies.push_back(std::move(r));
    w->cv.notify_all();
  });
  Outcome o;
  if (!cancel.ok()) {
    o.started = cancel.status();
    return o;
  }
  std::unique_lock<std::mutex> lock(w->mu);
  const bool finished = w->cv.wait_for(lock, std::chrono::seconds(120), [&] { return w->done; });
  KILN_CHECK(finished, "no final reply");
  o.replies = std::move(w->replies);
  return o;
}

const InferTensor* output(const InferReply& r, const std::string& name) {
  for (const InferTensor& t : r.outputs)
    if (t.name == name) return &t;
  return nullptr;
}

InferTensor text(const std::string& name, const std::vector<std::string>& v) {
  return InferTensor::make_strings(name, {static_cast<int64_t>(v.size()), 1}, v);
}
InferTensor i32(const std::string& name, int32_t v) {
  return InferTensor::make(name, TensorType::kInt32, {1, 1}, std::vector<int32_t>{v});
}
InferTensor flag(const std::string& name, bool v) {
  return InferTensor::make(name, TensorType::kBool, {1, 1}, std::vector<uint8_t>{static_cast<uint8_t>(v)});
}

InferCall text_call(const std::string& model, const std::string& prompt, int32_t max_tokens) {
  InferCall c;
  c.model = model;
  c.inputs = {text("text_input", {prompt}), i32("max_tokens", max_tokens)};
  return c;
}

// The whole text of a non-streamed call (asserting one final reply with one text).
std::string text_of(const Outcome& o) {
  EXPECT_TRUE(o.error().ok()) << o.error().to_string();
  if (!o.error().ok() || o.replies.empty()) return "";
  EXPECT_EQ(o.replies.size(), 1u);
  const InferTensor* t = output(o.replies.back(), "text_output");
  EXPECT_NE(t, nullptr);
  if (!t) return "";
  EXPECT_EQ(t->shape, (std::vector<int64_t>{1}));
  return (*t->strings())[0];
}

// The concatenated deltas of a streamed call; every delta must be complete UTF-8.
std::string streamed_text(const Outcome& o, size_t* deltas = nullptr) {
  EXPECT_TRUE(o.error().ok()) << o.error().to_string();
  std::string all;
  size_t n = 0;
  for (const InferReply& r : o.replies) {
    if (const InferTensor* t = output(r, "text_output")) {
      const std::string d = (*t->strings())[0];
      EXPECT_EQ(tok::utf8_first_invalid(d), std::string::npos) << "delta " << n << " is not complete UTF-8";
      all += d;
      ++n;
    }
  }
  EXPECT_TRUE(!o.replies.empty() && o.replies.back().final);
  for (size_t i = 0; i + 1 < o.replies.size(); ++i) EXPECT_FALSE(o.replies[i].final);
  if (deltas) *deltas = n;
  return all;
}

// The tensorrt_llm model's generated ids for the prompt (the seed's config echoes the prompt: sliced off
// here).
std::vector<int32_t> generated_ids(const std::vector<int32_t>& prompt, int32_t max_tokens) {
  InferCall c;
  c.model = "tensorrt_llm";
  const int64_t n = static_cast<int64_t>(prompt.size());
  c.inputs = {
      InferTensor::make("input_ids", TensorType::kInt32, {1, n, 1}, prompt),
      InferTensor::make("input_lengths", TensorType::kInt32, {1, 1},
                        std::vector<int32_t>{static_cast<int32_t>(n)}),
      InferTensor::make("request_output_len", TensorType::kInt32, {1, 1}, std::vector<int32_t>{max_tokens})};
  Outcome o = call(std::move(c));
  KILN_CHECK(o.error().ok(), o.error().to_string());
  const InferTensor* ids = output(o.replies.back(), "output_ids");
  const InferTensor* len = output(o.replies.back(), "sequence_length");
  KILN_CHECK(ids && len, "no output_ids");
  std::vector<int32_t> all = ids->values<int32_t>();
  all.resize(len->values<int32_t>()[0]);
  KILN_CHECK(all.size() >= prompt.size() && std::equal(prompt.begin(), prompt.end(), all.begin()),
             "prompt not echoed");
  return std::vector<int32_t>(all.begin() + n, all.end());
}

std::string detokenize(const std::vector<int32_t>& prompt, const std::vector<int32_t>& ids) {
  IncrementalDetokenizer d(fx->tok, prompt, true);
  std::string s;
  for (int32_t id : ids) s += *d.add(id);
  return s + *d.finish();
}

class TextModelsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx = new Fixture();
    fx->repo = fx->dir.sub("repo");
    const std::string engine = kiln::test::build_fp32_engine(fx->dir, "phi3", 4, kMaxInputLen, kMaxInputLen + 40);
    write_trtllm(fx->repo, engine, "tensorrt_llm", /*decoupled=*/false);
    write_trtllm(fx->repo, engine, "tensorrt_llm_stream", /*decoupled=*/true);
    // The tokenizer folder as a repository ships it (tokenizer.json, gunzipped), named relative to the model.
    const std::string tok_dir = fx->repo + "/preprocessing/1/tokenizer";
    fs::create_directories(tok_dir);
    fs::copy_file(kiln::test::data_path("tokenizers/phi3/tokenizer_config.json"),
                  tok_dir + "/tokenizer_config.json");
    {
      gzFile in = gzopen(kiln::test::data_path("tokenizers/phi3/tokenizer.json.gz").c_str(), "rb");
      KILN_CHECK(in != nullptr, "open tokenizer.json.gz");
      std::ofstream out(tok_dir + "/tokenizer.json", std::ios::binary);
      char buf[1 << 16];
      int n = 0;
      while ((n = gzread(in, buf, sizeof buf)) > 0) out.write(buf, n);
      gzclose(in);
    }
    write_model(
        fx->repo, "preprocessing",
        "name: \"preprocessing\"\nbackend: \"python\"\nmax_batch_size: 4\n"
        "input [ { name: \"QUERY\" data_type: TYPE_STRING dims: [ 1 ] } ]\n" +
            param("tokenizer_dir", "/tensorrtllm_backend/triton_model_repo/preprocessing/1/tokenizer") +
            param("tokenizer_type", "auto") + param("add_special_tokens", "False"));
    write_model(fx->repo, "postprocessing",
                "name: \"postprocessing\"\nbackend: \"python\"\nmax_batch_size: 4\n"
                "input [ { name: \"TOKENS_BATCH\" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]\n" +
                    param("tokenizer_dir", "../preprocessing/1/tokenizer") +
                    param("skip_special_tokens", "True"));
    write_model(fx->repo, "ensemble", ensemble_config("ensemble", "tensorrt_llm"));
    write_model(fx->repo, "ensemble_stream", ensemble_config("ensemble_stream", "tensorrt_llm_stream"));
    write_model(fx->repo, "tensorrt_llm_bls",
                "name: \"tensorrt_llm_bls\"\nbackend: \"python\"\nmax_batch_size: 4\n"
                "model_transaction_policy { decoupled: true }\n" +
                    param("tensorrt_llm_model_name", "tensorrt_llm_stream") +
                    param("accumulate_tokens", "false"));
    ServerOptions o;
    o.model_repository = fx->repo;
    auto core = ServerCore::create(o);
    KILN_CHECK(core.ok(), core.status().to_string());
    fx->core = std::move(*core);
    auto tok = Tokenizer::from_dir(tok_dir);
    KILN_CHECK(tok.ok(), tok.status().to_string());
    fx->tok = *tok;
  }
  static void TearDownTestSuite() {
    delete fx;
    fx = nullptr;
  }
};

const std::string kPrompt = "The quick brown fox 한국어 and emoji 🦊 said";

TEST_F(TextModelsTest, EveryModelIsReady) {
  for (const char* m : {"tensorrt_llm", "tensorrt_llm_stream", "preprocessing", "postprocessing", "ensemble",
                        "ensemble_stream", "tensorrt_llm_bls"}) {
    auto ready = fx->core->model_ready(m, "");
    ASSERT_TRUE(ready.ok()) << m << ": " << ready.status().to_string();
    EXPECT_TRUE(*ready) << m;
  }
  EXPECT_TRUE(fx->core->ready());
  auto md = fx->core->model_metadata("ensemble", "");
  ASSERT_TRUE(md.ok());
  EXPECT_EQ(md->platform, "ensemble");
  bool has_text = false;
  for (const TensorMetadata& t : md->inputs)
    if (t.name == "text_input") has_text = t.datatype == "BYTES" && t.shape == std::vector<int64_t>{-1, 1};
  EXPECT_TRUE(has_text) << "the built-in contract when the config lists no inputs";
  md = fx->core->model_metadata("preprocessing", "");
  ASSERT_TRUE(md.ok());
  ASSERT_EQ(md->inputs.size(), 1u);
  EXPECT_EQ(md->inputs[0].datatype, "BYTES") << "TYPE_STRING is BYTES on the wire";
}

TEST_F(TextModelsTest, EnsembleTextIsTheDetokenizedOutputWithoutThePrompt) {
  const std::vector<int32_t> prompt = *fx->tok->encode(kPrompt, false);
  const std::vector<int32_t> gen = generated_ids(prompt, 24);
  ASSERT_FALSE(gen.empty());
  const std::string expected = detokenize(prompt, gen);
  const std::string got = text_of(call(text_call("ensemble", kPrompt, 24)));
  EXPECT_EQ(got, expected);
  // Tokenizer::decode of the ids alone gives the same text, except that a SentencePiece leading space the
  // continuation starts with is kept (the text continues the prompt).
  std::string plain = *fx->tok->decode(gen, true);
  EXPECT_TRUE(got == plain || got == " " + plain) << "text: '" << got << "' decode: '" << plain << "'";
  EXPECT_EQ(got.find("quick brown fox"), std::string::npos) << "exclude_input_in_output defaults to true";
  // The same through the decoupled tensorrt_llm model (which itself excludes the prompt) and the BLS model.
  EXPECT_EQ(text_of(call(text_call("ensemble_stream", kPrompt, 24))), expected);
}

TEST_F(TextModelsTest, EchoWhenAskedFor) {
  InferCall c = text_call("ensemble", kPrompt, 12);
  c.inputs.push_back(flag("exclude_input_in_output", false));
  const std::string echoed = text_of(call(std::move(c)));
  const std::string plain = text_of(call(text_call("ensemble", kPrompt, 12)));
  EXPECT_EQ(echoed, kPrompt + plain);
}

TEST_F(TextModelsTest, StreamingDeltasAreUtf8AndAddUpToTheText) {
  const std::string whole = text_of(call(text_call("ensemble", kPrompt, 32)));
  for (const char* model : {"ensemble_stream", "tensorrt_llm_bls"}) {
    InferCall c = text_call(model, kPrompt, 32);
    c.inputs.push_back(flag("stream", true));
    c.stream = true;
    size_t deltas = 0;
    const Outcome o = call(std::move(c));
    EXPECT_EQ(streamed_text(o, &deltas), whole) << model;
    EXPECT_GT(deltas, 3u) << model << ": a reply per step";
  }
}

TEST_F(TextModelsTest, StopWordsCutTheText) {
  const std::string whole = text_of(call(text_call("ensemble", kPrompt, 32)));
  // A stop string from the middle of the text (two whole characters): the text ends where it first occurs.
  auto next_char = [&](size_t i) {
    for (++i; i < whole.size() && (static_cast<unsigned char>(whole[i]) & 0xC0) == 0x80;) ++i;
    return std::min(i, whole.size());
  };
  size_t at = whole.size() / 2;
  while (at > 0 && (static_cast<unsigned char>(whole[at]) & 0xC0) == 0x80) --at;
  ASSERT_LT(at, whole.size()) << "the text is empty";
  const std::string stop = whole.substr(at, next_char(next_char(at)) - at);
  const std::string expected = whole.substr(0, whole.find(stop));
  ASSERT_LT(expected.size(), whole.size());
  auto with_stop = [&](const std::string& model, bool stream) {
    InferCall c = text_call(model, kPrompt, 32);
    c.inputs.push_back(text("stop_words", {"never appears \xF0\x9F\xA6\x8A\xF0\x9F\xA6\x8A", stop}));
    c.inputs.back().shape = {1, 2};
    if (stream) {
      c.inputs.push_back(flag("stream", true));
      c.stream = true;
    }
    return call(std::move(c));
  };
  // Not decoupled: the whole output is cut afterwards; decoupled: generation is cancelled at the stop string.
  EXPECT_EQ(text_of(with_stop("ensemble", false)), expected) << "stop '" << stop << "'";
  EXPECT_EQ(text_of(with_stop("ensemble_stream", false)), expected) << "stop '" << stop << "'";
  const std::string streamed = streamed_text(with_stop("ensemble_stream", true));
  EXPECT_EQ(streamed, expected) << "stop '" << stop << "'";
  EXPECT_EQ(streamed.find(stop), std::string::npos) << "no part of the stop string leaks";
}

TEST_F(TextModelsTest, BatchOfPromptsGivesEachItsText) {
  const std::string a = text_of(call(text_call("ensemble", kPrompt, 10)));
  const std::string b = text_of(call(text_call("ensemble", "Hello world", 10)));
  InferCall c;
  c.model = "ensemble";
  c.inputs = {text("text_input", {kPrompt, "Hello world"}),
              InferTensor::make("max_tokens", TensorType::kInt32, {2, 1}, std::vector<int32_t>{10, 10})};
  Outcome o = call(std::move(c));
  ASSERT_TRUE(o.error().ok()) << o.error().to_string();
  const InferTensor* t = output(o.replies.back(), "text_output");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->strings(), (std::vector<std::string>{a, b}));
}

// A counter of the server's metrics text for one model, e.g. counter("nv_inference_request_failure", "ensemble").
double counter(const std::string& metric, const std::string& model) {
  const std::string key = metric + "{model=\"" + model + "\",version=\"1\"} ";
  const std::string text = fx->core->metrics_text();
  const size_t at = text.find(key);
  KILN_CHECK(at != std::string::npos, "no metric " + key);
  return std::stod(text.substr(at + key.size(), text.find('\n', at) - at - key.size()));
}

TEST_F(TextModelsTest, ACancelledCallEndsWithAFinalReply) {
  const double ok_before = counter("nv_inference_request_success", "tensorrt_llm_bls");
  const double failed_before = counter("nv_inference_request_failure", "tensorrt_llm_bls");
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    size_t replies = 0;
    bool done = false;
  };
  auto w = std::make_shared<Wait>();
  InferCall c = text_call("tensorrt_llm_bls", kPrompt, 40);
  c.inputs.push_back(flag("stream", true));
  c.stream = true;
  auto cancel = fx->core->infer(std::move(c), [w](InferReply r) {
    std::lock_guard<std::mutex> lock(w->mu);
    ++w->replies;
    w->done |= r.final;
    w->cv.notify_all();
  });
  ASSERT_TRUE(cancel.ok()) << cancel.status().to_string();
  {
    std::unique_lock<std::mutex> lock(w->mu);
    w->cv.wait_for(lock, std::chrono::seconds(60), [&] { return w->replies > 0; });
  }
  (*cancel)();
  (*cancel)();  // twice is harmless
  std::unique_lock<std::mutex> lock(w->mu);
  EXPECT_TRUE(w->cv.wait_for(lock, std::chrono::seconds(60), [&] { return w->done; }));
  lock.unlock();
  // The client went away: a failure in the statistics, not a success (as the tensorrt_llm model counts it).
  EXPECT_EQ(counter("nv_inference_request_success", "tensorrt_llm_bls"), ok_before);
  EXPECT_EQ(counter("nv_inference_request_failure", "tensorrt_llm_bls"), failed_before + 1);
}

TEST_F(TextModelsTest, LogProbsComeThroughPerRow) {
  InferCall c;
  c.model = "ensemble";
  c.inputs = {text("text_input", {kPrompt, "Hello world"}),
              InferTensor::make("max_tokens", TensorType::kInt32, {2, 1}, std::vector<int32_t>{6, 3}),
              InferTensor::make("return_log_probs", TensorType::kBool, {2, 1}, std::vector<uint8_t>{1, 1})};
  Outcome o = call(std::move(c));
  ASSERT_TRUE(o.error().ok()) << o.error().to_string();
  const InferTensor* cum = output(o.replies.back(), "cum_log_probs");
  const InferTensor* lps = output(o.replies.back(), "output_log_probs");
  ASSERT_TRUE(cum && lps);
  EXPECT_EQ(cum->shape, (std::vector<int64_t>{2, 1}));
  ASSERT_EQ(lps->shape.size(), 3u);
  EXPECT_EQ(lps->shape[0], 2);
  const std::vector<float> c2 = cum->values<float>(), l2 = lps->values<float>();
  const int64_t n = lps->shape[2];
  for (int row = 0; row < 2; ++row) {  // each row's cumulative log-prob is the sum of its own token log-probs
    float sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += l2[row * n + k];
    EXPECT_NEAR(sum, c2[row], 1e-3) << "row " << row;
    EXPECT_LT(c2[row], 0.0f);
  }
}

TEST_F(TextModelsTest, PreprocessingAlone) {
  InferCall c;
  c.model = "preprocessing";
  c.inputs = {text("QUERY", {kPrompt}), i32("REQUEST_OUTPUT_LEN", 7),
              text("STOP_WORDS_DICT", {"fox", "said"})};
  c.inputs.back().shape = {1, 2};
  Outcome o = call(std::move(c));
  ASSERT_TRUE(o.error().ok()) << o.error().to_string();
  const InferReply& r = o.replies.back();
  const std::vector<int32_t> ids = *fx->tok->encode(kPrompt, false);
  ASSERT_NE(output(r, "INPUT_ID"), nullptr);
  EXPECT_EQ(output(r, "INPUT_ID")->values<int32_t>(), ids);
  EXPECT_EQ(output(r, "INPUT_ID")->shape, (std::vector<int64_t>{1, static_cast<int64_t>(ids.size())}));
  EXPECT_EQ(output(r, "REQUEST_INPUT_LEN")->values<int32_t>(),
            std::vector<int32_t>{static_cast<int32_t>(ids.size())});
  EXPECT_EQ(output(r, "REQUEST_OUTPUT_LEN")->values<int32_t>(), std::vector<int32_t>{7});
  EXPECT_EQ(output(r, "OUT_END_ID")->values<int32_t>(), std::vector<int32_t>{32000});
  const std::vector<int32_t> fox = *fx->tok->encode("fox", false), said = *fx->tok->encode("said", false);
  const InferTensor* stop = output(r, "STOP_WORDS_IDS");
  ASSERT_NE(stop, nullptr);
  const int64_t n = static_cast<int64_t>(fox.size() + said.size());
  EXPECT_EQ(stop->shape, (std::vector<int64_t>{1, 2, n}));
  std::vector<int32_t> want = fox;
  want.insert(want.end(), said.begin(), said.end());
  want.push_back(static_cast<int32_t>(fox.size()));
  want.push_back(static_cast<int32_t>(n));
  want.resize(2 * n, -1);
  EXPECT_EQ(stop->values<int32_t>(), want);
  EXPECT_EQ(output(r, "BAD_WORDS_IDS")->shape, (std::vector<int64_t>{1, 2, 0}));
}

TEST_F(TextModelsTest, PostprocessingAlone) {
  const std::vector<int32_t> ids = *fx->tok->encode(kPrompt, false);
  std::vector<int32_t> padded = ids;
  padded.push_back(32000);  // EOS, a special token: skipped
  padded.push_back(5);      // past sequence_length: not decoded
  InferCall c;
  c.model = "postprocessing";
  c.inputs = {InferTensor::make("TOKENS_BATCH", TensorType::kInt32,
                                {1, 1, static_cast<int64_t>(padded.size())}, padded),
              InferTensor::make("SEQUENCE_LENGTH", TensorType::kInt32, {1, 1},
                                std::vector<int32_t>{static_cast<int32_t>(ids.size() + 1)})};
  Outcome o = call(std::move(c));
  ASSERT_TRUE(o.error().ok()) << o.error().to_string();
  const InferTensor* t = output(o.replies.back(), "OUTPUT");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->strings(), std::vector<std::string>{*fx->tok->decode(ids, true)});
}

TEST_F(TextModelsTest, PostprocessingSkipsIdsTheTokenizerDoesNotKnow) {
  // The engine's vocabulary (32064) is padded past the tokenizer's: such ids decode to nothing, as Hugging
  // Face's decode (the Python postprocessing) skips them.
  const std::vector<int32_t> ids = *fx->tok->encode(kPrompt, false);
  ASSERT_GE(ids.size(), 2u);
  std::vector<int32_t> with_unknown = {ids[0], fx->tok->vocab_size(), 32063};
  with_unknown.insert(with_unknown.end(), ids.begin() + 1, ids.end());
  InferCall c;
  c.model = "postprocessing";
  c.inputs = {InferTensor::make("TOKENS_BATCH", TensorType::kInt32,
                                {1, 1, static_cast<int64_t>(with_unknown.size())}, with_unknown)};
  Outcome o = call(std::move(c));
  ASSERT_TRUE(o.error().ok()) << o.error().to_string();
  const InferTensor* t = output(o.replies.back(), "OUTPUT");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->strings(), std::vector<std::string>{*fx->tok->decode(ids, true)});
  // A negative id is no token of any vocabulary: still refused.
  c = InferCall();
  c.model = "postprocessing";
  c.inputs = {InferTensor::make("TOKENS_BATCH", TensorType::kInt32, {1, 1, 2}, std::vector<int32_t>{ids[0], -7})};
  o = call(std::move(c));
  EXPECT_EQ(o.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.error().message().find("-7"), std::string::npos) << o.error().message();
}

TEST_F(TextModelsTest, InvalidUtf8IsRefusedNamingTheInputAndOffset) {
  Outcome o = call(text_call("ensemble",
                             std::string("ab\xFF"
                                         "cd"),
                             4));
  EXPECT_EQ(o.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.error().message().find("text_input"), std::string::npos) << o.error().message();
  EXPECT_NE(o.error().message().find("byte offset 2"), std::string::npos) << o.error().message();
  EXPECT_TRUE(o.replies.empty());
  InferCall c;
  c.model = "preprocessing";
  c.inputs = {text("QUERY", {"\xC3"}), i32("REQUEST_OUTPUT_LEN", 4)};
  o = call(std::move(c));
  EXPECT_EQ(o.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.error().message().find("QUERY"), std::string::npos) << o.error().message();
}

TEST_F(TextModelsTest, PromptOverMaxInputLenIsRefusedBeforeItIsQueued) {
  std::string prompt;
  for (int i = 0; i < kMaxInputLen; ++i) prompt += " word" + std::to_string(i);
  Outcome o = call(text_call("ensemble", prompt, 4));
  EXPECT_FALSE(o.started.ok()) << "refused by infer itself, not by a reply";
  EXPECT_EQ(o.started.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.started.message().find("max_input_len"), std::string::npos) << o.started.message();
}

TEST_F(TextModelsTest, BadRequestsAreRefusedByName) {
  auto error_of = [](InferCall c) { return call(std::move(c)).error(); };
  InferCall c = text_call("ensemble", kPrompt, 4);
  c.inputs.push_back(flag("stream", true));
  c.stream = true;
  Status s = error_of(c);  // the tensorrt_llm model behind it is not decoupled
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("decoupled"), std::string::npos) << s.message();
  c.stream = false;
  c.model = "ensemble_stream";
  s = error_of(c);
  EXPECT_NE(s.message().find("ModelStreamInfer"), std::string::npos) << s.message();
  s = error_of(text_call("tensorrt_llm_bls", kPrompt, 4));  // decoupled: a plain call is refused
  EXPECT_NE(s.message().find("decoupled"), std::string::npos) << s.message();
  c = text_call("ensemble", kPrompt, 0);
  EXPECT_NE(error_of(c).message().find("max_tokens"), std::string::npos);
  for (const char* model : {"ensemble", "tensorrt_llm_bls"}) {  // an empty prompt, before BOS is added
    c = text_call(model, "", 4);
    c.stream = true;
    s = error_of(c);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << model;
    EXPECT_NE(s.message().find("'text_input' is empty"), std::string::npos) << s.message();
  }
  c = text_call("ensemble", kPrompt, 4);
  c.inputs.push_back(i32("lora_task_id", 1));
  EXPECT_EQ(error_of(c).code(), StatusCode::kUnimplemented);
  c = text_call("ensemble", kPrompt, 4);
  c.inputs.push_back(i32("no_such_input", 1));
  EXPECT_NE(error_of(c).message().find("no_such_input"), std::string::npos);
  c = text_call("ensemble", kPrompt, 4);
  c.inputs.erase(c.inputs.begin());
  EXPECT_NE(error_of(c).message().find("text_input"), std::string::npos);
  c = text_call("ensemble", kPrompt, 4);
  c.inputs[1] = InferTensor::make("max_tokens", TensorType::kInt64, {1, 1}, std::vector<int64_t>{4});
  EXPECT_NE(error_of(c).message().find("INT32"), std::string::npos);
}

TEST_F(TextModelsTest, TokenizerDirIsResolvedRelativeToTheModel) {
  const std::string model_dir = fx->repo + "/preprocessing";
  auto r =
      resolve_tokenizer_dir(model_dir, "preprocessing", std::string("/elsewhere/preprocessing/1/tokenizer"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(fs::equivalent(*r, model_dir + "/1/tokenizer"));
  EXPECT_TRUE(resolve_tokenizer_dir(model_dir, "preprocessing", std::string("1/tokenizer")).ok());
  EXPECT_EQ(resolve_tokenizer_dir(model_dir, "preprocessing", std::string("/no/such/dir")).status().code(),
            StatusCode::kNotFound);
  EXPECT_FALSE(resolve_tokenizer_dir(model_dir, "preprocessing", std::string("${tokenizer_dir}")).ok());
}


// Typed text generation (text_generation.h, what the OpenAI API runs) on the ensemble's tensorrt_llm model:
// the same text as the tensor path, finish reasons (length, end id, stop string: the request cancelled
// there), token counts, per-token log-probs with their alternatives, and n choices.
struct TypedOutcome {
  Status started;
  std::vector<TextChunk> chunks;
};

TypedOutcome run_typed(TextGenerationCall call) {
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<TextChunk> chunks;
    size_t finals = 0;
  };
  auto model = text_generation_model(*fx->core, "ensemble");
  KILN_CHECK(model.ok(), model.status().to_string());
  const size_t choices = call.choices.size();
  auto w = std::make_shared<Wait>();
  TypedOutcome o;
  auto cancel = generate_text(*model, std::move(call), [w](TextChunk c) {
    std::lock_guard<std::mutex> lock(w->mu);
    w->finals += c.final;
    w->chunks.push_back(std::move(c));
    w->cv.notify_all();
  });
  if (!cancel.ok()) {
    o.started = cancel.status();
    return o;
  }
  std::unique_lock<std::mutex> lock(w->mu);
  KILN_CHECK(w->cv.wait_for(lock, std::chrono::seconds(120), [&] { return w->finals == choices; }), "no final chunk");
  o.chunks = w->chunks;
  return o;
}

std::string typed_text(const TypedOutcome& o, size_t choice, const TextChunk** final = nullptr) {
  std::string s;
  for (const TextChunk& c : o.chunks) {
    if (c.choice != choice) continue;
    EXPECT_TRUE(c.error.ok()) << c.error.to_string();
    s += c.text;
    if (c.final && final) *final = &c;
  }
  return s;
}

TEST_F(TextModelsTest, TypedGenerationFinishReasonsCountsAndLogProbs) {
  EXPECT_EQ(text_generation_model(*fx->core, "tensorrt_llm").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(text_generation_model(*fx->core, "preprocessing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(text_generation_model(*fx->core, "nope").status().code(), StatusCode::kNotFound);

  const std::vector<int32_t> prompt = *fx->tok->encode("The capital of France is", false);
  const std::vector<int32_t> gen = generated_ids(prompt, 8);
  Request greedy;
  greedy.input_ids = prompt;
  greedy.max_new_tokens = 8;
  greedy.sampling.temperature = 0.0f;

  // Length, with two choices.
  TextGenerationCall call;
  call.choices = {greedy, greedy};
  TypedOutcome o = run_typed(call);
  ASSERT_TRUE(o.started.ok()) << o.started.to_string();
  for (size_t k = 0; k < 2; ++k) {
    const TextChunk* last = nullptr;
    EXPECT_EQ(typed_text(o, k, &last), detokenize(prompt, gen));
    ASSERT_NE(last, nullptr);
    EXPECT_EQ(last->finish, TextFinish::kLength);
    EXPECT_EQ(last->completion_tokens, 8);
  }

  // An end id: the text before it, "stop", the end id counted.
  call.choices = {greedy};
  call.choices[0].end_ids = std::vector<int32_t>{gen[3]};
  o = run_typed(call);
  const TextChunk* last = nullptr;
  EXPECT_EQ(typed_text(o, 0, &last), detokenize(prompt, {gen.begin(), gen.begin() + 3}));
  EXPECT_EQ(last->finish, TextFinish::kStop);
  EXPECT_EQ(last->completion_tokens, 4);

  // A stop string: the text before it; the tokens counted end at the one that completed it.
  const std::string full = detokenize(prompt, gen);
  const std::string stop = full.substr(full.size() / 2, 2);
  call.choices = {greedy};
  call.stop = {stop};
  o = run_typed(call);
  EXPECT_EQ(typed_text(o, 0, &last), full.substr(0, full.find(stop)));
  EXPECT_EQ(last->finish, TextFinish::kStop);
  ASSERT_GT(last->completion_tokens, 0);
  EXPECT_NE(detokenize(prompt, {gen.begin(), gen.begin() + last->completion_tokens}).find(stop), std::string::npos);
  EXPECT_EQ(detokenize(prompt, {gen.begin(), gen.begin() + last->completion_tokens - 1}).find(stop), std::string::npos);

  // Log-probs: each token with its string and its best alternatives (greedy: itself first).
  call.stop.clear();
  call.choices = {greedy};
  call.choices[0].output.return_log_probs = true;
  call.choices[0].output.top_log_probs = 3;
  call.token_details = true;
  o = run_typed(call);
  std::vector<GeneratedToken> tokens;
  for (const TextChunk& c : o.chunks) tokens.insert(tokens.end(), c.tokens.begin(), c.tokens.end());
  ASSERT_EQ(tokens.size(), gen.size());
  std::string joined;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(tokens[i].id, gen[i]);
    ASSERT_EQ(tokens[i].top.size(), 3u);
    EXPECT_EQ(tokens[i].top[0].id, gen[i]);
    EXPECT_EQ(tokens[i].top[0].log_prob, tokens[i].log_prob);
    EXPECT_EQ(tokens[i].top[0].text, tokens[i].text);
    EXPECT_LT(tokens[i].log_prob, 0.0f);
    joined += tokens[i].text;
  }
  if (joined.find("\xEF\xBF\xBD") == std::string::npos) { EXPECT_EQ(joined, full); }

  // Refused before anything is queued: the tensorrt_llm model's own limits.
  call.choices = {greedy};
  call.choices[0].input_ids.assign(kMaxInputLen + 1, 5);
  EXPECT_EQ(run_typed(call).started.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::server
