// BeamSearcher: hand-made log-probs for each rule, then every fixture model against Hugging Face transformers'
// beam search (tests/data/beam_search/goldens.json, made by make_goldens.py there).
#include "executor/beam_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <algorithm>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "executor/sequence_runner.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "test_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using Tokens = std::vector<int32_t>;

// A [vocab] row of log-probs: `fill` everywhere but the listed tokens.
std::vector<float> row(int64_t vocab, float fill, std::initializer_list<std::pair<int32_t, float>> set) {
  std::vector<float> r(vocab, fill);
  for (auto [t, v] : set) r[t] = v;
  return r;
}

// Concatenates rows into [live, vocab].
std::vector<float> rows(std::initializer_list<std::vector<float>> rs) {
  std::vector<float> out;
  for (const auto& r : rs) out.insert(out.end(), r.begin(), r.end());
  return out;
}

std::vector<BeamChoice> step(BeamSearcher& s, const std::vector<float>& lp, int64_t vocab) {
  return s.step(lp.data(), static_cast<int>(lp.size() / vocab), vocab);
}

std::vector<Tokens> tokens_of(const std::vector<BeamHypothesis>& hs) {
  std::vector<Tokens> out;
  for (const auto& h : hs) out.push_back(h.tokens);
  return out;
}

// (parent, token) pairs, for comparing and printing.
using Choices = std::vector<std::pair<int, int32_t>>;
Choices choices(const std::vector<BeamChoice>& cs) {
  Choices out;
  for (const auto& c : cs) out.emplace_back(c.parent, c.token);
  return out;
}

TEST(BeamSearchConfig, Validates) {
  auto valid = [](const BeamSearchConfig& c) { return c.validate().ok(); };
  EXPECT_TRUE(valid({.width = 4}));
  EXPECT_FALSE(valid({.width = 0}));
  EXPECT_FALSE((valid({.width = 2, .early_stopping = 2})));
  EXPECT_FALSE((valid({.width = 2, .diversity_rate = -1.0f})));
  EXPECT_FALSE((valid({.width = 2, .length_penalty = NAN})));
  EXPECT_FALSE((valid({.width = 2, .end_ids = {-1}})));
  EXPECT_FALSE((valid({.width = 2, .max_new_tokens = -1})));
}

TEST(BeamSearch, CandidatesPerStepGrowWithEndIds) {
  EXPECT_EQ(BeamSearcher({.width = 3}).candidates_per_step(), 6);
  EXPECT_EQ(BeamSearcher({.width = 3, .end_ids = {0}}).candidates_per_step(), 6);
  EXPECT_EQ(BeamSearcher({.width = 3, .end_ids = {0, 1, 2}}).candidates_per_step(), 12);
}

TEST(BeamSearch, FirstStepExpandsThePromptAndTracksLiveBeams) {
  // Width 2, no end id, vocab 5: the prompt's two best tokens, then the best two continuations overall.
  BeamSearcher s({.width = 2, .max_new_tokens = 5});
  EXPECT_EQ(s.num_live(), 1);
  auto c = step(s, row(5, -9, {{3, -0.1f}, {1, -0.2f}, {4, -0.3f}}), 5);
  EXPECT_EQ(choices(c), (Choices{{0, 3}, {0, 1}}));
  EXPECT_EQ(s.live_tokens(), (std::vector<Tokens>{{3}, {1}}));
  // Beam 1 ([1], sum -0.2) has the best continuation overall.
  c = step(s, rows({row(5, -9, {{0, -0.5f}}), row(5, -9, {{2, -0.01f}, {4, -0.2f}})}), 5);
  EXPECT_EQ(choices(c), (Choices{{1, 2}, {1, 4}}));
  EXPECT_EQ(s.live_tokens(), (std::vector<Tokens>{{1, 2}, {1, 4}}));
  EXPECT_FLOAT_EQ(s.live_sum_log_probs()[0], -0.2f + -0.01f);
  EXPECT_EQ(s.steps(), 2);
  EXPECT_FALSE(s.done());
}

