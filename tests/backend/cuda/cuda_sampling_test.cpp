// CudaBackend::begin_sampling / sample_rows against the host's LogitsProcessor + TokenSampler on the same rows:
// the same token on every row but those whose host margin (u against a CDF step, or the mass above an entry
// against top_p) is within 1e-5 of the total; the log-prob within 1e-4. Also: the same (seed, step) draws the
// same token, draws over steps follow the probabilities (chi-square), the op works inside a CUDA graph whose
// replays follow new settings, and timings (CudaSampling.Timing). Skipped where no GPU is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_test_util.h"
#include "executor/logits_processor.h"
#include "executor/philox.h"
#include "executor/sampler.h"

namespace kiln {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

#define SAMP_CUDA_ASSERT(call)                                                  \
  do {                                                                          \
    const cudaError_t e_ = (call);                                              \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);      \
  } while (0)

struct Setting {
  float temperature;
  int32_t top_k;
  float top_p;
  float rep = 1.0f, pres = 0.0f, freq = 0.0f;
  bool bans = false;
};

std::string describe(const Setting& s) {
  char b[160];
  std::snprintf(b, sizeof(b), "T=%g k=%d p=%g rep=%g pres=%g freq=%g bans=%d", s.temperature, s.top_k, s.top_p, s.rep,
                s.pres, s.freq, s.bans ? 1 : 0);
  return b;
}

// One logit row with its request's history.
struct Case {
  std::vector<float> logits;
  Setting s;
  uint64_t seed = 0, step = 0;
  std::vector<int32_t> prompt, output, banned;
  std::string what;
};

// The host's result for a case, and the processed row (after LogitsProcessor) for the margin.
struct HostResult {
  Sample sample;
  std::vector<float> processed;
};

SamplingConfig config_of(const Setting& s) {
  SamplingConfig c;
  c.temperature = s.temperature;
  c.top_k = s.top_k;
  c.top_p = s.top_p;
  c.repetition_penalty = s.rep;
  c.presence_penalty = s.pres;
  c.frequency_penalty = s.freq;
  return c;
}

HostResult host_sample(const Case& c, int64_t vocab) {
  Request req;
  req.sampling = config_of(c.s);
  for (int32_t b : c.banned) req.bad_words.push_back({b});
  LogitsProcessor lp(req, {}, vocab);
  HostResult r;
  r.processed = c.logits;
  lp.apply(c.prompt, c.output, r.processed.data());
  TokenSampler ts(req.sampling, c.seed);
  ts.restore({c.step, c.s.top_p});
  std::vector<float> row = r.processed;
  r.sample = ts.sample(row.data(), vocab, true);
  return r;
}

// The smallest distance, relative to the total, between a decision quantity and its threshold on the host's
// path: the mass above each ranked candidate vs top_p * total, and each CDF step vs u * total.
double host_margin(const std::vector<float>& q, const Setting& s, uint64_t seed, uint64_t step) {
  const int64_t vocab = static_cast<int64_t>(q.size());
  const bool greedy = s.temperature == 0.0f || s.top_k == 1 || (s.top_k == 0 && s.top_p == 0.0f);
  if (greedy) return kInf;
  std::vector<float> v(q);
  if (s.temperature != 0.0f && s.temperature != 1.0f)
    for (float& x : v) x /= s.temperature;
  for (float& x : v)
    if (std::isnan(x)) x = -kInf;
  float mx = -kInf;
  for (float x : v) mx = std::max(mx, x);
  if (mx == -kInf) return kInf;
  std::vector<float> w(vocab);
  for (int64_t i = 0; i < vocab; ++i) w[i] = std::exp(v[i] - mx);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  const bool use_k = s.top_k > 0 && s.top_k < vocab, use_p = s.top_p > 0.0f && s.top_p < 1.0f;
  size_t n = use_k ? static_cast<size_t>(s.top_k) : order.size();
  double margin = kInf;
  if (use_p) {
    double total = 0;
    for (size_t j = 0; j < n; ++j) total += w[order[j]];
    const double target = static_cast<double>(s.top_p) * total;
    double above = 0;
    size_t kept = n;
    for (size_t j = 0; j < n; ++j) {
      margin = std::min(margin, std::fabs(above - target) / total);
      if (above >= target) {
        kept = j;
        break;
      }
      above += w[order[j]];
    }
    n = kept;
  }
  std::vector<int32_t> ids(order.begin(), order.begin() + n);
  std::sort(ids.begin(), ids.end());
  double total = 0;
  for (int32_t id : ids) total += w[id];
  const double target = static_cast<double>(philox_uniform(seed, step)) * total;
  double cum = 0;
  for (int32_t id : ids) {
    if (!(w[id] > 0.0f)) continue;
    cum += w[id];
    margin = std::min(margin, std::fabs(cum - target) / total);
  }
  return margin;
}

