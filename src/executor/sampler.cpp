#include "executor/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend/cpu/vec.h"
#include "executor/philox.h"

namespace kiln {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kExpBatch = 2048;  // values per vector-exp call (a multiple of 16)
constexpr int64_t kCdfBlock = 1024;  // the CDF walk skips whole blocks by their sums
constexpr int32_t kHeapTopK = 4096;  // top-k up to this uses a heap pass, above it nth_element

// NaN ranks as -inf so the ordering below stays a strict weak order whatever the row holds.
inline float rank_key(float v) { return std::isnan(v) ? kNegInf : v; }

// Larger logit first; equal logits: lower token id first.
struct Ranked {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    const float x = rank_key(logits[a]), y = rank_key(logits[b]);
    return x > y || (x == y && a < b);
  }
};

// Per-thread buffers, reused across calls.
struct Scratch {
  std::vector<int32_t> ids;    // candidates, then survivors, of top-k/top-p
  std::vector<float> values;   // gathered values
  std::vector<float> weights;  // [vocab] exp(logit - max) by token id
  std::vector<float> batch;    // [kExpBatch] padded input of one vector-exp call
  std::vector<double> blocks;  // CDF block sums
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// The largest value, NaN ignored (-inf when there is none). 8 lanes for instruction-level parallelism.
float row_max(const float* x, int64_t n) {
  float m[8];
  std::fill(m, m + 8, kNegInf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
  for (; i < n; ++i) m[0] = x[i] > m[0] ? x[i] : m[0];
  float r = m[0];
  for (int j = 1; j < 8; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

// Sum in double, in a fixed order: float lanes over 64-value blocks (8 terms each), folded into double lanes.
double row_sum(const float* x, int64_t n) {
  double d[8] = {};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    float s[8] = {};
    for (int k = 0; k < 64; k += 8)
      for (int j = 0; j < 8; ++j) s[j] += x[i + k + j];
    for (int j = 0; j < 8; ++j) d[j] += s[j];
  }
  for (; i < n; ++i) d[0] += x[i];
  return ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
}

// out[i] = exp(x[i] / t - mx) (t == 1: no division; otherwise the warper's float division). Every value goes
// through the vector exp (batches are padded to a multiple of 16, so none falls to a scalar tail): a token's
// weight is the same whichever path computes it, and so is the token drawn.
void exp_shifted(const float* x, int64_t n, float t, float mx, float* out) {
  const cpu::VecOps& ops = cpu::vec_ops();
  Scratch& s = scratch();
  s.batch.resize(kExpBatch);
  float* b = s.batch.data();
  for (int64_t c = 0; c < n; c += kExpBatch) {
    const int64_t m = std::min(kExpBatch, n - c);
    const int64_t padded = (m + 15) & ~int64_t{15};
    if (t == 1.0f) {
      for (int64_t i = 0; i < m; ++i) b[i] = x[c + i] - mx;
    } else {
      int64_t i = 0;
      for (; i + 8 <= m; i += 8)  // fixed-width inner loop: vectorized at -O2
        for (int j = 0; j < 8; ++j) b[i + j] = x[c + i + j] / t - mx;
      for (; i < m; ++i) b[i] = x[c + i] / t - mx;
    }
    std::fill(b + m, b + padded, kNegInf);
    ops.exp(b, b, padded);
    std::copy(b, b + m, out + c);
  }
}

// weights[id] = exp(logits[id] - mx) for the listed ids only.
void exp_gathered(const float* logits, const int32_t* ids, int64_t n, float mx, float* weights) {
  Scratch& s = scratch();
  s.values.resize(n);
  for (int64_t i = 0; i < n; ++i) s.values[i] = logits[ids[i]];
  exp_shifted(s.values.data(), n, 1.0f, mx, s.values.data());
  for (int64_t i = 0; i < n; ++i) weights[ids[i]] = s.values[i];
}

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

void apply_temperature(float* logits, int64_t vocab, float t) {
  if (t == 0.0f || t == 1.0f) return;
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8)  // fixed-width inner loop: vectorized at -O2
    for (int j = 0; j < 8; ++j) logits[i + j] /= t;
  for (; i < vocab; ++i) logits[i] /= t;
}

// ids := the k best entries of the row (unordered). Small k: one pass with a heap of the k best so far (its
// root the worst of them), comparing each entry with the root's value first; ids are scanned in increasing
// order, so an equal value never displaces a lower id. Large k: nth_element over all ids.
void select_top_k(const float* logits, int64_t vocab, int32_t k, std::vector<int32_t>& ids) {
  const Ranked ranked{logits};
  if (k > kHeapTopK) {
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), ranked);
    ids.resize(k);
    return;
  }
  ids.resize(k);
  std::iota(ids.begin(), ids.end(), 0);
  std::make_heap(ids.begin(), ids.end(), ranked);
  float worst = rank_key(logits[ids.front()]);
  for (int64_t i = k; i < vocab; ++i) {
    if (!(logits[i] > worst)) continue;  // also skips NaN
    std::pop_heap(ids.begin(), ids.end(), ranked);
    ids.back() = static_cast<int32_t>(i);
    std::push_heap(ids.begin(), ids.end(), ranked);
    worst = rank_key(logits[ids.front()]);
  }
}

