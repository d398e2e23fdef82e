// The in-flight batching executor on the fixture models (fp32, CPU): batch invariance, prefix reuse,
// cancellation, capacity policies, the decoding contract end to end, and request validation.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cmath>
#include <thread>

#include "executor/sequence_runner.h"
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
using test::wait_for_iteration;

struct InvarianceCase {
  std::string model;
  bool chunked;
  bool reuse;
};

class BatchInvariance : public ::testing::TestWithParam<InvarianceCase> {};

TEST_P(BatchInvariance, GreedyTokensAndLogProbsEqualAlone) {
  const InvarianceCase& p = GetParam();
  EngineOptions plain{.model = p.model, .max_num_tokens = 256};
  EngineOptions small = plain;
  small.max_num_tokens = 40;  // prompts up to 100 tokens arrive in chunks
  LoadedModel& ref_model = load_model(plain);
  LoadedModel& model = load_model(p.chunked ? small : plain);
  const auto reqs = mixed_requests(7, static_cast<int32_t>(ref_model.engine.model.vocab_size));

  ExecutorConfig config;
  config.scheduler.enable_chunked_context = p.chunked;
  config.kv_cache.enable_reuse = p.reuse;
  auto ex = make_executor(model, config);
  const auto crowd = run_crowd(*ex, reqs, 11);
  const ExecutorStats stats = ex->stats();
  EXPECT_GT(stats.iterations, 0);
  if (p.reuse) {
    EXPECT_GT(stats.kv.reused_blocks, 0) << "the shared 40-token prefix should be reused";
  }
  for (size_t i = 0; i < reqs.size(); ++i)
    expect_same_output(run_alone(ref_model, reqs[i]), crowd[i], "request " + std::to_string(i));
  ex->shutdown();
  EXPECT_EQ(ex->stats().kv.used_blocks, 0);
}

INSTANTIATE_TEST_SUITE_P(Executor, BatchInvariance,
                         ::testing::Values(InvarianceCase{"llama", false, false}, InvarianceCase{"llama", true, false},
                                           InvarianceCase{"llama", false, true}, InvarianceCase{"llama", true, true},
                                           InvarianceCase{"mistral", true, true}, InvarianceCase{"qwen3", true, true}),
                         [](const auto& info) {
                           return info.param.model + (info.param.chunked ? "_chunked" : "") +
                                  (info.param.reuse ? "_reuse" : "");
                         });

TEST(Executor, MatchesSequenceRunnerGreedy) {
  LoadedModel& m = load_model({.model = "qwen2", .max_num_tokens = 256});
  std::mt19937 rng(3);
  Request r;
  r.input_ids = test::random_tokens(rng, 37, static_cast<int32_t>(m.engine.model.vocab_size));
  r.max_new_tokens = 20;
  r.end_ids = std::vector<int32_t>{};
  r.output.return_log_probs = true;
  const Response resp = run_alone(m, r);
  auto runner = SequenceRunner::create(*m.model, *m.backend);
  ASSERT_TRUE(runner.ok());
  auto g = (*runner)->generate(r.input_ids, {.max_new_tokens = 20, .stop_at_eos = false});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(resp.output_ids[0], g->output_ids);
  for (size_t i = 0; i < g->log_probs.size(); ++i) EXPECT_NEAR(resp.output_log_probs[0][i], g->log_probs[i], 1e-5);
  EXPECT_EQ(resp.finish_reasons[0], FinishReason::kLength);
}

TEST(Executor, SeededSamplingIsTheSameAloneAndInACrowd) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 64});
  const int32_t vocab = static_cast<int32_t>(m.engine.model.vocab_size);
  auto reqs = mixed_requests(21, vocab);
  for (size_t i = 0; i < reqs.size(); i += 2) {  // every other request samples, with its own seed
    reqs[i].sampling.temperature = 0.9f;
    reqs[i].sampling.top_k = 50;
    reqs[i].sampling.top_p = 0.95f;
    reqs[i].sampling.repetition_penalty = 1.1f;
    reqs[i].sampling.random_seed = 1000 + i;
  }
  ExecutorConfig config;
  config.kv_cache.enable_reuse = true;
  auto ex = make_executor(m, config);
  const auto crowd = run_crowd(*ex, reqs, 5);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Response alone = run_alone(m, reqs[i]);
    EXPECT_EQ(alone.output_ids, crowd[i].output_ids) << "request " << i;
  }
  // A different seed gives a different sample (with overwhelming probability over 16 tokens).
  Request other = reqs[0];
  other.sampling.random_seed = 999999;
  other.max_new_tokens = 16;
  Request same = reqs[0];
  same.max_new_tokens = 16;
  EXPECT_NE(run_alone(m, other).output_ids, run_alone(m, same).output_ids);
}