SamplingBatch batch_of(const std::vector<Case>& cases, bool log_probs) {
  SamplingBatch b;
  b.log_probs = log_probs;
  for (const Case& c : cases) {
    SamplingRow r;
    r.temperature = c.s.temperature;
    r.top_k = c.s.top_k;
    r.top_p = c.s.top_p;
    r.seed = c.seed;
    r.step = c.step;
    r.repetition_penalty = c.s.rep;
    r.presence_penalty = c.s.pres;
    r.frequency_penalty = c.s.freq;
    r.penalties_begin = static_cast<int32_t>(b.penalties.size());
    std::map<int32_t, PenaltyEntry> by_token;
    for (int32_t t : c.prompt) {
      by_token[t].token = t;
      by_token[t].repetition = true;
    }
    for (int32_t t : c.output) {
      by_token[t].token = t;
      by_token[t].repetition = true;
      ++by_token[t].output_count;
    }
    for (int32_t t : c.banned) {
      by_token[t].token = t;
      by_token[t].banned = true;
    }
    for (const auto& [t, e] : by_token) b.penalties.push_back(e);
    r.penalties_end = static_cast<int32_t>(b.penalties.size());
    b.rows.push_back(r);
  }
  return b;
}

struct GpuResult {
  std::vector<int32_t> ids;
  std::vector<float> log_probs;
};

// Uploads the rows, begin_sampling, sample_rows, downloads.
void gpu_sample(CudaBackend& be, const std::vector<Case>& cases, int64_t vocab, bool log_probs, GpuResult* out) {
  const int64_t R = static_cast<int64_t>(cases.size());
  auto lb = be.allocate(R * vocab * 4), ib = be.allocate(R * 4), pb = be.allocate(R * 4);
  ASSERT_TRUE(lb.ok() && ib.ok() && pb.ok());
  Tensor lt = lb->view(DType::kF32, {R, vocab}), it = ib->view(DType::kI32, {R}), pt = pb->view(DType::kF32, {R});
  std::vector<float> all(R * vocab);
  for (int64_t r = 0; r < R; ++r) std::copy(cases[r].logits.begin(), cases[r].logits.end(), all.begin() + r * vocab);
  be.upload(all.data(), lt);
  const Status st = be.begin_sampling(batch_of(cases, log_probs));
  ASSERT_TRUE(st.ok()) << st.to_string();
  be.sample_rows(lt, it, pt);
  out->ids.resize(R);
  out->log_probs.resize(R);
  be.download(it, out->ids.data());
  be.download(pt, out->log_probs.data());
  SAMP_CUDA_ASSERT(cudaDeviceSynchronize());
}

std::vector<float> make_row(int64_t vocab, int kind, std::mt19937& rng) {
  std::vector<float> l(vocab);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::uniform_real_distribution<float> un(0.0f, 1.0f);
  switch (kind) {
    case 0:  // LLM-like: a broad body and a few strong candidates
      for (float& x : l) x = 2.0f * nd(rng);
      for (int i = 0; i < 30; ++i) l[pick(rng)] = 5.0f + 10.0f * un(rng);
      break;
    case 1:  // coarse values: many ties, also at the top-k / top-p cuts
      for (float& x : l) x = std::round(3.0f * nd(rng) * 2.0f) / 2.0f;
      for (int i = 0; i < 12; ++i) l[pick(rng)] = 9.0f;
      break;
    case 2:  // some -inf
      for (float& x : l) x = 2.5f * nd(rng);
      for (int64_t i = 0; i < vocab / 50; ++i) l[pick(rng)] = -kInf;
      l[pick(rng)] = 12.0f;
      break;
    case 3:  // flat
      for (float& x : l) x = 0.5f * nd(rng);
      break;
    case 4:  // peaked with ties at the top
      for (float& x : l) x = 3.0f * nd(rng) - 5.0f;
      for (int i = 0; i < 4; ++i) l[pick(rng)] = 20.0f;
      break;
    default:  // all -inf
      std::fill(l.begin(), l.end(), -kInf);
  }
  return l;
}