// A top-p candidate, self-contained so that partitioning touches no other memory.
struct Candidate {
  float key;     // rank_key(logit)
  float weight;  // exp(logit - max)
  int32_t id;
};
inline bool ranked_before(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.id < b.id);
}

// Reorders ids[0, n) so that ids[0, kept) is the nucleus: the entries whose mass ranked above them is < target
// (w[id]: weights by token id, mx: the largest logit among them), and returns kept. Two passes, no sort of the
// row: a histogram of mass over kNucleusBuckets logit intervals below mx finds the interval where the
// cumulative mass reaches target; intervals above it are kept whole, below it removed, and only the entries of
// that one interval are sorted (exactly, by logit then id) and walked.
constexpr int kNucleusBuckets = 4096;
constexpr float kNucleusRange = 40.0f;  // logits below mx - 40 (weight < 5e-18) share the last interval

int64_t select_nucleus(const float* logits, const float* w, int32_t* ids, int64_t n, float mx, double target) {
  thread_local std::vector<double> mass;
  thread_local std::vector<Candidate> edge;
  mass.assign(kNucleusBuckets, 0.0);
  const float scale = kNucleusBuckets / kNucleusRange;
  auto bucket = [&](float key) {  // non-increasing in key; -inf (and NaN, ranked as -inf) land in the last
    const float d = (mx - key) * scale;
    return d < kNucleusBuckets - 1 ? static_cast<int>(d) : kNucleusBuckets - 1;
  };
  for (int64_t i = 0; i < n; ++i) mass[bucket(rank_key(logits[ids[i]]))] += w[ids[i]];
  double cum = 0;
  int edge_bucket = kNucleusBuckets - 1;
  for (int b = 0; b < kNucleusBuckets; ++b) {
    if (cum + mass[b] >= target) {
      edge_bucket = b;
      break;
    }
    cum += mass[b];
  }
  int64_t kept = 0;
  edge.clear();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    const float key = rank_key(logits[id]);
    const int b = bucket(key);
    ids[kept] = id;  // kept <= i: compaction in place, branch-free
    kept += b < edge_bucket;
    if (b == edge_bucket) edge.push_back({key, w[id], id});
  }
  std::sort(edge.begin(), edge.end(), ranked_before);
  for (const Candidate& c : edge) {
    if (cum >= target) break;
    ids[kept++] = c.id;
    cum += c.weight;
  }
  return kept;
}

// The entries that survive top-k/top-p: scratch().ids[0, n) (unordered), or every entry when `all`.
struct Kept {
  bool all = true;
  int64_t n = 0;
  bool weighed = false;  // scratch().weights[id] is set for every survivor
};

