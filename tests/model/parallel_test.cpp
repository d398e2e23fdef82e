// Tensor and pipeline parallelism on the CPU (ranks as threads, collectives in host memory): the split rules,
// the communicator, micro-batches, and the check — tp=2, pp=2 and both, fp32, give the greedy tokens and
// log-probs (1e-4) of tp=1 on every fixture model whose head counts divide; sampling, beams and returned logits too.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <thread>

#include "backend/backend_factory.h"
#include "backend/cpu/host_communicator.h"
#include "executor/executor.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/loaded_model.h"
#include "model/micro_batches.h"
#include "model/parallel_layout.h"
#include "model/rank_group.h"
#include "model/weight_names.h"
#include "model/split_engines.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::build_split;
using test::run_all;
using test::RunOptions;
using test::Split;
using test::split_name;

ModelConfig fixture_config(const std::string& model) {
  auto j = read_json_file(test::data_path("models/" + model + "/config.json"));
  EXPECT_TRUE(j.ok());
  auto c = ModelConfig::from_hf(*j, nullptr);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return *c;
}

TEST(ParallelLayout, SplitsLayersHeadsAndVocabulary) {
  ModelConfig c = fixture_config("llama");  // 4 heads, 2 KV heads, 176 intermediate, 2 layers, vocab 512
  c.num_layers = 5;
  c.layer_window = {0, 0, 16, 0, 8};
  c.vocab_size = 511;
  ASSERT_TRUE(check_parallel(c, 2, 2).ok());
  const RankLayout r0 = rank_layout(c, 2, 2, 0), r3 = rank_layout(c, 2, 2, 3);
  EXPECT_EQ(r0.tp_rank, 0);
  EXPECT_EQ(r0.pp_rank, 0);
  EXPECT_EQ(r0.first_layer, 0);
  EXPECT_EQ(r0.num_layers, 3);  // the earlier stage takes the odd layer
  EXPECT_EQ(r3.tp_rank, 1);
  EXPECT_EQ(r3.pp_rank, 1);
  EXPECT_EQ(r3.first_layer, 3);
  EXPECT_EQ(r3.num_layers, 2);
  EXPECT_EQ(r3.vocab_rows, 256);  // ceil(511 / 2); the last slice is padded
  EXPECT_EQ(r3.vocab_start, 256);
  const ModelConfig local = rank_model(c, r3);
  EXPECT_EQ(local.num_heads, 2);
  EXPECT_EQ(local.num_kv_heads, 1);
  EXPECT_EQ(local.intermediate_size, 88);
  EXPECT_EQ(local.head_dim, c.head_dim);
  EXPECT_EQ(local.layer_window, (std::vector<int64_t>{0, 8}));

  // Names are local to the rank; the embedding lives on the first stage, the head on the last.
  std::vector<std::string> names;
  for (const WeightSpec& s : rank_weight_specs(c, r3)) names.push_back(s.name);
  EXPECT_EQ(std::count(names.begin(), names.end(), "embed.weight"), 0);
  EXPECT_EQ(std::count(names.begin(), names.end(), "lm_head.weight"), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), "layers.1.attn.o.weight"), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), "layers.2.attn.o.weight"), 0);
  EXPECT_EQ(whole_model_weight_name(c, r3, "layers.1.mlp.down.weight"), "layers.4.mlp.down.weight");
}