std::vector<Setting> settings_for(int64_t vocab) {
  const int32_t V = static_cast<int32_t>(vocab);
  return {
      // greedy variants
      {0.0f, 0, 0.0f}, {1.0f, 1, 1.0f}, {1.0f, 0, 0.0f}, {0.7f, 1, 0.9f}, {0.0f, 50, 0.9f},
      // temperature only
      {0.3f, 0, 1.0f}, {0.7f, 0, 1.0f}, {1.0f, 0, 1.0f}, {1.5f, 0, 1.0f},
      // top-k
      {1.0f, 5, 0.0f}, {1.0f, 50, 0.0f}, {0.7f, 1000, 0.0f}, {1.0f, V, 0.0f}, {1.5f, 5, 1.0f},
      // top-p
      {1.0f, 0, 0.1f}, {0.7f, 0, 0.5f}, {1.0f, 0, 0.9f}, {1.0f, 0, 0.999f}, {1.0f, 0, 1.0f},
      // combos
      {0.7f, 50, 0.9f}, {1.0f, 1000, 0.5f}, {1.5f, 5, 0.999f}, {0.3f, 50, 0.1f}, {1.0f, V, 0.9f},
      // top-k above the shared-memory candidate path (radix selects over the row)
      {1.0f, 5000, 0.0f}, {0.7f, 5000, 0.9f},
      // penalties and bans
      {1.0f, 0, 0.9f, 1.3f}, {0.7f, 50, 0.0f, 0.8f, 0.5f, 0.3f}, {0.0f, 0, 0.0f, 1.3f, 0.5f, 0.3f, true},
      {1.0f, 0, 1.0f, 1.0f, 0.5f, 0.0f, true}, {1.0f, 1000, 0.999f, 1.3f, 0.0f, 0.3f, true},
      {0.7f, 0, 0.9f, 0.8f, 0.5f, 0.3f, true},
  };
}

struct Tally {
  int rows = 0, mismatches = 0, small_margin = 0;
};

// batch_rows > 0: sample in batches of that many rows (small batches split each row over a cluster of blocks).
void compare(CudaBackend& be, int64_t vocab, uint32_t seed, int batch_rows, Tally* tally) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  std::vector<Case> cases;
  const std::vector<Setting> settings = settings_for(vocab);
  for (int kind = 0; kind < 5; ++kind)
    for (const Setting& s : settings)
      for (int rep = 0; rep < 2; ++rep) {
        Case c;
        c.logits = make_row(vocab, kind, rng);
        c.s = s;
        c.seed = rng();
        c.step = rng() % 1000;
        if (s.rep != 1.0f || s.pres != 0.0f || s.freq != 0.0f) {
          for (int i = 0; i < 48; ++i) c.prompt.push_back(tok(rng));
          for (int i = 0; i < 24; ++i) c.output.push_back(i % 3 == 0 && !c.output.empty() ? c.output[0] : tok(rng));
          // the row's best entries are in the history too, so the penalties move the draw
          const int32_t best = static_cast<int32_t>(std::max_element(c.logits.begin(), c.logits.end()) - c.logits.begin());
          c.output.push_back(best);
          c.prompt.push_back(best);
        }
        if (s.bans) {
          for (int i = 0; i < 5; ++i) c.banned.push_back(tok(rng));
          c.banned.push_back(static_cast<int32_t>(std::max_element(c.logits.begin(), c.logits.end()) - c.logits.begin()));
        }
        c.what = "kind " + std::to_string(kind) + " " + describe(s);
        cases.push_back(std::move(c));
      }
  {  // a row of all -inf, sampled and greedy
    Case c;
    c.logits = make_row(vocab, 5, rng);
    c.s = {1.0f, 50, 0.9f};
    c.seed = 1;
    c.what = "all -inf, sampled";
    cases.push_back(c);
    c.s = {0.0f, 0, 0.0f};
    c.what = "all -inf, greedy";
    cases.push_back(c);
  }
  GpuResult g;
  if (batch_rows <= 0) {
    gpu_sample(be, cases, vocab, true, &g);
  } else {
    for (size_t b = 0; b < cases.size(); b += batch_rows) {
      const std::vector<Case> part(cases.begin() + b, cases.begin() + std::min(cases.size(), b + batch_rows));
      GpuResult gp;
      gpu_sample(be, part, vocab, true, &gp);
      g.ids.insert(g.ids.end(), gp.ids.begin(), gp.ids.end());
      g.log_probs.insert(g.log_probs.end(), gp.log_probs.begin(), gp.log_probs.end());
    }
  }
  for (size_t r = 0; r < cases.size(); ++r) {
    const Case& c = cases[r];
    const HostResult h = host_sample(c, vocab);
    ++tally->rows;
    if (h.sample.token != g.ids[r]) {
      ++tally->mismatches;
      const double m = host_margin(h.processed, c.s, c.seed, c.step);
      EXPECT_LT(m, 1e-5) << "vocab " << vocab << " row " << r << " (" << c.what << "): host " << h.sample.token
                         << " gpu " << g.ids[r] << ", host margin " << m;
      if (m < 1e-5) ++tally->small_margin;
      continue;
    }
    const float a = h.sample.log_prob, b = g.log_probs[r];
    if (std::isinf(a) || std::isinf(b)) {
      EXPECT_EQ(a, b) << "vocab " << vocab << " row " << r << " (" << c.what << ")";
    } else {
      EXPECT_NEAR(a, b, 1e-4) << "vocab " << vocab << " row " << r << " (" << c.what << ")";
    }
  }
}

