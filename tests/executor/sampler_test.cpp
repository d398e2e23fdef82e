// TokenSampler: greedy paths, determinism, the empirical distribution of draws, warping (temperature, top-k,
// top-p) against straightforward references, decaying top-p and save/restore.
#include "executor/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace kiln {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// top_p 1: the whole distribution (top_k 0 with top_p 0 is greedy, as TensorRT-LLM).
SamplingConfig sampling(float temperature, int32_t top_k = 0, float top_p = 1.0f) {
  SamplingConfig c;
  c.temperature = temperature;
  c.top_k = top_k;
  c.top_p = top_p;
  return c;
}

std::vector<double> softmax(const std::vector<float>& l) {
  double mx = -kInf;
  for (float v : l) mx = std::max<double>(mx, v);
  std::vector<double> p(l.size());
  double sum = 0;
  for (size_t i = 0; i < l.size(); ++i) sum += p[i] = std::exp(static_cast<double>(l[i]) - mx);
  for (double& v : p) v /= sum;
  return p;
}

std::vector<float> random_logits(int64_t n, float sigma, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> l(n);
  for (float& v : l) v = d(gen);
  return l;
}

// The reference top-p: sort everything (larger first, lower id on ties), keep while the mass above is < p.
std::vector<float> reference_top_p(std::vector<float> l, double p) {
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  const std::vector<double> prob = softmax(l);
  double above = 0;
  for (int32_t id : order) {
    if (above >= p) l[id] = -kInf;
    above += prob[id];
  }
  return l;
}

TEST(SamplerGreedy, TemperatureZeroIsArgmaxFirstOnTies) {
  TokenSampler s(sampling(0.0f), 7);
  EXPECT_TRUE(s.greedy());
  std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  const std::vector<float> before = l;
  const Sample got = s.sample(l.data(), 5, true);
  EXPECT_EQ(got.token, 1);
  EXPECT_NEAR(got.log_prob, std::log(softmax(before)[1]), 1e-6);
  EXPECT_EQ(l, before);  // the greedy path leaves the row alone
}

TEST(SamplerGreedy, TopKZeroWithTopPZeroIsGreedyAsTensorRtLlm) {
  TokenSampler s(sampling(1.0f, 0, 0.0f), 7);
  EXPECT_TRUE(s.greedy());
  EXPECT_FALSE(TokenSampler(sampling(1.0f, 0, 1.0f), 7).greedy());
  EXPECT_FALSE(TokenSampler(sampling(1.0f, 5, 0.0f), 7).greedy());
  EXPECT_FALSE(TokenSampler(sampling(1.0f, 0, 0.5f), 7).greedy());
  std::vector<float> l = {0.5f, 1.0f, 4.0f, -2.0f};
  EXPECT_EQ(s.sample(l.data(), 4, false).token, 2);
}

TEST(SamplerGreedy, TopKOneIsArgmaxWithTemperatureInTheLogProb) {
  TokenSampler s(sampling(0.5f, 1), 7);
  EXPECT_TRUE(s.greedy());
  std::vector<float> l = {0.5f, 1.0f, 4.0f, -2.0f};
  const Sample got = s.sample(l.data(), 4, true);
  EXPECT_EQ(got.token, 2);
  std::vector<float> scaled = {1.0f, 2.0f, 8.0f, -4.0f};
  EXPECT_NEAR(got.log_prob, std::log(softmax(scaled)[2]), 1e-6);
  EXPECT_EQ(s.sample(l.data(), 4, false).log_prob, 0.0f);  // not asked: not computed
}

TEST(SamplerDraw, SameSeedAndStepSameTokenOtherSeedsDiffer) {
  const std::vector<float> base = random_logits(1000, 1.0f, 3);
  auto run = [&](uint64_t seed) {
    TokenSampler s(sampling(1.0f), seed);
    std::vector<int32_t> tokens;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l = base;
      tokens.push_back(s.sample(l.data(), 1000, false).token);
      s.advance(tokens.back());
    }
    return tokens;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  EXPECT_NE(run(42), run(42ull | (1ull << 40)));
  // Without advance() the step stays put, so the draw repeats.
  TokenSampler s(sampling(1.0f), 9);
  std::vector<float> a = base, b = base;
  EXPECT_EQ(s.sample(a.data(), 1000, false).token, s.sample(b.data(), 1000, false).token);
}