TEST(BeamSearch, EqualSumsRankLowerParentThenLowerTokenFirst) {
  BeamSearcher s({.width = 2, .max_new_tokens = 5});
  step(s, row(4, -9, {{1, -1.0f}, {2, -2.0f}}), 4);
  // Every continuation of both beams sums to -3: beam 0's tokens 0 and 1 win.
  auto c = step(s, rows({row(4, -2.0f, {}), row(4, -1.0f, {})}), 4);
  EXPECT_EQ(choices(c), (Choices{{0, 0}, {0, 1}}));
}

TEST(BeamSearch, MaxLengthWithoutEndIdReturnsTheBestBeams) {
  // No end id: nothing finishes until max_new_tokens, where the best `width` candidates become hypotheses.
  BeamSearcher s({.width = 2, .length_penalty = 2.0f, .max_new_tokens = 2});
  step(s, row(4, -9, {{0, -0.5f}, {1, -0.6f}, {2, -0.7f}}), 4);
  auto c = step(s, rows({row(4, -5, {{3, -0.3f}}), row(4, -5, {{2, -0.1f}, {0, -0.15f}})}), 4);
  EXPECT_TRUE(c.empty());
  EXPECT_TRUE(s.done());
  auto h = s.finalize();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{1, 2}, {1, 0}}));  // sums -0.7, -0.75 beat [0, 3] at -0.8
  EXPECT_FLOAT_EQ(h[0].sum_log_prob, -0.6f + -0.1f);
  EXPECT_FLOAT_EQ(h[0].score, (-0.6f + -0.1f) / 4.0f);  // 2 ** 2
  EXPECT_EQ(h[1].log_probs, (std::vector<float>{-0.6f, -0.15f}));
  EXPECT_FALSE(h[0].ended_by_end_id);
  EXPECT_FALSE(h[1].ended_by_end_id);
}

TEST(BeamSearch, EndIdOutsideTheTopWidthIsDropped) {
  // The end id ranks third of the four candidates: it neither lives on nor finishes, although it would have
  // been the best hypothesis.
  BeamSearcher s({.width = 2, .end_ids = {0}, .max_new_tokens = 2});
  auto c = step(s, row(5, -9, {{1, -0.1f}, {2, -0.2f}, {0, -0.3f}, {3, -0.4f}}), 5);
  EXPECT_EQ(choices(c), (Choices{{0, 1}, {0, 2}}));
  step(s, rows({row(5, -5, {}), row(5, -5, {})}), 5);
  auto h = s.finalize();
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{1, 0}, {1, 1}}));
  EXPECT_TRUE(h[0].ended_by_end_id);  // an end id at max length still says so
  EXPECT_FALSE(h[1].ended_by_end_id);
}

// Finished set after step 2: [0] (score -0.1) and [1, 0] (-0.22 / 2 = -0.11); the live beam [1, 1] sums -0.21.
// Step 3: [1, 1, 0] finishes at -0.211 / 3 = -0.0703 and [1, 1, 1] lives on at -0.31.
// Step 4 (max length): [1, 1, 1, 1] at -0.32 / 4 = -0.08.
std::vector<Tokens> run_early_stopping_case(int early_stopping, int* steps) {
  BeamSearcher s({.width = 2, .length_penalty = 1.0f, .early_stopping = early_stopping, .end_ids = {0},
                  .max_new_tokens = 4});
  const int64_t V = 4;
  std::vector<std::vector<float>> script = {
      row(V, -9, {{0, -0.1f}, {1, -0.2f}, {2, -0.3f}}),
      rows({row(V, -9, {{1, -0.01f}, {0, -0.02f}}), row(V, -9, {})}),
      rows({row(V, -9, {{0, -0.001f}, {1, -0.1f}}), row(V, -9, {})}),
      rows({row(V, -9, {{1, -0.01f}, {0, -5.0f}}), row(V, -9, {})}),
  };
  *steps = 0;
  for (const auto& lp : script) {
    step(s, lp, V);
    ++*steps;
    if (s.done()) break;
  }
  return tokens_of(s.finalize());
}

TEST(BeamSearch, EarlyStoppingTrueStopsOnceWidthHypothesesFinished) {
  int steps;
  EXPECT_EQ(run_early_stopping_case(1, &steps), (std::vector<Tokens>{{0}, {1, 0}}));
  EXPECT_EQ(steps, 2);
}