std::unique_ptr<CudaBackend> make_backend() {
  auto made = CudaBackend::create();
  EXPECT_TRUE(made.ok()) << made.status().to_string();
  return made.ok() ? std::move(*made) : nullptr;
}

TEST(CudaSampling, MatchesHostSampler) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto be = make_backend();
  ASSERT_TRUE(be);
  Tally t;
  for (int64_t vocab : {int64_t{32064}, int64_t{128256}, int64_t{151936}, int64_t{1003}}) {
    // seed 1: one batch of all rows (one block per row); seed 2: batches of 8 and 40 rows (clusters of 8 and 2
    // blocks per row on sm_90).
    compare(*be, vocab, 1000 + static_cast<uint32_t>(vocab), 0, &t);
    compare(*be, vocab, 2000 + static_cast<uint32_t>(vocab), 8, &t);
    compare(*be, vocab, 3000 + static_cast<uint32_t>(vocab), 40, &t);
  }
  std::printf("[CudaSampling] %d rows, %d token mismatches (%.4f%%), all with host margin < 1e-5: %d\n", t.rows,
              t.mismatches, 100.0 * t.mismatches / std::max(t.rows, 1), t.small_margin);
  EXPECT_LE(t.mismatches, t.rows / 200 + 1);
}

TEST(CudaSampling, SameSeedAndStepSameToken) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto be = make_backend();
  ASSERT_TRUE(be);
  std::mt19937 rng(5);
  std::vector<Case> cases;
  for (int i = 0; i < 64; ++i) {
    Case c;
    c.logits = make_row(32064, i % 5, rng);
    c.s = {1.0f, i % 2 ? 50 : 0, i % 3 ? 0.9f : 1.0f};
    c.seed = 77;
    c.step = static_cast<uint64_t>(i / 2);
    cases.push_back(c);
  }
  GpuResult a, b;
  gpu_sample(*be, cases, 32064, false, &a);
  gpu_sample(*be, cases, 32064, false, &b);
  EXPECT_EQ(a.ids, b.ids);
  for (float lp : a.log_probs) EXPECT_EQ(lp, 0.0f);  // not asked: 0
}

TEST(CudaSampling, DrawsFollowTheProbabilities) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto be = make_backend();
  ASSERT_TRUE(be);
  constexpr int V = 16, N = 20000;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> l(V);
  for (float& x : l) x = nd(rng);
  std::vector<Case> cases(N);
  for (int i = 0; i < N; ++i) {
    cases[i].logits = l;
    cases[i].s = {1.0f, 0, 1.0f};
    cases[i].seed = 4242;
    cases[i].step = static_cast<uint64_t>(i);
  }
  GpuResult g;
  gpu_sample(*be, cases, V, true, &g);
  std::vector<int> hist(V, 0);
  int same_as_host = 0;
  for (int i = 0; i < N; ++i) {
    ASSERT_GE(g.ids[i], 0);
    ASSERT_LT(g.ids[i], V);
    ++hist[g.ids[i]];
    same_as_host += host_sample(cases[i], V).sample.token == g.ids[i];
  }
  double mx = -kInf, sum = 0;
  for (float x : l) mx = std::max<double>(mx, x);
  std::vector<double> p(V);
  for (int i = 0; i < V; ++i) sum += p[i] = std::exp(l[i] - mx);
  double chi2 = 0;
  for (int i = 0; i < V; ++i) {
    const double e = N * p[i] / sum;
    chi2 += (hist[i] - e) * (hist[i] - e) / e;
  }
  std::printf("[CudaSampling] chi-square %.2f over %d tokens (15 dof), %d of %d draws equal the host's\n", chi2, V,
              same_as_host, N);
  EXPECT_LT(chi2, 40.0);  // p < 0.0005 at 15 degrees of freedom
  EXPECT_GE(same_as_host, N - 2);
}