TEST(SamplerDraw, EmpiricalDistributionMatchesSoftmax) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.7f};
  const std::vector<double> p = softmax(logits);
  TokenSampler s(sampling(1.0f), 2024);
  std::vector<int> counts(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    const int32_t t = s.sample(l.data(), 5, false).token;
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 5);
    ++counts[t];
    s.advance(t);
  }
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(counts[i] / static_cast<double>(n), p[i], 0.02) << "token " << i;
}

TEST(SamplerDraw, TruncatedDistributionRenormalizes) {
  // top_k 3 keeps tokens 3, 0, 4; top_p then drops nothing further at 0.99.
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.7f};
  const std::vector<double> p = softmax({1.0f, -kInf, -kInf, 2.0f, 0.7f});
  TokenSampler s(sampling(1.0f, 3, 0.99f), 5);
  std::vector<int> counts(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    const int32_t t = s.sample(l.data(), 5, false).token;
    ++counts[t];
    s.advance(t);
  }
  EXPECT_EQ(counts[1] + counts[2], 0);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(counts[i] / static_cast<double>(n), p[i], 0.02) << "token " << i;
}

TEST(SamplerDraw, LogProbIsBeforeTruncationAfterTemperature) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.7f};
  std::vector<float> scaled(5);
  for (int i = 0; i < 5; ++i) scaled[i] = logits[i] / 0.8f;
  const std::vector<double> p = softmax(scaled);
  TokenSampler s(sampling(0.8f, 2), 11);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = logits;
    const Sample got = s.sample(l.data(), 5, true);
    ASSERT_TRUE(got.token == 3 || got.token == 0);
    EXPECT_NEAR(got.log_prob, std::log(p[got.token]), 1e-6);
    s.advance(got.token);
  }
}

TEST(SamplerDraw, EverythingBannedYieldsTokenZero) {
  std::vector<float> l(8, -kInf);
  TokenSampler s(sampling(1.0f, 0, 0.5f), 1);
  EXPECT_EQ(s.sample(l.data(), 8, false).token, 0);
  std::fill(l.begin(), l.end(), -kInf);
  TokenSampler g(sampling(0.0f), 1);
  EXPECT_EQ(g.sample(l.data(), 8, false).token, 0);
}

TEST(SamplerDraw, OnlyUnbannedTokensAreDrawn) {
  std::vector<float> base = random_logits(5000, 2.0f, 8);
  for (int i = 0; i < 5000; ++i)
    if (i % 7 != 3) base[i] = -kInf;
  TokenSampler s(sampling(1.3f), 77);
  for (int i = 0; i < 500; ++i) {
    std::vector<float> l = base;
    const int32_t t = s.sample(l.data(), 5000, false).token;
    ASSERT_EQ(t % 7, 3);
    s.advance(t);
  }
}

TEST(SamplerWarp, TemperatureThenTopK) {
  std::vector<float> l = {1.0f, 3.0f, 2.0f, 0.0f, 5.0f};
  TokenSampler(sampling(2.0f, 2), 0).warp(l.data(), 5);
  EXPECT_EQ(l, (std::vector<float>{-kInf, 1.5f, -kInf, -kInf, 2.5f}));
  std::vector<float> m = {1.0f, 3.0f, 2.0f};
  TokenSampler(sampling(1.0f, 3), 0).warp(m.data(), 3);  // k == vocab: nothing removed
  EXPECT_EQ(m, (std::vector<float>{1.0f, 3.0f, 2.0f}));
}

TEST(SamplerWarp, TopKTiesKeepLowerIds) {
  std::vector<float> l = {2.0f, 1.0f, 2.0f, 2.0f, 0.5f, 2.0f};
  TokenSampler(sampling(1.0f, 2), 0).warp(l.data(), 6);
  EXPECT_EQ(l, (std::vector<float>{2.0f, -kInf, 2.0f, -kInf, -kInf, -kInf}));
}