TEST(BeamSearch, EarlyStoppingFalseStopsWhenNoLiveBeamCanImproveAtItsLength) {
  // After step 2: -0.21 / 2 = -0.105 beats the worst finished -0.11: go on. After step 3: -0.31 / 3 = -0.103 does
  // not beat -0.1: stop.
  int steps;
  EXPECT_EQ(run_early_stopping_case(0, &steps), (std::vector<Tokens>{{1, 1, 0}, {0}}));
  EXPECT_EQ(steps, 3);
}

TEST(BeamSearch, EarlyStoppingNeverBoundsAtMaxLengthWithPositiveLengthPenalty) {
  // After step 3: -0.31 / 4 (max length) = -0.0775 beats -0.1: go on to max length.
  int steps;
  EXPECT_EQ(run_early_stopping_case(-1, &steps), (std::vector<Tokens>{{1, 1, 0}, {1, 1, 1, 1}}));
  EXPECT_EQ(steps, 4);
}

std::vector<BeamHypothesis> run_length_penalty_case(float length_penalty) {
  // [0] finishes at step 1 (sum -0.2), [1, 0] at step 2 (-4.1); at max length [1, 1, 1] (-0.7) and
  // [1, 1, 0] (-0.9) are the top two candidates.
  BeamSearcher s({.width = 2, .length_penalty = length_penalty, .early_stopping = -1, .end_ids = {0},
                  .max_new_tokens = 3});
  const int64_t V = 4;
  step(s, row(V, -9, {{1, -0.1f}, {0, -0.2f}, {2, -2.0f}, {3, -3.0f}}), V);
  step(s, rows({row(V, -9, {{1, -0.3f}, {0, -4.0f}, {2, -5.0f}, {3, -6.0f}}), row(V, -7, {})}), V);
  EXPECT_FALSE(s.done());
  step(s, rows({row(V, -8, {{1, -0.3f}, {0, -0.5f}}), row(V, -8, {})}), V);
  EXPECT_TRUE(s.done());
  return s.finalize();
}

TEST(BeamSearch, LengthPenaltyOrdersHypotheses) {
  auto h = run_length_penalty_case(0.0f);  // plain sums: the short one wins
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{0}, {1, 1, 1}}));
  EXPECT_FLOAT_EQ(h[0].score, -0.2f);
  EXPECT_FLOAT_EQ(h[1].score, -0.1f + -0.3f + -0.3f);

  h = run_length_penalty_case(1.0f);  // -0.2 / 1 vs -0.7 / 3
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{0}, {1, 1, 1}}));
  EXPECT_FLOAT_EQ(h[1].score, (-0.1f + -0.3f + -0.3f) / 3.0f);

  h = run_length_penalty_case(2.0f);  // long ones win: -0.7 / 9, -0.9 / 9 vs -0.2
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{1, 1, 1}, {1, 1, 0}}));
  EXPECT_FLOAT_EQ(h[1].score, (-0.1f + -0.3f + -0.5f) / 9.0f);
  EXPECT_TRUE(h[1].ended_by_end_id);
  for (const auto& x : h) EXPECT_FLOAT_EQ(x.score, x.sum_log_prob / std::pow(float(x.tokens.size()), 2.0f));
}

TEST(BeamSearch, SeveralEndIds) {
  // Two end ids: K = 3 * width = 6, so `width` beams live on even when both beams' two end ids rank first.
  BeamSearcher s({.width = 2, .length_penalty = 2.0f, .early_stopping = -1, .end_ids = {0, 1}, .max_new_tokens = 10});
  const int64_t V = 7;
  auto c = step(s, row(V, -9, {{0, -0.1f}, {1, -0.2f}, {2, -0.3f}, {3, -0.4f}, {4, -0.5f}, {5, -0.6f}}), V);
  EXPECT_EQ(choices(c), (Choices{{0, 2}, {0, 3}}));  // [0] and [1] finished
  const auto cont = row(V, -9, {{0, -0.01f}, {1, -0.02f}, {2, -3.0f}, {3, -3.5f}});
  c = step(s, rows({cont, cont}), V);
  // Candidates: [2,0] [2,1] [3,0] [3,1] end; [2,2] (-3.3) and [3,2] (-3.4) live on. [2,0] and [2,1] finish at
  // -0.31 / 4 and -0.32 / 4, better than [0] (-0.1) and [1] (-0.2).
  EXPECT_EQ(choices(c), (Choices{{0, 2}, {1, 2}}));
  EXPECT_FALSE(s.done());  // -3.3 / 10 ** 2 could still beat -0.08
  auto h = s.finalize();
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{2, 0}, {2, 1}}));
  EXPECT_TRUE(h[0].ended_by_end_id);
  EXPECT_TRUE(h[1].ended_by_end_id);
}