TEST(Executor, PrefixReuseReportsBlocksAndKeepsOutputs) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  const int32_t vocab = static_cast<int32_t>(m.engine.model.vocab_size);
  std::mt19937 rng(9);
  const auto prefix = test::random_tokens(rng, 24, vocab);  // three blocks of 8
  Request a, b;
  a.input_ids = prefix;
  b.input_ids = prefix;
  for (int32_t t : test::random_tokens(rng, 6, vocab)) a.input_ids.push_back(t);
  for (int32_t t : test::random_tokens(rng, 9, vocab)) b.input_ids.push_back(t);
  a.max_new_tokens = b.max_new_tokens = 10;
  a.end_ids = b.end_ids = std::vector<int32_t>{};
  a.output.return_log_probs = b.output.return_log_probs = true;

  ExecutorConfig config;
  config.kv_cache.enable_reuse = true;
  auto ex = make_executor(m, config);
  auto ra = ex->await_final(*ex->enqueue(a));
  ASSERT_TRUE(ra.ok());
  EXPECT_EQ(ex->stats().kv.reused_blocks, 0);
  auto rb = ex->await_final(*ex->enqueue(b));
  ASSERT_TRUE(rb.ok());
  const KvCacheStats kv = ex->stats().kv;
  EXPECT_EQ(kv.reused_blocks, 3);
  EXPECT_EQ(kv.tokens_per_block, 8);
  EXPECT_EQ(kv.used_blocks, 0);  // cached blocks are free to evict
  expect_same_output(run_alone(m, b), *rb, "reusing request");
  expect_same_output(run_alone(m, a), *ra, "first request");
}

TEST(Executor, CancelMidGenerationReturnsEveryBlock) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  for (bool reuse : {false, true}) {
    ExecutorConfig config;
    config.kv_cache.enable_reuse = reuse;
    auto ex = make_executor(m, config);
    const KvCacheStats idle = ex->stats().kv;
    std::mt19937 rng(4);
    Request r;
    r.input_ids = test::random_tokens(rng, 50, static_cast<int32_t>(m.engine.model.vocab_size));
    r.max_new_tokens = 32;
    r.streaming = true;
    r.end_ids = std::vector<int32_t>{};
    // The second streamed chunk cancels the request (from the engine thread, as a server handler would).
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Response> got;
    int64_t used_while_running = -1;
    r.on_response = [&](const Response& resp) {
      if (got.size() == 1) {  // the stats of the step that made the first chunk are out by now
        used_while_running = ex->stats().kv.used_blocks;
        ex->cancel(resp.id);
      }
      std::lock_guard<std::mutex> lock(mu);
      got.push_back(resp);
      cv.notify_all();
    };
    ASSERT_TRUE(ex->enqueue(r).ok());
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return !got.empty() && got.back().is_final; }));
    EXPECT_GT(used_while_running, 0);
    EXPECT_EQ(got.back().finish_reasons[0], FinishReason::kCancelled);
    EXPECT_LT(got.back().sequence_lengths[0], 32);
    EXPECT_GE(got.size(), 3u);
    const KvCacheStats after = ex->stats().kv;
    EXPECT_EQ(after.used_blocks, 0);
    EXPECT_EQ(after.free_blocks, idle.free_blocks);
    EXPECT_EQ(after.max_blocks, idle.max_blocks);
    EXPECT_EQ(ex->stats().cancelled, 1);
  }
}