TEST(CudaSampling, WorksInsideAGraphAndFollowsNewSettings) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto be = make_backend();
  ASSERT_TRUE(be);
  constexpr int64_t V = 32064, R = 8;
  std::mt19937 rng(13);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::vector<Case> a(R), b(R);
  for (int r = 0; r < R; ++r) {
    a[r].logits = b[r].logits = make_row(V, r % 5, rng);
    a[r].s = {0.7f, 50, 0.9f, 1.3f, 0.5f, 0.3f, true};
    a[r].seed = 100 + r;
    a[r].step = 3;
    for (int i = 0; i < 200; ++i) a[r].prompt.push_back(tok(rng));
    for (int i = 0; i < 20; ++i) a[r].output.push_back(tok(rng));
    a[r].banned = {tok(rng), tok(rng)};
    b[r].s = r % 2 ? Setting{0.0f, 0, 0.0f} : Setting{1.2f, 0, 0.95f, 1.0f, 0.0f, 0.0f};
    b[r].seed = 900 + r;
    b[r].step = 17;
  }
  auto lb = be->allocate(R * V * 4), ib = be->allocate(R * 4), pb = be->allocate(R * 4);
  ASSERT_TRUE(lb.ok() && ib.ok() && pb.ok());
  Tensor lt = lb->view(DType::kF32, {R, V}), it = ib->view(DType::kI32, {R}), pt = pb->view(DType::kF32, {R});
  std::vector<float> all(R * V);
  for (int64_t r = 0; r < R; ++r) std::copy(a[r].logits.begin(), a[r].logits.end(), all.begin() + r * V);
  ASSERT_TRUE(be->begin_sampling(batch_of(a, true)).ok());  // sizes the settings buffer before the capture
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SAMP_CUDA_ASSERT(cudaStreamBeginCapture(be->stream(), cudaStreamCaptureModeRelaxed));
  be->sample_rows(lt, it, pt);
  SAMP_CUDA_ASSERT(cudaStreamEndCapture(be->stream(), &graph));
  SAMP_CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  for (int round = 0; round < 2; ++round) {
    const std::vector<Case>& cases = round == 0 ? a : b;
    be->upload(all.data(), lt);  // the op applies penalties in place: fresh logits each replay
    ASSERT_TRUE(be->begin_sampling(batch_of(cases, true)).ok());
    SAMP_CUDA_ASSERT(cudaGraphLaunch(exec, be->stream()));
    std::vector<int32_t> ids(R);
    std::vector<float> lps(R);
    be->download(it, ids.data());
    be->download(pt, lps.data());
    for (int r = 0; r < R; ++r) {
      const HostResult h = host_sample(cases[r], V);
      if (h.sample.token != ids[r]) {
        EXPECT_LT(host_margin(h.processed, cases[r].s, cases[r].seed, cases[r].step), 1e-5)
            << "round " << round << " row " << r;
      } else {
        EXPECT_NEAR(h.sample.log_prob, lps[r], 1e-4) << "round " << round << " row " << r;
      }
    }
  }
  SAMP_CUDA_ASSERT(cudaGraphExecDestroy(exec));
  SAMP_CUDA_ASSERT(cudaGraphDestroy(graph));
}

// Microseconds per call in a CUDA graph of `reps` calls (as a decode step runs it); -1 on a CUDA error.
template <typename Step>
double time_us(cudaStream_t s, int reps, Step&& step) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  step();
  if (cudaStreamSynchronize(s) != cudaSuccess) return -1;
  if (cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) != cudaSuccess) return -1;
  for (int i = 0; i < reps; ++i) step();
  if (cudaStreamEndCapture(s, &graph) != cudaSuccess || graph == nullptr) return -1;
  if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) return -1;
  cudaGraphLaunch(exec, s);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  constexpr int kLaunches = 3;
  cudaEventRecord(e0, s);
  for (int i = 0; i < kLaunches; ++i) cudaGraphLaunch(exec, s);
  cudaEventRecord(e1, s);
  const bool ok = cudaEventSynchronize(e1) == cudaSuccess;
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ok ? 1000.0 * ms / (kLaunches * reps) : -1;
}