TEST(BeamSearch, DiversityRatePenalizesRankWithinParent) {
  // Beam [0] (sum -0.1) has two strong continuations, beam [1] (sum -0.2) one. Without the penalty both picks
  // come from [0]; with diversity 1.0 the second of [0] (-0.12 - 1) loses to the first of [1] (-0.7).
  auto run = [](float rate) {
    BeamSearcher s({.width = 2, .diversity_rate = rate, .max_new_tokens = 3});
    const int64_t V = 4;
    step(s, row(V, -9, {{0, -0.1f}, {1, -0.2f}, {2, -0.3f}, {3, -0.4f}}), V);
    auto c = step(s, rows({row(V, -9, {{0, -0.01f}, {1, -0.02f}, {2, -3.0f}}), row(V, -5, {{0, -0.5f}})}), V);
    return std::make_pair(c, s.live_sum_log_probs());
  };
  auto [plain, plain_sums] = run(0.0f);
  EXPECT_EQ(choices(plain), (Choices{{0, 0}, {0, 1}}));
  auto [diverse, diverse_sums] = run(1.0f);
  EXPECT_EQ(choices(diverse), (Choices{{0, 0}, {1, 0}}));
  // The penalty ranks only: sums stay true log-prob sums.
  EXPECT_FLOAT_EQ(diverse_sums[1], -0.2f + -0.5f);

  // Hypotheses keep true scores too.
  BeamSearcher s({.width = 2, .diversity_rate = 1.0f, .max_new_tokens = 1});
  step(s, row(4, -9, {{2, -0.1f}, {1, -0.2f}}), 4);
  auto h = s.finalize();
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{2}, {1}}));
  EXPECT_FLOAT_EQ(h[1].score, -0.2f);
}

TEST(BeamSearch, FinalizeBeforeDoneCutsLiveBeams) {
  BeamSearcher s({.width = 2, .end_ids = {0}, .max_new_tokens = 10});
  step(s, row(4, -9, {{1, -0.1f}, {2, -0.2f}}), 4);
  auto h = s.finalize();
  EXPECT_TRUE(s.done());
  EXPECT_EQ(tokens_of(h), (std::vector<Tokens>{{1}, {2}}));
  EXPECT_FALSE(h[0].ended_by_end_id);
  EXPECT_TRUE(BeamSearcher({.width = 2, .max_new_tokens = 0}).done());
}

TEST(BeamSearch, LargeVocabularyPicksTheTopCandidates) {
  // 152k vocabulary, width 4: the winners sit anywhere in the row.
  const int64_t V = 152064;
  std::vector<float> lp(V);
  for (int64_t i = 0; i < V; ++i) lp[i] = -20.0f - static_cast<float>((i * 7919) % 1000) * 1e-3f;
  const int32_t best[] = {150000, 7, 90000, 123};
  for (int i = 0; i < 4; ++i) lp[best[i]] = -1.0f - 0.1f * i;
  BeamSearcher s({.width = 4, .max_new_tokens = 4});
  auto c = s.step(lp.data(), 1, V);
  ASSERT_EQ(c.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c[i].token, best[i]);
}

// ---- Against transformers ----

struct HfCase {
  std::string model;
  Tokens prompt;
  int32_t max_new_tokens;
  float length_penalty;
  int early_stopping;
  Tokens eos;
  std::string eos_is;
  std::vector<Tokens> sequences;
  std::vector<float> scores;
};

struct HfGoldens {
  int num_beams = 0;
  std::vector<HfCase> cases;
};

