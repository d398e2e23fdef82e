// Overlap of the host and the device: when every token of a step is picked on the device (argmax here; the
// device sampler on a GPU), the executor launches step N+1 before it collects step N, its inputs taken from
// N's picks on the device. Whatever the schedule, outputs must equal those of the same requests run with the
// overlap off: end ids and stop words found one step late, cancellation and pauses with a pick in flight,
// prefix reuse of blocks committed a step late, and steps that switch between ids and logits.
#include <gtest/gtest.h>

#include <random>

#include "executor_fixture.h"

namespace kiln {
namespace {

using test::EngineOptions;
using test::LoadedModel;
using test::load_model;
using test::make_executor;
using test::run_alone;
using test::expect_same_output;
using test::mixed_requests;
using test::run_crowd;

ExecutorConfig with_overlap(bool on) {
  ExecutorConfig c;
  c.overlap = on;
  return c;
}

// Greedy requests without log-probs (argmax on the device), with end ids and stop words taken from their own
// reference outputs so that some finish early, a few streamed, a few of one token.
std::vector<Request> greedy_requests(LoadedModel& m, uint32_t seed, int n) {
  std::vector<Request> reqs = mixed_requests(seed, static_cast<int32_t>(m.engine.model.vocab_size), n);
  std::mt19937 rng(seed + 1);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.output.return_log_probs = false;
    r.streaming = i % 5 == 1;
    if (i % 7 == 3) r.max_new_tokens = 1;
    const Response ref = run_alone(m, r, with_overlap(false));
    const std::vector<int32_t>& out = ref.output_ids[0];
    if (out.size() >= 4 && i % 3 == 0) r.end_ids = std::vector<int32_t>{out[out.size() / 2]};
    if (out.size() >= 4 && i % 3 == 1) r.stop_words = {{out[1], out[2]}};
  }
  return reqs;
}

void expect_overlap_matches(const std::string& model, bool chunked, bool reuse) {
  LoadedModel& m = load_model({.model = model, .max_num_tokens = chunked ? 40 : 256});
  const std::vector<Request> reqs = greedy_requests(m, 23, 14);
  ExecutorConfig config;
  config.scheduler.enable_chunked_context = chunked;
  config.kv_cache.enable_reuse = reuse;
  auto ex = make_executor(m, config);
  const auto crowd = run_crowd(*ex, reqs, 5);
  const ExecutorStats stats = ex->stats();
  ex->shutdown();
  EXPECT_GT(stats.launched_ahead, 0) << "greedy steps should have been launched ahead";
  EXPECT_EQ(ex->stats().kv.used_blocks, 0);
  ex.reset();
  int early = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Response alone = run_alone(m, reqs[i], with_overlap(false));
    expect_same_output(alone, crowd[i], "request " + std::to_string(i));
    early += alone.finish_reasons[0] != FinishReason::kLength;
  }
  EXPECT_GT(early, 2) << "some requests should end by an end id or a stop word";
}

TEST(ExecutorOverlap, SameOutputsAsWithoutOverlap) { expect_overlap_matches("llama", false, false); }
TEST(ExecutorOverlap, SameOutputsChunkedWithPrefixReuse) { expect_overlap_matches("llama", true, true); }
TEST(ExecutorOverlap, SameOutputsQwen3) { expect_overlap_matches("qwen3", true, true); }

TEST(ExecutorOverlap, AloneEqualsWithoutOverlapAndLaunchesAhead) {
  LoadedModel& m = load_model({.model = "llama"});
  Request r = mixed_requests(3, static_cast<int32_t>(m.engine.model.vocab_size), 1)[0];
  r.output.return_log_probs = false;
  r.max_new_tokens = 16;
  auto ex = make_executor(m, with_overlap(true));
  auto id = ex->enqueue(r);
  ASSERT_TRUE(id.ok());
  auto on = ex->await_final(*id);
  ASSERT_TRUE(on.ok());
  // 16 tokens: the prefill, then 15 decode steps each launched before the previous was collected.
  EXPECT_EQ(ex->stats().launched_ahead, 15);
  ex.reset();
  expect_same_output(run_alone(m, r, with_overlap(false)), *on, "alone");
}

// Pauses (max_utilization) take requests whose last pick is still on the device.
TEST(ExecutorOverlap, PausesWithPicksInFlight) {
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 16, .max_num_tokens = 128});
  const int32_t vocab = static_cast<int32_t>(m.engine.model.vocab_size);
  std::mt19937 rng(31);
  std::vector<Request> reqs;
  for (int i = 0; i < 40; ++i) {
    Request r;
    r.input_ids = test::random_tokens(rng, std::uniform_int_distribution<int>(8, 40)(rng), vocab);
    r.max_new_tokens = std::uniform_int_distribution<int>(8, 24)(rng);
    r.end_ids = std::vector<int32_t>{};
    reqs.push_back(std::move(r));
  }
  ExecutorConfig config;
  config.scheduler.policy = CapacityPolicy::kMaxUtilization;
  config.kv_cache.max_tokens = 8 * 40;
  auto ex = make_executor(m, config);
  std::vector<RequestId> ids;
  for (const Request& r : reqs) ids.push_back(*ex->enqueue(r));
  std::vector<Response> crowd;
  for (RequestId id : ids) {
    auto resp = ex->await_final(id);
    ASSERT_TRUE(resp.ok()) << resp.status().to_string();
    crowd.push_back(std::move(*resp));
  }
  const ExecutorStats s = ex->stats();
  ex.reset();
  EXPECT_GT(s.preemptions, 0);
  EXPECT_GT(s.launched_ahead, 0);
  EXPECT_EQ(s.kv.used_blocks, 0);
  for (size_t i = 0; i < reqs.size(); ++i)
    expect_same_output(run_alone(m, reqs[i], with_overlap(false)), crowd[i], "request " + std::to_string(i));
}