// 64 requests at once into a KV cache that holds only a few of them.
void burst(CapacityPolicy policy, bool expect_pauses) {
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 16, .max_num_tokens = 128});
  const int32_t vocab = static_cast<int32_t>(m.engine.model.vocab_size);
  std::mt19937 rng(17);
  std::vector<Request> reqs;
  for (int i = 0; i < 64; ++i) {
    Request r;
    r.input_ids = test::random_tokens(rng, std::uniform_int_distribution<int>(8, 40)(rng), vocab);
    r.max_new_tokens = std::uniform_int_distribution<int>(8, 24)(rng);
    r.end_ids = std::vector<int32_t>{};
    r.output.return_log_probs = true;
    reqs.push_back(std::move(r));
  }
  ExecutorConfig config;
  config.scheduler.policy = policy;
  config.kv_cache.max_tokens = 8 * 40;  // 40 blocks of 8: about 5 sequences of 64 tokens
  auto ex = make_executor(m, config);
  std::vector<RequestId> ids;
  for (const Request& r : reqs) ids.push_back(*ex->enqueue(r));
  std::vector<Response> crowd;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto resp = ex->await_final(ids[i]);
    ASSERT_TRUE(resp.ok()) << resp.status().to_string();
    crowd.push_back(std::move(*resp));
  }
  const ExecutorStats s = ex->stats();
  ex.reset();  // a model runs under one executor at a time
  for (size_t i = 0; i < ids.size(); ++i) expect_same_output(run_alone(m, reqs[i]), crowd[i], "request " + std::to_string(i));
  EXPECT_EQ(s.completed, 64);
  EXPECT_EQ(s.failed, 0);
  if (expect_pauses) {
    EXPECT_GT(s.preemptions, 0) << "the budget should have forced pauses";
  } else {
    EXPECT_EQ(s.preemptions, 0);
  }
  EXPECT_EQ(s.kv.used_blocks, 0);
}

TEST(Executor, MaxUtilizationCompletesABurstByPausing) { burst(CapacityPolicy::kMaxUtilization, true); }
TEST(Executor, GuaranteedNoEvictCompletesABurstWithoutPausing) { burst(CapacityPolicy::kGuaranteedNoEvict, false); }

TEST(Executor, StreamingChunksAddUpToTheWholeOutput) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  std::mt19937 rng(5);
  Request r;
  r.input_ids = test::random_tokens(rng, 20, static_cast<int32_t>(m.engine.model.vocab_size));
  r.max_new_tokens = 12;
  r.end_ids = std::vector<int32_t>{};
  r.output.return_log_probs = true;
  const Response whole = run_alone(m, r);
  r.streaming = true;
  auto ex = make_executor(m);
  const RequestId id = *ex->enqueue(r);
  std::vector<int32_t> tokens;
  int chunks = 0;
  for (bool done = false; !done;) {
    for (const Response& c : ex->await_responses(id)) {
      ASSERT_TRUE(c.error.ok());
      EXPECT_TRUE(c.is_delta);
      tokens.insert(tokens.end(), c.output_ids[0].begin(), c.output_ids[0].end());
      ++chunks;
      if (c.is_final) {
        done = true;
        EXPECT_EQ(c.sequence_lengths[0], 12);
        EXPECT_EQ(c.finish_reasons[0], FinishReason::kLength);
        EXPECT_NEAR(c.cum_log_probs[0], whole.cum_log_probs[0], 1e-4);
      }
    }
  }
  EXPECT_EQ(tokens, whole.output_ids[0]);
  EXPECT_GE(chunks, 12);  // a chunk per step, then the final one
}