TEST(SamplerWarp, TopPKeepsTheSmallestSetReachingP) {
  // probabilities 0.5, 0.25, 0.125, 0.125 (in token order 2, 0, 1, 3)
  const std::vector<float> base = {std::log(0.25f), std::log(0.125f), std::log(0.5f), std::log(0.125f)};
  auto kept = [&](float p) {
    std::vector<float> l = base;
    TokenSampler(sampling(1.0f, 0, p), 0).warp(l.data(), 4);
    int n = 0;
    for (float v : l) n += v != -kInf;
    return n;
  };
  EXPECT_EQ(kept(0.3f), 1);
  EXPECT_EQ(kept(0.6f), 2);
  EXPECT_EQ(kept(0.8f), 3);
  EXPECT_EQ(kept(0.95f), 4);  // ties (0.125, 0.125): the lower id ranks first, the other is still needed
  EXPECT_EQ(kept(1.0f), 4);   // off
  EXPECT_EQ(kept(0.0f), 4);   // off
}

TEST(SamplerWarp, LargeVocabTopPMatchesFullSortReference) {
  // 152k entries: flat enough that the nucleus outgrows the first ranked prefix several times.
  for (float p : {0.05f, 0.5f, 0.9f, 0.99f}) {
    std::vector<float> l = random_logits(152064, 1.0f, static_cast<uint32_t>(p * 100));
    const std::vector<float> want = reference_top_p(l, p);
    TokenSampler(sampling(1.0f, 0, p), 0).warp(l.data(), 152064);
    int64_t n = 0, mismatches = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      n += l[i] != -kInf;
      mismatches += l[i] != want[i];
    }
    EXPECT_EQ(mismatches, 0) << "top_p " << p << ", kept " << n;
  }
}

TEST(SamplerWarp, LargeVocabTopKThenTopP) {
  std::vector<float> l = random_logits(152064, 2.0f, 99);
  std::vector<float> topk = l;
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  for (size_t r = 50; r < order.size(); ++r) topk[order[r]] = -kInf;
  const std::vector<float> want = reference_top_p(topk, 0.7);
  TokenSampler(sampling(1.0f, 50, 0.7f), 0).warp(l.data(), 152064);
  EXPECT_EQ(l, want);
}

TEST(SamplerWarp, TopPOnEqualLogitsKeepsTheLowestIds) {
  std::vector<float> l(1000, 0.25f);
  TokenSampler(sampling(1.0f, 0, 0.5f), 0).warp(l.data(), 1000);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(l[i] != -kInf, i < 500) << i;
}

TEST(SamplerWarp, TopPCloseToOneAndDeepTail) {
  // A boundary among entries far below the max (the coarse pass lumps them together) still comes out exact.
  std::vector<float> l = random_logits(20000, 1.0f, 17);
  for (int i = 0; i < 20000; i += 3) l[i] -= 60.0f;
  for (float p : {0.9999999f, 0.99999f}) {
    std::vector<float> got = l;
    TokenSampler(sampling(1.0f, 0, p), 0).warp(got.data(), 20000);
    EXPECT_EQ(got, reference_top_p(l, p)) << p;
  }
}

TEST(SamplerWarp, NanInTheRowDoesNotBreakIt) {
  std::vector<float> base = random_logits(5000, 1.0f, 4);
  base[10] = std::numeric_limits<float>::quiet_NaN();
  for (const SamplingConfig& c : {sampling(1.0f, 20), sampling(1.0f, 0, 0.8f), sampling(0.7f, 100, 0.9f)}) {
    TokenSampler s(c, 1);
    for (int i = 0; i < 20; ++i) {
      std::vector<float> l = base;
      const int32_t t = s.sample(l.data(), 5000, true).token;
      ASSERT_GE(t, 0);
      ASSERT_LT(t, 5000);
      s.advance(t);
    }
  }
}

TEST(SamplerDraw, AskingForTheLogProbNeverChangesTheToken) {
  const int64_t vocab = 50000;
  const std::vector<float> base = random_logits(vocab, 3.0f, 21);
  for (const SamplingConfig& c : {sampling(1.0f), sampling(0.7f, 40), sampling(1.0f, 0, 0.9f),
                                  sampling(1.2f, 5000, 0.95f), sampling(0.9f, 20000), sampling(0.0f)}) {
    TokenSampler a(c, 99), b(c, 99);
    for (int i = 0; i < 40; ++i) {
      std::vector<float> la = base, lb = base;
      const int32_t ta = a.sample(la.data(), vocab, true).token;
      const int32_t tb = b.sample(lb.data(), vocab, false).token;
      ASSERT_EQ(ta, tb) << "top_k " << c.top_k << " top_p " << c.top_p << " step " << i;
      a.advance(ta);
      b.advance(tb);
    }
  }
}

