// LogitsProcessor: each step alone, their order, request validation, words_from_offsets; and the goldens of
// tests/data/logits_processors (make_goldens.py): LogitsProcessor + TokenSampler::warp give the probability
// vectors of transformers' own processors to 1e-6.
#include "executor/logits_processor.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "executor/sampler.h"
#include "test_util.h"

namespace kiln {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
using nlohmann::json;

std::vector<float> ramp(int n) {
  std::vector<float> l(n);
  for (int i = 0; i < n; ++i) l[i] = static_cast<float>(i) - n / 2.0f;  // negatives and positives
  return l;
}

TEST(LogitsProcessor, InactiveLeavesTheRowAlone) {
  Request r;
  r.input_ids = {1, 2, 3};
  LogitsProcessor p(r, {0}, 10);
  EXPECT_FALSE(p.active());
  std::vector<float> l = ramp(10);
  const std::vector<int32_t> out = {4, 4};
  p.apply(r.input_ids, out, l.data());
  EXPECT_EQ(l, ramp(10));
  // min_length without end ids, or with min_length reached, changes nothing either.
  r.sampling.min_length = 5;
  EXPECT_FALSE(LogitsProcessor(r, {}, 10).active());
}

TEST(LogitsProcessor, RepetitionPenaltyOncePerDistinctToken) {
  Request r;
  r.sampling.repetition_penalty = 2.0f;
  LogitsProcessor p(r, {}, 10);
  std::vector<float> l = ramp(10);  // l[i] = i - 5
  const std::vector<int32_t> prompt = {1, 1, 8, 1}, out = {8, 6, 6};
  p.apply(prompt, out, l.data());
  std::vector<float> want = ramp(10);
  want[1] = -4.0f * 2.0f;  // negative: multiplied
  want[8] = 3.0f / 2.0f;   // positive: divided
  want[6] = 1.0f / 2.0f;
  EXPECT_EQ(l, want);
  // A second call is independent of the first (no state).
  std::vector<float> again = ramp(10);
  p.apply(prompt, out, again.data());
  EXPECT_EQ(again, want);
}

TEST(LogitsProcessor, PresenceAndFrequencyCountOutputTokensOnly) {
  Request r;
  r.sampling.presence_penalty = 0.5f;
  r.sampling.frequency_penalty = 0.25f;
  LogitsProcessor p(r, {}, 10);
  std::vector<float> l(10, 1.0f);
  const std::vector<int32_t> prompt = {2, 2, 3}, out = {3, 7, 7, 7};
  p.apply(prompt, out, l.data());
  std::vector<float> want(10, 1.0f);
  want[3] = 1.0f - (0.5f + 0.25f * 1);
  want[7] = 1.0f - (0.5f + 0.25f * 3);
  EXPECT_EQ(l, want);
}

TEST(LogitsProcessor, BadWords) {
  Request r;
  r.bad_words = {{4}, {1, 2, 9}, {3, 8}, {5, 6, 7}, {0, 1}};
  LogitsProcessor p(r, {}, 10);
  std::vector<float> l(10, 0.0f);
  // context ...1, 2 | 3 : {3, 8} matches the tail (crossing into the output), {1, 2, 9} does not (tail is 2, 3).
  const std::vector<int32_t> prompt = {5, 1, 2}, out = {3};
  p.apply(prompt, out, l.data());
  std::vector<float> want(10, 0.0f);
  want[4] = -kInf;
  want[8] = -kInf;
  EXPECT_EQ(l, want);
  // The prefix may be the whole context (transformers skips the word then; a ban is what the word asks for).
  std::vector<float> m(10, 0.0f);
  const std::vector<int32_t> just = {5, 6}, none = {};
  p.apply(just, none, m.data());
  EXPECT_EQ(m[7], -kInf);
  // A prefix longer than the context cannot match.
  std::vector<float> k(10, 0.0f);
  const std::vector<int32_t> one = {6};
  p.apply(one, none, k.data());
  EXPECT_EQ(k[7], 0.0f);
  EXPECT_EQ(k[4], -kInf);
}

TEST(LogitsProcessor, MinLengthBansEndIdsUntilEnoughNewTokens) {
  Request r;
  r.sampling.min_length = 2;
  LogitsProcessor p(r, {2, 9}, 10);
  const std::vector<int32_t> prompt = {1, 1, 1, 1, 1};
  for (int n = 0; n <= 3; ++n) {
    std::vector<float> l(10, 1.0f);
    const std::vector<int32_t> out(n, 3);
    p.apply(prompt, out, l.data());
    const float want = n < 2 ? -kInf : 1.0f;
    EXPECT_EQ(l[2], want) << n;
    EXPECT_EQ(l[9], want) << n;
    EXPECT_EQ(l[3], 1.0f);
  }
}

TEST(LogitsProcessor, EmbeddingBiasComesFirst) {
  Request r;
  r.embedding_bias.assign(4, 0.0f);
  r.embedding_bias[1] = -3.0f;
  r.sampling.repetition_penalty = 2.0f;
  LogitsProcessor p(r, {}, 4);
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<int32_t> prompt = {1}, out = {};
  p.apply(prompt, out, l.data());
  // bias then penalty: (1 - 3) * 2 = -4 (the other order would give 0.5 - 3).
  EXPECT_EQ(l, (std::vector<float>{1.0f, -4.0f, 1.0f, 1.0f}));
}

TEST(LogitsProcessor, OutOfRangeTokensInTheContextAreIgnored) {
  Request r;
  r.sampling.repetition_penalty = 2.0f;
  r.sampling.frequency_penalty = 1.0f;
  LogitsProcessor p(r, {}, 4);
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<int32_t> prompt = {-1, 7}, out = {4, 1000};
  p.apply(prompt, out, l.data());
  EXPECT_EQ(l, (std::vector<float>{1.0f, 1.0f, 1.0f, 1.0f}));
}

// --- validation ---

Request valid_request() {
  Request r;
  r.input_ids = {1, 2};
  return r;
}

void expect_error(const Request& r, const std::string& field, const std::string& range = "") {
  const Status s = LogitsProcessor::validate(r, 100);
  ASSERT_FALSE(s.ok()) << field;
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
  if (!range.empty()) {
    EXPECT_NE(s.message().find(range), std::string::npos) << s.message();
  }
}

TEST(LogitsProcessorValidate, AcceptsDefaultsAndSaneValues) {
  EXPECT_TRUE(LogitsProcessor::validate(valid_request(), 100).ok());
  Request r = valid_request();
  r.sampling.temperature = 0.0f;
  r.sampling.top_k = 100;
  r.sampling.top_p = 1.0f;
  r.sampling.top_p_min = 1.0f;
  r.sampling.top_p_decay = 0.5f;
  r.sampling.top_p_reset_id = 99;
  r.sampling.repetition_penalty = 0.5f;
  r.sampling.presence_penalty = -2.0f;
  r.sampling.frequency_penalty = 2.0f;
  r.sampling.min_length = 10;
  r.sampling.length_penalty = -1.0f;
  r.end_ids = std::vector<int32_t>{0, 99};
  r.bad_words = {{1}, {2, 3}};
  r.stop_words = {{99}};
  r.embedding_bias.assign(100, 0.0f);
  r.embedding_bias[5] = -kInf;  // a ban
  const Status s = LogitsProcessor::validate(r, 100);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST(LogitsProcessorValidate, EachBadFieldIsNamed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto with = [](auto edit) {
    Request r = valid_request();
    edit(r);
    return r;
  };
  expect_error(with([](Request& r) { r.sampling.temperature = -0.5f; }), "temperature=-0.5", "[0, inf)");
  expect_error(with([&](Request& r) { r.sampling.temperature = nan; }), "temperature");
  expect_error(with([](Request& r) { r.sampling.top_k = -1; }), "runtime_top_k=-1", "[0, 100]");
  expect_error(with([](Request& r) { r.sampling.top_k = 101; }), "runtime_top_k=101", "[0, 100]");
  expect_error(with([](Request& r) { r.sampling.top_p = 1.5f; }), "runtime_top_p=1.5 is outside [0, 1]");
  expect_error(with([](Request& r) { r.sampling.top_p = -0.1f; }), "runtime_top_p=-0.1");
  expect_error(with([](Request& r) { r.sampling.top_p_min = 0.0f; }), "runtime_top_p_min=0", "(0, 1]");
  expect_error(with([](Request& r) { r.sampling.top_p_min = 2.0f; }), "runtime_top_p_min=2");
  expect_error(with([](Request& r) { r.sampling.top_p_decay = 0.0f; }), "runtime_top_p_decay=0", "(0, 1]");
  expect_error(with([](Request& r) { r.sampling.top_p_decay = 1.1f; }), "runtime_top_p_decay=1.1");
  expect_error(with([](Request& r) { r.sampling.top_p_reset_id = 100; }), "runtime_top_p_reset_ids=100", "[0, 100)");
  expect_error(with([](Request& r) { r.sampling.repetition_penalty = 0.0f; }), "repetition_penalty=0", "(0, inf)");
  expect_error(with([](Request& r) { r.sampling.repetition_penalty = kInf; }), "repetition_penalty=inf");
  expect_error(with([&](Request& r) { r.sampling.presence_penalty = nan; }), "presence_penalty=nan");
  expect_error(with([](Request& r) { r.sampling.frequency_penalty = -kInf; }), "frequency_penalty=-inf");
  expect_error(with([](Request& r) { r.sampling.min_length = -1; }), "min_length=-1", "[0, inf)");
  expect_error(with([&](Request& r) { r.sampling.length_penalty = nan; }), "len_penalty=nan");
  expect_error(with([](Request& r) { r.sampling.beam_search_diversity_rate = -1.0f; }),
               "beam_search_diversity_rate=-1");
  expect_error(with([](Request& r) { r.embedding_bias.assign(99, 0.0f); }), "embedding_bias has 99 values", "100");
  expect_error(with([&](Request& r) {
                 r.embedding_bias.assign(100, 0.0f);
                 r.embedding_bias[7] = nan;
               }),
               "embedding_bias[7]=nan");
  expect_error(with([](Request& r) {
                 r.embedding_bias.assign(100, 0.0f);
                 r.embedding_bias[3] = kInf;
               }),
               "embedding_bias[3]=inf");
  expect_error(with([](Request& r) { r.bad_words = {{1}, {2, 100}}; }), "bad_words_list[1][1]=100", "[0, 100)");
  expect_error(with([](Request& r) { r.bad_words = {{-3}}; }), "bad_words_list[0][0]=-3");
  expect_error(with([](Request& r) { r.bad_words = {{1}, {}}; }), "bad_words_list[1] is an empty word");
  expect_error(with([](Request& r) { r.stop_words = {{5, 200}}; }), "stop_words_list[0][1]=200");
  expect_error(with([](Request& r) { r.stop_words = {{}}; }), "stop_words_list[0] is an empty word");
  expect_error(with([](Request& r) { r.end_ids = std::vector<int32_t>{3, 100}; }), "end_id=100", "[0, 100)");
}

TEST(LogitsProcessorValidate, SamplingConfigChecksBeamWidthAndFields) {
  SamplingConfig c;
  EXPECT_TRUE(c.validate(100, 1).ok());
  c.beam_width = 4;
  Status s = c.validate(100, 2);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("beam_width=4 is outside [1, 2]"), std::string::npos) << s.message();
  c.beam_width = 0;
  EXPECT_FALSE(c.validate(100, 2).ok());
  c.beam_width = 1;
  c.top_p = 1.5f;
  s = c.validate(100, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "runtime_top_p=1.5 is outside [0, 1]");
}

TEST(LogitsProcessorWords, FromOffsets) {
  auto w = words_from_offsets({5, 6, 7, 8, 0, 0}, {2, 3, 4, -1, -1, -1});
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(*w, (std::vector<std::vector<int32_t>>{{5, 6}, {7}, {8}}));
  auto none = words_from_offsets({0}, {-1});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto empty = words_from_offsets({}, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(LogitsProcessorWords, FromOffsetsRefusesMalformedLayouts) {
  auto expect = [](const std::vector<int32_t>& ids, const std::vector<int32_t>& offsets, const std::string& what) {
    auto w = words_from_offsets(ids, offsets);
    ASSERT_FALSE(w.ok()) << what;
    EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(w.status().message().find(what), std::string::npos) << w.status().message();
  };
  expect({1, 2, 3}, {2, 1}, "offsets[1]=1 is below the previous offset 2");
  expect({1, 2, 3}, {2, 5}, "offsets[1]=5 is past the 3 ids");
  expect({1, 2, 3}, {0, 2}, "word 0 is empty");
  expect({1, 2, 3}, {1, 1, 2}, "word 1 is empty");
  expect({1, 2, 3}, {1, -1, 3}, "offsets[2]=3 follows -1 padding");
  expect({1, 2, 3}, {1, -2}, "offsets[1]=-2 is negative");
}

TEST(LogitsProcessorWords, FinishReasonNames) {
  EXPECT_STREQ(finish_reason_name(FinishReason::kNotFinished), "not_finished");
  EXPECT_STREQ(finish_reason_name(FinishReason::kEndId), "end_id");
  EXPECT_STREQ(finish_reason_name(FinishReason::kStopWords), "stop_words");
  EXPECT_STREQ(finish_reason_name(FinishReason::kLength), "length");
  EXPECT_STREQ(finish_reason_name(FinishReason::kCancelled), "cancelled");
}

// --- goldens from transformers ---

json read_gz_json(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return json();
  std::string text;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) text.append(buf, n);
  gzclose(f);
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

TEST(LogitsProcessorGoldens, MatchTransformersProbabilities) {
  const std::string path = test::data_path("logits_processors/goldens.json.gz");
  const json doc = read_gz_json(path);
  ASSERT_TRUE(doc.is_object()) << "cannot read " << path;
  const int64_t vocab = doc.at("vocab").get<int64_t>();
  const json& cases = doc.at("cases");
  ASSERT_GE(cases.size(), 30u);
  double worst_of_all = 0;
  for (const json& c : cases) {
    const std::string name = c.at("name").get<std::string>();
    SCOPED_TRACE(name);
    Request r;
    r.input_ids = c.at("prompt").get<std::vector<int32_t>>();
    const std::vector<int32_t> output = c.at("output").get<std::vector<int32_t>>();
    r.embedding_bias = c.at("embedding_bias").get<std::vector<float>>();
    r.bad_words = c.at("bad_words").get<std::vector<std::vector<int32_t>>>();
    const std::vector<int32_t> end_ids = c.at("end_ids").get<std::vector<int32_t>>();
    r.end_ids = end_ids;
    SamplingConfig& s = r.sampling;
    s.repetition_penalty = c.at("repetition_penalty").get<float>();
    s.presence_penalty = c.at("presence_penalty").get<float>();
    s.frequency_penalty = c.at("frequency_penalty").get<float>();
    s.min_length = c.at("min_length").get<int32_t>();
    s.temperature = c.at("temperature").get<float>();
    s.top_k = c.at("top_k").get<int32_t>();
    s.top_p = c.at("top_p").get<float>();
    const Status valid = LogitsProcessor::validate(r, vocab);
    ASSERT_TRUE(valid.ok()) << valid.to_string();

    std::vector<float> logits = c.at("logits").get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(logits.size()), vocab);
    LogitsProcessor(r, end_ids, vocab).apply(r.input_ids, output, logits.data());
    TokenSampler(s, 0).warp(logits.data(), vocab);

    double mx = -kInf;
    for (float v : logits) mx = std::max<double>(mx, v);
    double sum = 0;
    for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
    const std::vector<double> want = c.at("probs").get<std::vector<double>>();
    int64_t kept = 0, bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double p = std::exp(static_cast<double>(logits[i]) - mx) / sum;
      kept += p > 0;
      const double err = std::abs(p - want[i]);
      worst = std::max(worst, err);
      if (err > 1e-6 && bad++ < 5) ADD_FAILURE() << "token " << i << ": " << p << " vs transformers " << want[i];
      if ((p == 0) != (want[i] == 0) && bad++ < 5) ADD_FAILURE() << "token " << i << ": kept differs";
    }
    EXPECT_EQ(kept, c.at("kept").get<int64_t>());
    EXPECT_LE(worst, 1e-6);
    worst_of_all = std::max(worst_of_all, worst);
  }
  std::printf("  %zu cases, largest |p - p_transformers| = %.3g\n", cases.size(), worst_of_all);
}

}  // namespace
}  // namespace kiln