// Top log-probs travel with their tokens: the best alternative of a greedy token is the token itself with its
// output log-prob exactly, streamed chunks add up to the whole response, and asking changes no token.
TEST(Executor, TopLogProbsComeWithEachTokenStreamedOrNot) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  std::mt19937 rng(8);
  Request r;
  r.input_ids = test::random_tokens(rng, 14, static_cast<int32_t>(m.engine.model.vocab_size));
  r.max_new_tokens = 10;
  r.end_ids = std::vector<int32_t>{};
  r.output.return_log_probs = true;
  r.sampling.repetition_penalty = 1.3f;  // the alternatives come from the processed logits
  const Response plain = run_alone(m, r);
  r.output.top_log_probs = 4;
  const Response whole = run_alone(m, r);
  ASSERT_EQ(whole.output_ids, plain.output_ids);
  ASSERT_EQ(whole.output_log_probs, plain.output_log_probs);
  ASSERT_EQ(whole.top_log_probs.size(), 1u);
  ASSERT_EQ(whole.top_log_probs[0].size(), whole.output_ids[0].size());
  for (size_t i = 0; i < whole.output_ids[0].size(); ++i) {
    const auto& top = whole.top_log_probs[0][i];
    ASSERT_EQ(top.size(), 4u);
    EXPECT_EQ(top[0].token, whole.output_ids[0][i]);
    EXPECT_EQ(top[0].log_prob, whole.output_log_probs[0][i]);
    for (size_t k = 1; k < top.size(); ++k) EXPECT_LE(top[k].log_prob, top[k - 1].log_prob);
  }
  EXPECT_TRUE(plain.top_log_probs.empty());

  // Sampling: the drawn token's log-prob is its entry whenever it is among the alternatives.
  Request sampled = r;
  sampled.sampling.temperature = 0.8f;
  sampled.sampling.top_p = 1.0f;
  sampled.sampling.random_seed = 17;
  const Response s = run_alone(m, sampled);
  for (size_t i = 0; i < s.output_ids[0].size(); ++i)
    for (const TokenLogProb& t : s.top_log_probs[0][i])
      if (t.token == s.output_ids[0][i]) { EXPECT_EQ(t.log_prob, s.output_log_probs[0][i]); }

  r.streaming = true;
  auto ex = make_executor(m);
  const RequestId id = *ex->enqueue(r);
  std::vector<std::vector<TokenLogProb>> streamed;
  for (bool done = false; !done;) {
    for (const Response& c : ex->await_responses(id)) {
      ASSERT_TRUE(c.error.ok());
      ASSERT_EQ(c.top_log_probs.size(), 1u);
      ASSERT_EQ(c.top_log_probs[0].size(), c.output_ids[0].size());
      streamed.insert(streamed.end(), c.top_log_probs[0].begin(), c.top_log_probs[0].end());
      done = c.is_final;
    }
  }
  EXPECT_EQ(streamed, whole.top_log_probs[0]);

  Request bad = r;
  bad.output.top_log_probs = kMaxTopLogProbs + 1;
  auto refused = ex->enqueue(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("top_log_probs=21"), std::string::npos) << refused.status().to_string();
}

TEST(Executor, EndIdStopWordsMinLengthAndBadWords) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  std::mt19937 rng(6);
  Request base;
  base.input_ids = test::random_tokens(rng, 15, static_cast<int32_t>(m.engine.model.vocab_size));
  base.max_new_tokens = 16;
  base.end_ids = std::vector<int32_t>{};
  const std::vector<int32_t> free_run = run_alone(m, base).output_ids[0];
  ASSERT_EQ(free_run.size(), 16u);

  Request end = base;  // the 5th token as end id: generation stops there, the end id not shown
  end.end_ids = std::vector<int32_t>{free_run[4]};
  const size_t first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  Response r = run_alone(m, end);
  EXPECT_EQ(r.finish_reasons[0], FinishReason::kEndId);
  EXPECT_EQ(r.output_ids[0], std::vector<int32_t>(free_run.begin(), free_run.begin() + first));

  Request stop = base;  // a two-token stop word: kept in the output
  stop.stop_words = {{free_run[6], free_run[7]}};
  r = run_alone(m, stop);
  EXPECT_EQ(r.finish_reasons[0], FinishReason::kStopWords);
  EXPECT_EQ(r.output_ids[0].size(), 8u);
  EXPECT_EQ(r.output_ids[0], std::vector<int32_t>(free_run.begin(), free_run.begin() + 8));

  Request minlen = end;  // the end id is banned until 10 tokens exist
  minlen.sampling.min_length = 10;
  r = run_alone(m, minlen);
  for (size_t i = 0; i + 1 < std::min<size_t>(r.output_ids[0].size(), 10); ++i) EXPECT_NE(r.output_ids[0][i], free_run[4]);
  EXPECT_GE(r.output_ids[0].size(), 10u);

  Request bad = base;  // banning the first greedy token changes it
  bad.bad_words = {{free_run[0]}};
  r = run_alone(m, bad);
  EXPECT_NE(r.output_ids[0][0], free_run[0]);
  for (int32_t t : r.output_ids[0]) EXPECT_NE(t, free_run[0]);
}