// Top-k then top-p over a row already divided by the temperature, whose largest value is mx. `full_weights`:
// scratch().weights already holds exp(logit - mx) for the whole row. Every removed entry becomes -inf.
Kept truncate(float* logits, int64_t vocab, int32_t top_k, float top_p, float mx, bool full_weights) {
  Scratch& s = scratch();
  const bool use_k = top_k > 0 && top_k < vocab;
  const bool use_p = top_p > 0.0f && top_p < 1.0f && mx != kNegInf;
  if (!use_k && !use_p) return {true, vocab, full_weights};
  if (use_k) {
    select_top_k(logits, vocab, top_k, s.ids);
  } else {
    s.ids.resize(vocab);
    std::iota(s.ids.begin(), s.ids.end(), 0);
  }
  int64_t n = static_cast<int64_t>(s.ids.size());
  bool weighed = full_weights;
  if (use_p) {
    s.weights.resize(vocab);
    if (!full_weights) exp_gathered(logits, s.ids.data(), n, mx, s.weights.data());  // mx is among them
    weighed = true;
    double total = 0;
    if (use_k) {
      for (int64_t i = 0; i < n; ++i) total += s.weights[s.ids[i]];
    } else {
      total = row_sum(s.weights.data(), vocab);
    }
    n = select_nucleus(logits, s.weights.data(), s.ids.data(), n, mx, static_cast<double>(top_p) * total);
  }
  // Keep ids[0, n): save their values, clear the row, put them back.
  s.values.resize(n);
  for (int64_t i = 0; i < n; ++i) s.values[i] = logits[s.ids[i]];
  std::fill(logits, logits + vocab, kNegInf);
  for (int64_t i = 0; i < n; ++i) logits[s.ids[i]] = s.values[i];
  return {false, n, weighed};
}

// Inverse CDF in token-id order over weights w[0, n) (0 for removed entries): the first index whose cumulative
// weight exceeds u * total. Block sums let the walk skip most of the row.
int64_t walk_row(const float* w, int64_t n, float u) {
  Scratch& s = scratch();
  const int64_t nb = (n + kCdfBlock - 1) / kCdfBlock;
  s.blocks.resize(nb);
  double total = 0;
  for (int64_t b = 0; b < nb; ++b)
    total += s.blocks[b] = row_sum(w + b * kCdfBlock, std::min(kCdfBlock, n - b * kCdfBlock));
  const double target = static_cast<double>(u) * total;
  double cum = 0;
  for (int64_t b = 0; b < nb; ++b) {
    if (cum + s.blocks[b] <= target) {
      cum += s.blocks[b];
      continue;
    }
    const int64_t begin = b * kCdfBlock, end = std::min(n, begin + kCdfBlock);
    for (int64_t i = begin; i < end; ++i) {
      if (!(w[i] > 0.0f)) continue;
      cum += w[i];
      if (cum > target) return i;
    }
  }
  // Rounding left cum <= target at the end: the last entry of positive weight.
  for (int64_t i = n - 1; i >= 0; --i)
    if (w[i] > 0.0f) return i;
  return 0;
}

// Draws from the survivors of truncate(). A small survivor set is sorted by id and walked; a large one, or the
// whole row, is walked along the row with removed entries weighing 0.
int32_t draw(const float* logits, int64_t vocab, const Kept& kept, float mx, float u) {
  Scratch& s = scratch();
  s.weights.resize(vocab);
  float* w = s.weights.data();
  if (kept.all) {
    if (!kept.weighed) exp_shifted(logits, vocab, 1.0f, mx, w);
    return static_cast<int32_t>(walk_row(w, vocab, u));
  }
  int32_t* ids = s.ids.data();
  const int64_t n = kept.n;
  if (n == 0) return 0;
  if (!kept.weighed) exp_gathered(logits, ids, n, mx, w);
  if (n * 16 > vocab) {
    s.values.resize(n);
    for (int64_t i = 0; i < n; ++i) s.values[i] = w[ids[i]];
    std::fill(w, w + vocab, 0.0f);
    for (int64_t i = 0; i < n; ++i) w[ids[i]] = s.values[i];
    return static_cast<int32_t>(walk_row(w, vocab, u));
  }
  std::sort(ids, ids + n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += w[ids[i]];
  const double target = static_cast<double>(u) * total;
  double cum = 0;
  int32_t last = ids[0];
  for (int64_t i = 0; i < n; ++i) {
    if (!(w[ids[i]] > 0.0f)) continue;
    cum += w[ids[i]];
    last = ids[i];
    if (cum > target) return ids[i];
  }
  return last;
}

// The k best entries of a row (best first, ties: lower id first) with value(id) as their log-probs.
template <typename F>
std::vector<TokenLogProb> best_entries(const float* logits, int64_t vocab, int32_t k, F value) {
  std::vector<int32_t> ids;
  select_top_k(logits, vocab, static_cast<int32_t>(std::min<int64_t>(k, vocab)), ids);
  std::sort(ids.begin(), ids.end(), Ranked{logits});
  std::vector<TokenLogProb> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.push_back({id, value(id)});
  return out;
}

}  // namespace