TEST(ParallelLayout, RefusesSplitsThatDoNotDivide) {
  const ModelConfig mistral = fixture_config("mistral");  // one KV head
  Status s = check_parallel(mistral, 2, 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_key_value_heads=1"), std::string::npos) << s.message();
  s = check_parallel(mistral, 1, 3);  // 2 layers
  EXPECT_NE(s.message().find("num_hidden_layers=2"), std::string::npos) << s.message();
  EXPECT_TRUE(check_parallel(mistral, 1, 2).ok());

  test::TempDir tmp;
  ConvertOptions o{.model_dir = test::data_path("models/mistral"), .output_dir = tmp.sub("ckpt"), .tp_size = 2};
  s = convert_hf_checkpoint(o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
}

TEST(HostCommunicator, ReducesGathersAndPassesInOrder) {
  HostCommWorld world(2, 2);
  std::vector<std::thread> threads;
  std::vector<std::vector<float>> reduced(4), gathered(4), received(4);
  for (int r = 0; r < 4; ++r)
    threads.emplace_back([&, r] {
      Communicator& c = world.rank(r);
      const int tp = r % 2, stage = r / 2;
      for (int round = 0; round < 3; ++round) {  // collectives reuse the group's state round after round
        std::vector<float> v = {1.0f + r, 10.0f * (tp + 1), static_cast<float>(round)};
        Tensor t{v.data(), DType::kF32, {3}};
        c.all_reduce_sum(t);
        if (round == 2) reduced[r] = v;
      }
      // [2 rows, 3 local columns] -> [2, 5]: tp rank 1's last column is padding past the vocabulary.
      std::vector<float> local = {tp * 10.0f + 0, tp * 10.0f + 1, tp * 10.0f + 2,
                                  tp * 10.0f + 3, tp * 10.0f + 4, tp * 10.0f + 5};
      std::vector<float> out(10, -1.0f);
      Tensor l{local.data(), DType::kF32, {2, 3}}, o{out.data(), DType::kF32, {2, 5}};
      c.all_gather_columns(l, o);
      gathered[r] = out;
      if (stage == 0) {
        for (float x : {1.0f, 2.0f}) {
          std::vector<float> msg = {x + r, x};
          c.send_next(Tensor{msg.data(), DType::kF32, {2}});
        }
      } else {
        for (int k = 0; k < 2; ++k) {
          std::vector<float> msg(2);
          Tensor m{msg.data(), DType::kF32, {2}};
          c.recv_prev(m);
          received[r].insert(received[r].end(), msg.begin(), msg.end());
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(reduced[0], (std::vector<float>{3, 30, 4}));  // stage 0: ranks 0 and 1
  EXPECT_EQ(reduced[1], reduced[0]);
  EXPECT_EQ(reduced[2], (std::vector<float>{7, 30, 4}));  // stage 1: ranks 2 and 3
  EXPECT_EQ(gathered[3], (std::vector<float>{0, 1, 2, 10, 11, 3, 4, 5, 13, 14}));
  EXPECT_EQ(gathered[0], gathered[3]);
  EXPECT_EQ(received[2], (std::vector<float>{1, 1, 2, 2}));  // from rank 0, in order
  EXPECT_EQ(received[3], (std::vector<float>{2, 1, 3, 2}));  // from rank 1
}

TEST(MicroBatches, SplitsWholeSequencesAndMapsRowsBack) {
  ForwardBatch b;
  std::vector<int32_t> table = {0, 1};
  // Three sequences of 5, 1 and 2 tokens; logit rows: the last token of each, and token 1 (a context logit).
  b.token_ids = {10, 11, 12, 13, 14, 20, 30, 31};
  for (auto [first, n] : {std::pair{0, 5}, {5, 1}, {6, 2}})
    b.attention.seqs.push_back(SequenceView{first, n, n + 3, table});
  b.attention.num_tokens = 8;
  b.attention.block_size = 8;
  b.logit_rows = {1, 4, 5, 7};
  b.rope_seq_len = {100, 101, 102};
  const std::vector<MicroBatch> parts = split_micro_batches(b, 2);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].batch.token_ids, (std::vector<int32_t>{10, 11, 12, 13, 14}));
  EXPECT_EQ(parts[1].batch.token_ids, (std::vector<int32_t>{20, 30, 31}));
  EXPECT_EQ(parts[1].batch.attention.seqs[1].first_token, 1);
  EXPECT_EQ(parts[1].batch.attention.num_tokens, 3);
  EXPECT_EQ(parts[1].batch.rope_seq_len, (std::vector<int32_t>{101, 102}));
  EXPECT_EQ(parts[0].batch.logit_rows, (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(parts[0].rows, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(parts[1].batch.logit_rows, (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(parts[1].rows, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(split_micro_batches(b, 8).size(), 3u);  // at most one part per sequence
  EXPECT_EQ(split_micro_batches(b, 1).size(), 1u);
}

// ---------------------------------------------------------------- whole engines: tp / pp == one rank

void expect_same(const std::vector<Response>& want, const std::vector<Response>& got, double tol) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_EQ(want[i].output_ids, got[i].output_ids);
    ASSERT_EQ(want[i].output_log_probs.size(), got[i].output_log_probs.size());
    for (size_t b = 0; b < want[i].output_log_probs.size(); ++b)
      for (size_t t = 0; t < want[i].output_log_probs[b].size(); ++t)
        EXPECT_NEAR(want[i].output_log_probs[b][t], got[i].output_log_probs[b][t], tol) << "beam " << b << " token " << t;
    ASSERT_EQ(want[i].cum_log_probs.size(), got[i].cum_log_probs.size());
    for (size_t b = 0; b < want[i].cum_log_probs.size(); ++b)
      EXPECT_NEAR(want[i].cum_log_probs[b], got[i].cum_log_probs[b], 1e-3);
  }
}

class ParallelEquivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(ParallelEquivalence, GreedyTokensAndLogProbsMatchOneRank) {
  const std::string model = GetParam();
  const ModelConfig c = fixture_config(model);
  test::TempDir tmp;
  const std::vector<Request> reqs = test::split_test_prompts(static_cast<int32_t>(c.vocab_size), 5);
  const std::vector<Response> want = run_all(build_split(tmp, {.model = model}), reqs);
  int ran = 0;
  for (Split split : {Split{2, 1}, Split{1, 2}, Split{2, 2}}) {
    if (!check_parallel(c, split.tp, split.pp).ok()) continue;  // mistral: one KV head, pp only
    SCOPED_TRACE(split_name(split));
    const std::string dir = build_split(tmp, {.model = model, .split = split});
    expect_same(want, run_all(dir, reqs), 1e-4);
    // Ids only (no log-probs): picked by argmax where the logits are, and without stages each step is launched
    // before the previous one is collected, its picks as inputs.
    std::vector<Request> ids_only = reqs;
    for (Request& r : ids_only) r.output.return_log_probs = false;
    ExecutorStats stats;
    const std::vector<Response> got = run_all(dir, ids_only, {.stats = &stats});
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].output_ids, want[i].output_ids) << "request " << i;
    if (split.pp == 1) EXPECT_GT(stats.launched_ahead, 0);
    else EXPECT_EQ(stats.launched_ahead, 0);
    if (split.pp == 1) expect_same(want, run_all(dir, reqs, {.overlap = false}), 1e-4);
    ++ran;
  }
  EXPECT_GE(ran, 1);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParallelEquivalence, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3"));

// Host sampling (logits leave the ranks), beam search (KV block copies on every rank) and context logits.
TEST(ParallelOutputs, SamplingBeamsAndLogitsMatchOneRank) {
  test::TempDir tmp;
  const ModelConfig c = fixture_config("qwen2");  // tied embeddings: each rank's LM head slice comes from them
  std::vector<Request> reqs = test::split_test_prompts(static_cast<int32_t>(c.vocab_size), 3);
  reqs[0].sampling.top_p = 0.9f;
  reqs[0].sampling.temperature = 0.8f;
  reqs[0].sampling.random_seed = 7;
  reqs[1].sampling.beam_width = 2;
  reqs[1].output.return_log_probs = false;
  reqs[2].output.return_context_logits = true;
  reqs[2].output.return_generation_logits = true;
  const std::vector<Response> want = run_all(build_split(tmp, {.model = "qwen2", .max_beam_width = 2}), reqs);
  for (Split split : {Split{2, 1}, Split{1, 2}, Split{2, 2}}) {
    SCOPED_TRACE(split_name(split));
    const std::vector<Response> got = run_all(build_split(tmp, {.model = "qwen2", .split = split, .max_beam_width = 2}), reqs);
    expect_same(want, got, 1e-4);
    ASSERT_EQ(got.size(), 3u);
    ASSERT_EQ(want[2].context_logits.size(), got[2].context_logits.size());
    ASSERT_FALSE(got[2].context_logits.empty());
    double worst = 0;
    for (size_t i = 0; i < got[2].context_logits.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::fabs(got[2].context_logits[i] - want[2].context_logits[i])));
    EXPECT_LT(worst, 1e-3);
  }
}

// launch returns before the ranks run: the batch they read must be their own copy (the executor rewrites its
// block tables as soon as launch returns).
TEST(ParallelEngine, RanksDoNotReadTheCallersBatchAfterLaunch) {
  test::TempDir tmp;
  const std::string one = build_split(tmp, {.model = "llama"}), four = build_split(tmp, {.model = "llama", .split = {2, 2}});
  auto run = [&](const std::string& dir, bool scribble) {
    auto group = load_model(dir);
    EXPECT_TRUE(group.ok()) << group.status().to_string();
    ModelRunner& m = *group->runner;
    EXPECT_TRUE(m.create_kv_cache(16).ok());
    std::vector<int32_t> table_a = {3, 4}, table_b = {7};
    ForwardBatch b;
    for (int32_t t = 0; t < 11; ++t) b.token_ids.push_back(5 + 3 * t);
    b.attention.seqs = {SequenceView{0, 9, 9, table_a}, SequenceView{9, 2, 2, table_b}};
    b.attention.num_tokens = 11;
    b.attention.block_size = 8;
    b.logit_rows = {8, 10};
    EXPECT_TRUE(m.launch(b, ForwardOutput::kLogits, nullptr).ok());
    if (scribble) {
      std::fill(table_a.begin(), table_a.end(), 9999);
      std::fill(table_b.begin(), table_b.end(), -5);
      b.token_ids.assign(b.token_ids.size(), 999999);
    }
    ForwardResult out;
    Status s = m.collect(out);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return out.logits;
  };
  const std::vector<float> want = run(one, false), got = run(four, true);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(want[i], got[i], 1e-4) << i;
}

// A batch the ranks would refuse is refused before any of them starts (one refusing alone would leave the others
// waiting in a collective); the group keeps working.
TEST(ParallelEngine, BadBatchesAreRefusedUpFrontAndTheGroupGoesOn) {
  test::TempDir tmp;
  auto group = load_model(build_split(tmp, {.model = "llama", .split = {2, 2}}));
  ASSERT_TRUE(group.ok()) << group.status().to_string();
  ModelRunner& m = *group->runner;
  ASSERT_TRUE(m.create_kv_cache(4).ok());
  std::vector<int32_t> table = {1};
  ForwardBatch b;
  b.token_ids = {1, 2, 3};
  b.attention.seqs = {SequenceView{0, 3, 3, table}};
  b.attention.num_tokens = 3;
  b.attention.block_size = 8;
  b.logit_rows = {2};
  for (auto bad : std::vector<std::function<void(ForwardBatch&)>>{
           [](ForwardBatch& x) { x.token_ids[1] = 1 << 20; },                  // outside the vocabulary
           [&](ForwardBatch& x) { x.attention.seqs[0].block_table = std::span<const int32_t>(); },  // no blocks
           [](ForwardBatch& x) { x.logit_rows = {7}; },                         // no such token
           [](ForwardBatch& x) { x.previous_tokens = {{2, 0}}; },               // no forward before
       }) {
    ForwardBatch x = b;
    bad(x);
    EXPECT_EQ(m.launch(x, ForwardOutput::kArgmax, nullptr).code(), StatusCode::kInvalidArgument);
  }
  ASSERT_TRUE(m.launch(b, ForwardOutput::kArgmax, nullptr).ok());
  ForwardResult out;
  ASSERT_TRUE(m.collect(out).ok());
  EXPECT_EQ(out.ids.size(), 1u);
}

TEST(ParallelEngine, BuildRefusesOtherSizesThanTheCheckpoints) {
  test::TempDir tmp;
  ConvertOptions o{.model_dir = test::data_path("models/llama"), .output_dir = tmp.sub("ckpt"), .tp_size = 2};
  ASSERT_TRUE(convert_hf_checkpoint(o).ok());
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(std::filesystem::exists(checkpoint_rank_file(tmp.sub("ckpt"), r)));
  BuildConfig b;
  b.max_input_len = 32;
  b.max_seq_len = 64;
  b.tp_size = 4;
  Status s = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), b, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("converted for tp_size 2"), std::string::npos) << s.message();
  b.tp_size = 2;
  ASSERT_TRUE(build_engine(tmp.sub("ckpt"), tmp.sub("engine"), b, nullptr).ok());
  auto e1 = load_engine(tmp.sub("engine"), 1);
  ASSERT_TRUE(e1.ok()) << e1.status().to_string();
  EXPECT_EQ(e1->layout.tp_rank, 1);
  EXPECT_EQ(load_engine(tmp.sub("engine"), 2).status().code(), StatusCode::kInvalidArgument);
  // One rank alone cannot run: its partial sums need the others.
  auto backend = make_backend("cpu");
  ASSERT_TRUE(backend.ok());
  EXPECT_FALSE(LlamaModel::load(*e1, **backend).ok());
}

}  // namespace
}  // namespace kiln