TEST(Executor, ContextAndGenerationLogits) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 16});  // prompt of 37 arrives in 3 chunks
  const int64_t V = m.engine.model.vocab_size;
  std::mt19937 rng(8);
  Request r;
  r.input_ids = test::random_tokens(rng, 37, static_cast<int32_t>(V));
  r.max_new_tokens = 4;
  r.end_ids = std::vector<int32_t>{};
  r.output.return_context_logits = true;
  r.output.return_generation_logits = true;
  ExecutorConfig config;
  config.kv_cache.enable_reuse = true;  // ignored for this request: every prompt position is computed
  const Response resp = run_alone(m, r, config);
  ASSERT_EQ(resp.context_logits.size(), static_cast<size_t>(37 * V));
  ASSERT_EQ(resp.generation_logits.size(), static_cast<size_t>(4 * V));
  auto runner = SequenceRunner::create(*m.model, *m.backend);
  auto g = (*runner)->generate(r.input_ids, {.max_new_tokens = 4, .stop_at_eos = false, .return_prompt_logits = true});
  ASSERT_TRUE(g.ok());
  for (size_t i = 0; i < resp.context_logits.size(); ++i) ASSERT_NEAR(resp.context_logits[i], g->prompt_logits[i], 1e-4);
  // The first generation step's logits are the last prompt position's; each step's argmax is its token.
  for (int64_t j = 0; j < V; ++j) EXPECT_NEAR(resp.generation_logits[j], resp.context_logits[36 * V + j], 1e-6);
  for (int s = 0; s < 4; ++s) EXPECT_EQ(argmax(resp.generation_logits.data() + s * V, V), resp.output_ids[0][s]);
}

TEST(Executor, EchoesThePromptWhenAsked) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  Request r;
  r.input_ids = {1, 2, 3, 4, 5};
  r.max_new_tokens = 3;
  r.end_ids = std::vector<int32_t>{};
  r.output.exclude_input_from_output = false;
  const Response resp = run_alone(m, r);
  ASSERT_EQ(resp.output_ids[0].size(), 8u);
  EXPECT_EQ(std::vector<int32_t>(resp.output_ids[0].begin(), resp.output_ids[0].begin() + 5), r.input_ids);
  EXPECT_EQ(resp.sequence_lengths[0], 8);
}

TEST(Executor, RefusesBadRequestsByName) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  auto ex = make_executor(m);
  auto refused = [&](Request r, const std::string& needle) {
    auto id = ex->enqueue(std::move(r));
    ASSERT_FALSE(id.ok()) << needle;
    EXPECT_NE(id.status().message().find(needle), std::string::npos) << id.status().to_string();
  };
  Request ok;
  ok.input_ids = {1, 2, 3};
  ok.max_new_tokens = 4;
  Request r = ok;
  r.input_ids.clear();
  refused(r, "input_ids is empty");
  r = ok;
  r.input_ids.assign(129, 1);
  refused(r, "max_input_len=128");
  r = ok;
  r.input_ids = {1, -5};
  refused(r, "input_ids[1]=-5");
  r = ok;
  r.max_new_tokens = 0;
  refused(r, "request_output_len");
  r = ok;
  r.max_new_tokens = 200;
  refused(r, "max_seq_len");
  r = ok;
  r.sampling.beam_width = 2;
  refused(r, "beam_width");
  r = ok;
  r.sampling.top_p = 1.5f;
  refused(r, "top_p");
  r = ok;
  r.end_ids = std::vector<int32_t>{1 << 20};
  refused(r, "end_id");
  r = ok;
  r.embedding_bias = {1.0f, 2.0f};
  refused(r, "embedding_bias");
  r = ok;
  r.lora_task_id = 3;
  refused(r, "lora_task_id");
  r = ok;
  r.draft_input_ids = {1, 2};
  refused(r, "draft_input_ids");
  r = ok;
  r.prompt_embedding_table = {0.5f};
  refused(r, "prompt_embedding_table");
  ex->shutdown();
  refused(ok, "shutting down");
}

TEST(Executor, OverloadIsRefusedNotQueuedForever) {
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 1, .max_num_tokens = 256});
  ExecutorConfig config;
  config.scheduler.max_queue_size = 2;
  auto ex = make_executor(m, config);
  Request r;
  r.input_ids.assign(60, 3);
  r.max_new_tokens = 32;
  r.end_ids = std::vector<int32_t>{};
  int refused = 0;
  std::vector<RequestId> ids;
  for (int i = 0; i < 12; ++i) {
    auto id = ex->enqueue(r);
    if (id.ok()) ids.push_back(*id);
    else {
      EXPECT_EQ(id.status().code(), StatusCode::kUnavailable);
      EXPECT_NE(id.status().message().find("overloaded"), std::string::npos);
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  for (RequestId id : ids) EXPECT_TRUE(ex->await_final(id).ok());
}

TEST(Executor, PriorityOrdersAdmissionThenArrival) {
  // One request at a time: completion order is admission order.
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 1, .max_num_tokens = 256});
  auto ex = make_executor(m);
  std::mutex mu;
  std::vector<std::string> order;
  auto request = [&](const std::string& name, float priority) {
    Request r;
    r.input_ids = {4, 5, 6};
    r.max_new_tokens = 4;
    r.end_ids = std::vector<int32_t>{};
    r.priority = priority;
    r.on_response = [&, name](const Response& resp) {
      if (!resp.is_final) return;
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(name);
    };
    return r;
  };
  ASSERT_TRUE(ex->enqueue(request("first", 1.0f)).ok());  // highest: runs first even if all arrive together
  ASSERT_TRUE(ex->enqueue(request("low", 0.1f)).ok());
  ASSERT_TRUE(ex->enqueue(request("default_a", 0.5f)).ok());
  ASSERT_TRUE(ex->enqueue(request("high", 0.9f)).ok());
  ASSERT_TRUE(ex->enqueue(request("default_b", 0.5f)).ok());
  ex->shutdown(/*drain=*/true);
  EXPECT_EQ(order, (std::vector<std::string>{"first", "high", "default_a", "default_b", "low"}));

  auto fresh = make_executor(m);
  Request bad = request("bad", 1.5f);
  auto id = fresh->enqueue(bad);
  ASSERT_FALSE(id.ok());
  EXPECT_NE(id.status().message().find("priority"), std::string::npos);
}