// Top log-probs: the k best of log_softmax(processed logits / T) (T 0 read as 1), before truncation, best
// first with lower ids first on ties; the drawn token's entry equals Sample::log_prob exactly; asking for them
// never changes the token or its log-prob.
std::vector<std::pair<int32_t, double>> reference_top(const std::vector<float>& logits, float t, int k) {
  std::vector<float> scaled(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) scaled[i] = t == 0.0f ? logits[i] : logits[i] / t;
  const std::vector<double> p = softmax(scaled);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<std::pair<int32_t, double>> out;
  for (int i = 0; i < k && i < static_cast<int>(order.size()); ++i) out.push_back({order[i], std::log(p[order[i]])});
  return out;
}

TEST(SamplerTopLogProbs, AreTheBestOfTheLogProbDistributionWithTheDrawnTokenExact) {
  const int64_t vocab = 3000;
  const std::vector<float> base = random_logits(vocab, 2.0f, 31);
  for (const SamplingConfig& c : {sampling(0.0f), sampling(1.0f), sampling(0.7f, 40), sampling(1.3f, 0, 0.8f),
                                  sampling(2.0f, 1)}) {
    const int k = 7;
    const auto want = reference_top(base, c.temperature, k);  // T 0 read as 1
    TokenSampler with(c, 5), without(c, 5);
    for (int step = 0; step < 30; ++step) {
      std::vector<float> a = base, b = base;
      const Sample got = with.sample(a.data(), vocab, true, k);
      const Sample plain = without.sample(b.data(), vocab, true);
      ASSERT_EQ(got.token, plain.token) << "temperature " << c.temperature << " step " << step;
      ASSERT_EQ(got.log_prob, plain.log_prob);
      ASSERT_EQ(got.top.size(), static_cast<size_t>(k));
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(got.top[i].token, want[i].first) << i;
        EXPECT_NEAR(got.top[i].log_prob, want[i].second, 2e-5) << i;
        if (i > 0) { EXPECT_GE(got.top[i - 1].log_prob, got.top[i].log_prob); }
        if (got.top[i].token == got.token) { EXPECT_EQ(got.top[i].log_prob, got.log_prob); }
      }
      with.advance(got.token);
      without.advance(plain.token);
    }
  }
}

TEST(SamplerTopLogProbs, TiesKeepLowerIdsAndKIsCappedByTheVocabulary) {
  std::vector<float> l = {0.5f, 1.0f, 1.0f, -kInf, 1.0f};
  TokenSampler greedy(sampling(0.0f), 1);
  Sample got = greedy.sample(l.data(), 5, false, 3);
  ASSERT_EQ(got.top.size(), 3u);
  EXPECT_EQ(got.top[0].token, 1);
  EXPECT_EQ(got.top[1].token, 2);
  EXPECT_EQ(got.top[2].token, 4);
  EXPECT_NEAR(got.top[0].log_prob, std::log(std::exp(1.0) / (3 * std::exp(1.0) + std::exp(0.5))), 1e-6);
  l = {0.5f, 1.0f, 1.0f, -kInf, 1.0f};
  TokenSampler sampled(sampling(1.0f), 1);
  got = sampled.sample(l.data(), 5, false, 20);
  ASSERT_EQ(got.top.size(), 5u);
  EXPECT_EQ(got.top[3].token, 0);
  EXPECT_EQ(got.top[4].token, 3);
  EXPECT_EQ(got.top[4].log_prob, -kInf);
  EXPECT_EQ(got.log_prob, 0.0f);  // not asked
}

TEST(SamplerTopPDecay, DecaysToTheFloorAndResets) {
  SamplingConfig c = sampling(1.0f, 0, 0.8f);
  c.top_p_decay = 0.5f;
  c.top_p_min = 0.15f;
  c.top_p_reset_id = 7;
  TokenSampler s(c, 3);
  EXPECT_FLOAT_EQ(s.top_p(), 0.8f);
  const int32_t tokens[] = {1, 2, 3, 4, 7, 5};
  const float want[] = {0.4f, 0.2f, 0.15f, 0.15f, 0.8f, 0.4f};
  for (int i = 0; i < 6; ++i) {
    s.advance(tokens[i]);
    EXPECT_FLOAT_EQ(s.top_p(), want[i]) << "after token " << i;
    EXPECT_EQ(s.step(), static_cast<uint64_t>(i + 1));
  }
}