HfGoldens load_hf_goldens() {
  std::ifstream in(test::data_path("beam_search/goldens.json"));
  json g = json::parse(in);
  HfGoldens out;
  out.num_beams = g["num_beams"];
  for (const json& c : g["cases"]) {
    out.cases.push_back({c["model"], c["prompt"].get<Tokens>(), c["max_new_tokens"], c["length_penalty"],
                         c["early_stopping"], c["eos_token_ids"].get<Tokens>(), c["eos_is"],
                         c["sequences"].get<std::vector<Tokens>>(), c["scores"].get<std::vector<float>>()});
  }
  return out;
}

// log_softmax over a row, stably (float exp terms, double sum), like log_softmax_at.
void log_softmax(const float* logits, int64_t n, float* out) {
  const float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(logits[i] - lse);
}

class BeamSearchHfTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BeamSearchHfTest, MatchesTransformers) {
  const HfGoldens goldens = load_hf_goldens();
  const std::string dir = test::data_path("models/" + GetParam());
  test::TempDir tmp;
  Status st = convert_hf_checkpoint({.model_dir = dir, .output_dir = tmp.sub("ckpt"), .dtype = DType::kF32});
  ASSERT_TRUE(st.ok()) << st.to_string();
  BuildConfig bc;
  bc.max_batch_size = 1;
  bc.max_input_len = 256;
  bc.max_seq_len = 256 + 32;
  st = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), bc, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  auto engine = load_engine(tmp.sub("engine"));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  CpuBackend backend;
  auto model = LlamaModel::load(*engine, backend);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const int64_t V = engine->model.vocab_size;

  // The reference driver: every live beam's next-token log-probs from a from-scratch run of prompt + beam
  // tokens on a fresh KV storage. Slow, but nothing (KV reordering, batching) can go wrong in between.
  auto next_log_probs = [&](const Tokens& ids, float* out) {
    auto runner = SequenceRunner::create(**model, backend);
    ASSERT_TRUE(runner.ok()) << runner.status().to_string();
    GreedyOptions o;
    o.max_new_tokens = 0;
    o.return_log_probs = false;
    auto r = (*runner)->generate(ids, o);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(static_cast<int64_t>(r->first_logits.size()), V);
    log_softmax(r->first_logits.data(), V, out);
  };

  int checked = 0;
  for (const HfCase& hc : goldens.cases) {
    if (hc.model != GetParam()) continue;
    ++checked;
    SCOPED_TRACE(::testing::Message() << hc.model << ": prompt of " << hc.prompt.size() << " tokens, "
                                      << hc.max_new_tokens << " new, length_penalty " << hc.length_penalty
                                      << ", early_stopping " << hc.early_stopping << ", " << hc.eos.size()
                                      << " end ids (" << hc.eos_is << ")");
    BeamSearcher s({.width = goldens.num_beams, .length_penalty = hc.length_penalty,
                    .early_stopping = hc.early_stopping, .end_ids = hc.eos,
                    .max_new_tokens = hc.max_new_tokens});
    std::vector<float> lp;
    while (!s.done()) {
      const int live = s.num_live();
      lp.resize(static_cast<size_t>(live) * V);
      for (int b = 0; b < live; ++b) {
        Tokens ids = hc.prompt;
        ids.insert(ids.end(), s.live_tokens()[b].begin(), s.live_tokens()[b].end());
        next_log_probs(ids, lp.data() + static_cast<int64_t>(b) * V);
        if (HasFatalFailure()) return;
      }
      s.step(lp.data(), live, V);
    }
    const auto h = s.finalize();
    ASSERT_EQ(h.size(), hc.sequences.size());
    for (size_t i = 0; i < h.size(); ++i) {
      EXPECT_EQ(h[i].tokens, hc.sequences[i]) << "hypothesis " << i;
      EXPECT_NEAR(h[i].score, hc.scores[i], 1e-4) << "hypothesis " << i;
      const bool ends_with_eos =
          !h[i].tokens.empty() && std::find(hc.eos.begin(), hc.eos.end(), h[i].tokens.back()) != hc.eos.end();
      EXPECT_EQ(h[i].ended_by_end_id, ends_with_eos) << "hypothesis " << i;
    }
  }
  EXPECT_GE(checked, 6) << "goldens.json has too few cases for " << GetParam();
}

INSTANTIATE_TEST_SUITE_P(BeamSearchFixtures, BeamSearchHfTest,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3"));

}  // namespace
}  // namespace kiln