TEST(Executor, QueueTimeoutFailsOnlyRequestsStillWaiting) {
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 1, .max_num_tokens = 256});
  auto ex = make_executor(m);
  Request blocker;
  blocker.input_ids.assign(60, 3);
  blocker.max_new_tokens = 32;
  blocker.end_ids = std::vector<int32_t>{};
  blocker.queue_timeout = std::chrono::microseconds(60'000'000);  // runs at once: its timeout never matters
  Request impatient = blocker;
  impatient.max_new_tokens = 4;
  impatient.queue_timeout = std::chrono::microseconds(1);
  Request patient = impatient;
  patient.queue_timeout.reset();
  auto a = ex->enqueue(blocker);
  auto b = ex->enqueue(impatient);
  auto c = ex->enqueue(patient);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  auto ra = ex->await_final(*a), rb = ex->await_final(*b), rc = ex->await_final(*c);
  EXPECT_TRUE(ra.ok()) << ra.status().to_string();
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.status().code(), StatusCode::kDeadlineExceeded) << rb.status().to_string();
  EXPECT_NE(rb.status().message().find("timeout"), std::string::npos);
  ASSERT_TRUE(rc.ok()) << rc.status().to_string();
  EXPECT_EQ(rc->output_ids[0].size(), 4u);
  const ExecutorStats st = ex->stats();
  EXPECT_EQ(st.failed, 1);
  EXPECT_EQ(st.kv.used_blocks, 0);
}

TEST(Executor, CallbacksAndDrainingShutdown) {
  LoadedModel& m = load_model({.model = "llama", .max_num_tokens = 256});
  auto ex = make_executor(m);
  std::atomic<int> finals{0}, chunks{0};
  for (int i = 0; i < 6; ++i) {
    Request r;
    r.input_ids = {5, 6, 7, static_cast<int32_t>(i)};
    r.max_new_tokens = 8;
    r.streaming = i % 2 == 0;
    r.end_ids = std::vector<int32_t>{};
    r.on_response = [&](const Response& resp) {
      ++chunks;
      if (resp.is_final) ++finals;
    };
    ASSERT_TRUE(ex->enqueue(std::move(r)).ok());
  }
  ex->shutdown(/*drain=*/true);
  EXPECT_EQ(finals.load(), 6);
  EXPECT_EQ(chunks.load(), 3 * 8 + 3);  // streaming: a chunk per token (the last one final); else one
  EXPECT_EQ(ex->stats().completed, 6);
}

TEST(Executor, AbortingShutdownCancelsWhatRuns) {
  LoadedModel& m = load_model({.model = "llama", .max_batch_size = 2, .max_num_tokens = 256});
  auto ex = make_executor(m);
  std::vector<RequestId> ids;
  for (int i = 0; i < 4; ++i) {
    Request r;
    r.input_ids.assign(50, 9);
    r.max_new_tokens = 32;
    r.end_ids = std::vector<int32_t>{};
    ids.push_back(*ex->enqueue(r));
  }
  ex->shutdown(/*drain=*/false);
  for (RequestId id : ids) {
    auto resp = ex->await_final(id);
    ASSERT_TRUE(resp.ok());
  }
  EXPECT_EQ(ex->stats().completed + ex->stats().cancelled, 4);
}

}  // namespace
}  // namespace kiln