TEST(CudaSampling, Timing) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto be = make_backend();
  ASSERT_TRUE(be);
  constexpr int64_t V = 128256;
  const int64_t Rmax = 512;
  std::mt19937 rng(21);
  std::vector<float> all(Rmax * V);
  for (int64_t r = 0; r < Rmax; ++r) {
    const std::vector<float> l = make_row(V, 0, rng);
    std::copy(l.begin(), l.end(), all.begin() + r * V);
  }
  auto lb = be->allocate(Rmax * V * 4), ib = be->allocate(Rmax * 4), pb = be->allocate(Rmax * 4);
  ASSERT_TRUE(lb.ok() && ib.ok() && pb.ok());
  struct Named {
    const char* name;
    Setting s;
    bool log_probs;
  };
  const Named configs[] = {{"greedy", {0.0f, 0, 0.0f, 1.3f, 0.5f, 0.3f}, true},
                           {"temperature 0.7", {0.7f, 0, 1.0f, 1.3f, 0.5f, 0.3f}, true},
                           {"top-k 50", {1.0f, 50, 0.0f, 1.3f, 0.5f, 0.3f}, true},
                           {"top-p 0.9", {1.0f, 0, 0.9f, 1.3f, 0.5f, 0.3f}, true},
                           {"top-k 50 + top-p 0.9", {1.0f, 50, 0.9f, 1.3f, 0.5f, 0.3f}, true},
                           {"greedy, no log-prob", {0.0f, 0, 0.0f, 1.3f, 0.5f, 0.3f}, false},
                           {"temp 0.7, no log-prob", {0.7f, 0, 1.0f, 1.3f, 0.5f, 0.3f}, false},
                           {"top-k 50, no log-prob", {1.0f, 50, 0.0f, 1.3f, 0.5f, 0.3f}, false},
                           {"top-p 0.9, no log-prob", {1.0f, 0, 0.9f, 1.3f, 0.5f, 0.3f}, false},
                           {"top-p 0.9, T 10 (flat)", {10.0f, 0, 0.9f, 1.3f, 0.5f, 0.3f}, false}};
  constexpr size_t kConfigs = std::size(configs);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::printf("[CudaSampling] microseconds per call, vocab %lld, 256 penalty entries per row, in a CUDA graph\n",
              static_cast<long long>(V));
  std::printf("%-24s %10s %10s %10s\n", "", "R=1", "R=64", "R=512");
  std::vector<std::vector<double>> table(kConfigs + 1);
  for (int64_t R : {int64_t{1}, int64_t{64}, int64_t{512}}) {
    Tensor lt = lb->view(DType::kF32, {R, V}), it = ib->view(DType::kI32, {R}), pt = pb->view(DType::kF32, {R});
    be->upload(all.data(), lt);
    for (size_t ci = 0; ci < std::size(configs); ++ci) {
      SamplingBatch b;
      b.log_probs = configs[ci].log_probs;
      for (int64_t r = 0; r < R; ++r) {
        SamplingRow row;
        row.temperature = configs[ci].s.temperature;
        row.top_k = configs[ci].s.top_k;
        row.top_p = configs[ci].s.top_p;
        row.repetition_penalty = configs[ci].s.rep;
        row.presence_penalty = configs[ci].s.pres;
        row.frequency_penalty = configs[ci].s.freq;
        row.seed = r;
        row.step = 5;
        row.penalties_begin = static_cast<int32_t>(b.penalties.size());
        std::set<int32_t> used;
        while (used.size() < 256) used.insert(tok(rng));
        int i = 0;
        for (int32_t t : used) b.penalties.push_back({t, i++ % 4, true, false});
        row.penalties_end = static_cast<int32_t>(b.penalties.size());
        b.rows.push_back(row);
      }
      ASSERT_TRUE(be->begin_sampling(b).ok());
      table[ci].push_back(time_us(be->stream(), 10, [&] { be->sample_rows(lt, it, pt); }));
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << configs[ci].name << " R=" << R << ": " << cudaGetErrorString(err);
    }
    table[kConfigs].push_back(time_us(be->stream(), 10, [&] { be->argmax_rows(lt, it); }));
    SAMP_CUDA_ASSERT(cudaDeviceSynchronize());
  }
  for (size_t ci = 0; ci <= kConfigs; ++ci)
    std::printf("%-24s %10.1f %10.1f %10.1f\n", ci < kConfigs ? configs[ci].name : "argmax_rows (reference)",
                table[ci][0], table[ci][1], table[ci][2]);
}

}  // namespace
}  // namespace kiln