// Requests that need logits on the host (log-probs) beside argmax ones: steps switch between the two outputs.
TEST(ExecutorOverlap, StepsSwitchBetweenIdsAndLogits) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  std::vector<Request> reqs = mixed_requests(41, static_cast<int32_t>(m.engine.model.vocab_size), 12);
  for (size_t i = 0; i < reqs.size(); i += 2) reqs[i].output.return_log_probs = false;
  auto ex = make_executor(m);
  const auto crowd = run_crowd(*ex, reqs, 9);
  ex.reset();
  for (size_t i = 0; i < reqs.size(); ++i)
    expect_same_output(run_alone(m, reqs[i], with_overlap(false)), crowd[i], "request " + std::to_string(i));
}

// Cancelling requests whose picks are in flight returns every block; the others are unaffected.
TEST(ExecutorOverlap, CancelWithPicksInFlight) {
  LoadedModel& m = load_model({.model = "llama", .max_output_len = 64});
  std::vector<Request> reqs = mixed_requests(52, static_cast<int32_t>(m.engine.model.vocab_size), 8);
  for (Request& r : reqs) {
    r.output.return_log_probs = false;
    r.max_new_tokens = 48;
  }
  auto ex = make_executor(m);
  std::vector<RequestId> ids;
  for (const Request& r : reqs) ids.push_back(*ex->enqueue(r));
  test::wait_for_iteration(*ex, 6);
  for (size_t i = 0; i < ids.size(); i += 2) ex->cancel(ids[i]);
  for (size_t i = 0; i < ids.size(); ++i) {
    auto resp = ex->await_final(ids[i]);
    ASSERT_TRUE(resp.ok());
    if (i % 2 == 1) expect_same_output(run_alone(m, reqs[i], with_overlap(false)), *resp, "kept " + std::to_string(i));
  }
  ex->shutdown();
  EXPECT_EQ(ex->stats().kv.used_blocks, 0);
}

// Streamed deltas of a request that ends by an end id while its next pick is in flight: the chunks add up to
// the output without overlap, nothing past the end id is ever sent, and the end id itself is not shown.
TEST(ExecutorOverlap, StreamStopsAtTheEndIdWithAPickInFlight) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  Request r = mixed_requests(71, static_cast<int32_t>(m.engine.model.vocab_size), 1)[0];
  r.output.return_log_probs = false;
  r.max_new_tokens = 20;
  const std::vector<int32_t> free_run = run_alone(m, r, with_overlap(false)).output_ids[0];
  ASSERT_GE(free_run.size(), 10u);
  r.end_ids = std::vector<int32_t>{free_run[6]};
  const Response ref = run_alone(m, r, with_overlap(false));
  ASSERT_EQ(ref.finish_reasons[0], FinishReason::kEndId);
  r.streaming = true;
  auto ex = make_executor(m, with_overlap(true));
  const RequestId id = *ex->enqueue(r);
  std::vector<int32_t> tokens;
  for (bool done = false; !done;)
    for (const Response& c : ex->await_responses(id)) {
      ASSERT_TRUE(c.error.ok());
      tokens.insert(tokens.end(), c.output_ids[0].begin(), c.output_ids[0].end());
      if (c.is_final) {
        done = true;
        EXPECT_EQ(c.finish_reasons[0], FinishReason::kEndId);
      }
    }
  EXPECT_EQ(tokens, ref.output_ids[0]);
  EXPECT_GT(ex->stats().launched_ahead, 0);
  ex->shutdown();
  EXPECT_EQ(ex->stats().kv.used_blocks, 0);
}

// Beam search (logits on the host, never run ahead) beside greedy requests (run ahead when alone in a step).
TEST(ExecutorOverlap, BeamsBesideGreedyRequests) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256, .max_beam_width = 3, .tokens_per_block = 4});
  std::vector<Request> reqs = mixed_requests(83, static_cast<int32_t>(m.engine.model.vocab_size), 8);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].output.return_log_probs = i % 4 == 0;  // the beams' scores; the greedy ones pick by argmax
    if (i % 4 == 0) reqs[i].sampling.beam_width = 3;
    if (i % 4 != 0) reqs[i].max_new_tokens = 16;  // greedy ones outlast the beams
  }
  auto ex = make_executor(m);
  const auto crowd = run_crowd(*ex, reqs, 13);
  EXPECT_GT(ex->stats().launched_ahead, 0);
  ex.reset();
  for (size_t i = 0; i < reqs.size(); ++i)
    expect_same_output(run_alone(m, reqs[i], with_overlap(false)), crowd[i], "request " + std::to_string(i));
}

}  // namespace
}  // namespace kiln