TEST(SamplerTopPDecay, DecayedTopPIsUsedByWarp) {
  SamplingConfig c = sampling(1.0f, 0, 0.9f);
  c.top_p_decay = 0.5f;
  const std::vector<float> base = {std::log(0.25f), std::log(0.125f), std::log(0.5f), std::log(0.125f)};
  TokenSampler s(c, 3);
  auto kept = [&] {
    std::vector<float> l = base;
    s.warp(l.data(), 4);
    return 4 - static_cast<int>(std::count(l.begin(), l.end(), -kInf));
  };
  EXPECT_EQ(kept(), 4);  // 0.9
  s.advance(0);
  EXPECT_EQ(kept(), 1);  // 0.45
}

TEST(SamplerTopPDecay, OffTopPStaysOffAndNoDecayKeepsIt) {
  SamplingConfig c = sampling(1.0f, 40, 0.0f);
  c.top_p_decay = 0.5f;
  c.top_p_reset_id = 1;
  TokenSampler off(c, 0);
  off.advance(3);
  off.advance(1);
  EXPECT_EQ(off.top_p(), 0.0f);
  // top_p 1 (the whole distribution) does decay into effect, as TensorRT-LLM's.
  c.top_p = 1.0f;
  TokenSampler one(c, 0);
  one.advance(3);
  EXPECT_EQ(one.top_p(), 0.5f);
  TokenSampler flat(sampling(1.0f, 0, 0.7f), 0);
  for (int i = 0; i < 5; ++i) flat.advance(i);
  EXPECT_EQ(flat.top_p(), 0.7f);
}

TEST(SamplerState, SaveAndRestoreResumesTheSameStream) {
  SamplingConfig c = sampling(0.9f, 0, 0.95f);
  c.top_p_decay = 0.9f;
  c.top_p_min = 0.3f;
  const std::vector<float> base = random_logits(2000, 1.5f, 5);
  auto step = [&](TokenSampler& s) {
    std::vector<float> l = base;
    const int32_t t = s.sample(l.data(), 2000, false).token;
    s.advance(t);
    return t;
  };
  TokenSampler a(c, 1234);
  for (int i = 0; i < 10; ++i) step(a);
  const SamplerState saved = a.state();
  EXPECT_EQ(saved.step, 10u);
  EXPECT_LT(saved.top_p, 0.95f);
  std::vector<int32_t> rest_a;
  for (int i = 0; i < 20; ++i) rest_a.push_back(step(a));

  TokenSampler b(c, 1234);
  b.restore(saved);
  std::vector<int32_t> rest_b;
  for (int i = 0; i < 20; ++i) rest_b.push_back(step(b));
  EXPECT_EQ(rest_a, rest_b);
}

// Not a benchmark, a guard against an accidental O(vocab log vocab) or allocating path: prints per-call times.
TEST(SamplerSpeed, LargeVocab) {
  const int64_t vocab = 152064;
  const std::vector<float> base = random_logits(vocab, 2.0f, 1);
  struct Case {
    const char* name;
    SamplingConfig c;
  } cases[] = {{"greedy", sampling(0.0f)},
               {"full softmax", sampling(1.0f)},
               {"top_k 50", sampling(0.8f, 50)},
               {"top_p 0.9", sampling(1.0f, 0, 0.9f)},
               {"top_k 50 + top_p 0.9", sampling(1.0f, 50, 0.9f)}};
  std::vector<float> l(vocab);
  for (const Case& cs : cases) {
    TokenSampler s(cs.c, 1);
    const int iters = 50;
    double total = 0;
    for (int i = 0; i < iters; ++i) {
      std::copy(base.begin(), base.end(), l.begin());
      const auto t0 = std::chrono::steady_clock::now();
      s.advance(s.sample(l.data(), vocab, true).token);
      total += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    }
    std::printf("  %-22s %8.1f us/call (with log-prob)\n", cs.name, total / iters);
  }
}

}  // namespace
}  // namespace kiln