TokenSampler::TokenSampler(const SamplingConfig& config, uint64_t seed)
    : config_(config),
      seed_(seed),
      greedy_(config.temperature == 0.0f || config.top_k == 1 || (config.top_k == 0 && config.top_p == 0.0f)),
      top_p_(config.top_p) {}

void TokenSampler::warp(float* logits, int64_t vocab) const {
  apply_temperature(logits, vocab, config_.temperature);
  truncate(logits, vocab, config_.top_k, top_p_, row_max(logits, vocab), false);
}

Sample TokenSampler::sample(float* logits, int64_t vocab, bool want_log_prob, int32_t top_log_probs) const {
  Sample out;
  Scratch& s = scratch();
  const bool want_top = top_log_probs > 0 && vocab > 0;
  if (greedy_) {
    out.token = argmax(logits, vocab);
    if (want_log_prob || want_top) {
      // log_softmax(logits / t)[token] = -log(sum(exp(logits / t - logits[token] / t))): the token is the max.
      const float t = config_.temperature == 0.0f ? 1.0f : config_.temperature;
      const float mx = t == 1.0f ? logits[out.token] : logits[out.token] / t;
      double log_sum = 0;  // log(sum(exp(logits / t - mx)))
      if (mx != kNegInf) {
        s.weights.resize(vocab);
        exp_shifted(logits, vocab, t, mx, s.weights.data());
        log_sum = std::log(row_sum(s.weights.data(), vocab));
      }
      if (want_log_prob) out.log_prob = mx == kNegInf ? kNegInf : static_cast<float>(-log_sum);
      if (want_top)  // the same terms as exp_shifted's, so the argmax's entry is log_prob exactly
        out.top = best_entries(logits, vocab, top_log_probs, [&](int32_t id) {
          if (mx == kNegInf) return kNegInf;
          const float shifted = t == 1.0f ? logits[id] - mx : logits[id] / t - mx;
          return static_cast<float>(shifted - log_sum);
        });
    }
    return out;
  }
  apply_temperature(logits, vocab, config_.temperature);
  const float mx = row_max(logits, vocab);
  if (mx == kNegInf) {  // everything banned
    out.token = 0;
    out.log_prob = kNegInf;
    if (want_top) out.top = best_entries(logits, vocab, top_log_probs, [](int32_t) { return kNegInf; });
    return out;
  }
  // The whole row's weights serve the log-prob and, without top-k, top-p and the draw; with a top-k and no
  // log-prob asked, only the k candidates are weighed.
  const bool full_weights = want_log_prob || want_top || !(config_.top_k > 0 && config_.top_k < vocab);
  if (full_weights) {
    s.weights.resize(vocab);
    exp_shifted(logits, vocab, 1.0f, mx, s.weights.data());
  }
  double lse = 0;
  if (want_log_prob || want_top) lse = mx + std::log(row_sum(s.weights.data(), vocab));  // before truncation
  if (want_top)  // before truncation too, from the same lse: the drawn token's entry equals its log_prob
    out.top = best_entries(logits, vocab, top_log_probs,
                           [&](int32_t id) { return static_cast<float>(logits[id] - lse); });
  const Kept kept = truncate(logits, vocab, config_.top_k, top_p_, mx, full_weights);
  out.token = draw(logits, vocab, kept, mx, philox_uniform(seed_, step_));
  if (want_log_prob) out.log_prob = static_cast<float>(logits[out.token] - lse);
  return out;
}

void TokenSampler::advance(int32_t token) {
  ++step_;
  if (config_.top_p_decay != 1.0f && config_.top_p > 0.0f)
    top_p_ = std::max(top_p_ * config_.top_p_decay, config_.top_p_min);
  if (config_.top_p_reset_id && *config_.top_p_reset_id == token) top_p_ = config_.top_p;
}

}  // namespace kiln
