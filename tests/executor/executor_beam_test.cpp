// Beam search through the executor (KV blocks shared between beams, copy-on-write, every case of a model
// in flight at once) against transformers' own beams (tests/data/beam_search/goldens.json).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "executor_fixture.h"

namespace kiln {
namespace {

using nlohmann::json;

class ExecutorBeamSearch : public ::testing::TestWithParam<std::string> {};

TEST_P(ExecutorBeamSearch, ReturnsTransformersBeamsInACrowd) {
  std::ifstream in(test::data_path("beam_search/goldens.json"));
  const json g = json::parse(in);
  const int width = g["num_beams"];
  test::LoadedModel& m = test::load_model(
      {.model = GetParam(), .max_input_len = 256, .max_output_len = 32, .max_beam_width = width, .tokens_per_block = 4});
  ExecutorConfig config;
  config.kv_cache.enable_reuse = true;
  auto ex = test::make_executor(m, config);
  std::vector<std::pair<RequestId, const json*>> sent;
  for (const json& c : g["cases"]) {
    if (c["model"] != GetParam()) continue;
    Request r;
    r.input_ids = c["prompt"].get<std::vector<int32_t>>();
    r.max_new_tokens = c["max_new_tokens"];
    r.end_ids = c["eos_token_ids"].get<std::vector<int32_t>>();
    r.sampling.beam_width = width;
    r.sampling.length_penalty = c["length_penalty"];
    r.sampling.early_stopping = c["early_stopping"];
    r.output.return_log_probs = true;
    auto id = ex->enqueue(std::move(r));
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    sent.push_back({*id, &c});
  }
  ASSERT_GE(sent.size(), 6u);
  for (auto& [id, c] : sent) {
    auto resp = ex->await_final(id);
    ASSERT_TRUE(resp.ok()) << resp.status().to_string();
    SCOPED_TRACE(c->dump().substr(0, 200));
    const auto eos = (*c)["eos_token_ids"].get<std::vector<int32_t>>();
    const auto seqs = (*c)["sequences"].get<std::vector<std::vector<int32_t>>>();
    const auto scores = (*c)["scores"].get<std::vector<float>>();
    const float lp = (*c)["length_penalty"];
    ASSERT_EQ(resp->output_ids.size(), seqs.size());
    for (size_t b = 0; b < seqs.size(); ++b) {
      // Transformers keeps the end id in the sequence; the executor's output stops before it.
      std::vector<int32_t> expect = seqs[b];
      const bool ended = !expect.empty() && std::find(eos.begin(), eos.end(), expect.back()) != eos.end();
      if (ended) expect.pop_back();
      EXPECT_EQ(resp->output_ids[b], expect) << "beam " << b;
      EXPECT_EQ(resp->finish_reasons[b], ended ? FinishReason::kEndId : FinishReason::kLength) << "beam " << b;
      const double len = static_cast<double>(seqs[b].size());
      EXPECT_NEAR(resp->cum_log_probs[b] / std::pow(len, lp), scores[b], 1e-4) << "beam " << b;
    }
  }
  EXPECT_EQ(ex->stats().kv.used_blocks, 0);  // every beam's blocks came back
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ExecutorBeamSearch, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3"));

TEST(ExecutorBeamSearch, PausedBeamsUnderMaxUtilizationFindTheSameBeams) {
  test::LoadedModel& m = test::load_model({.model = "llama", .max_output_len = 32, .max_beam_width = 4});
  std::mt19937 rng(12);
  std::vector<Request> reqs;
  for (int i = 0; i < 12; ++i) {
    Request r;
    r.input_ids = test::random_tokens(rng, 20 + i, static_cast<int32_t>(m.engine.model.vocab_size));
    r.max_new_tokens = 16;
    r.end_ids = std::vector<int32_t>{};
    r.sampling.beam_width = i % 3 == 0 ? 4 : 1;
    reqs.push_back(std::move(r));
  }
  ExecutorConfig tight;
  tight.scheduler.policy = CapacityPolicy::kMaxUtilization;
  tight.kv_cache.max_tokens = 8 * 24;  // 24 blocks: a 4-beam request alone needs up to 20
  auto ex = test::make_executor(m, tight);
  std::vector<RequestId> ids;
  for (const Request& r : reqs) ids.push_back(*ex->enqueue(r));
  std::vector<Response> crowd;
  for (RequestId id : ids) crowd.push_back(*ex->await_final(id));
  const int64_t pauses = ex->stats().preemptions;
  ex.reset();
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(test::run_alone(m, reqs[i]).output_ids, crowd[i].output_ids) << i;
  EXPECT_GT(pauses, 0);
}

}  // namespace
}  // namespace kiln
