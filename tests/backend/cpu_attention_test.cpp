// The fast paged attention (AVX-512 and generic kernels) against the straightforward reference, on
// random data: KV cache types, head sizes, GQA/MQA, sliding windows, mixed prefill chunks and decode
// tokens in one batch, small and large KV blocks, scattered block tables, split key ranges.
// Also the vector exp and silu_mul.
#include "backend/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/vec.h"
#include "backend/attention_cases.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace kiln::cpu {
namespace {

bool have_avx512() {
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.avx512bw && f.avx512vl;
}

std::vector<const char*> isas() {
  std::vector<const char*> out{"generic"};
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) out.push_back("avx2");
  if (have_avx512()) out.push_back("avx512");
  return out;
}

using test::describe;
using test::SeqSpec;
using Case = test::AttentionCase;

// Random KV pool, sequences with scattered block tables, random q; checks every ISA's fast kernel
// against the reference on `pools`.
void check_case(const Case& c, const std::vector<SeqSpec>& specs, const std::vector<ThreadPool*>& pools,
                uint32_t seed) {
  SCOPED_TRACE(describe(c));
  std::mt19937 rng(seed);
  const int d = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, bs = c.block_size;

  int64_t total_blocks = 3;  // a few unused ones
  for (const SeqSpec& s : specs) total_blocks += (s.context_len + bs - 1) / bs;
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);

  const Shape pool_shape{total_blocks, KVH, bs, d};
  HostBuffer kbuf(static_cast<size_t>(pool_shape.numel()) * dtype_size(c.dtype));
  HostBuffer vbuf(static_cast<size_t>(pool_shape.numel()) * dtype_size(c.dtype));
  {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> tmp(static_cast<size_t>(pool_shape.numel()));
    for (auto& x : tmp) x = nd(rng);
    ASSERT_TRUE(convert_floats(tmp.data(), DType::kF32, kbuf.data(), c.dtype, tmp.size()));
    for (auto& x : tmp) x = nd(rng);
    ASSERT_TRUE(convert_floats(tmp.data(), DType::kF32, vbuf.data(), c.dtype, tmp.size()));
  }
  KvLayer kv{kbuf.view(c.dtype, pool_shape), vbuf.view(c.dtype, pool_shape)};

  AttentionBatch batch;
  batch.block_size = bs;
  std::vector<std::vector<int32_t>> tables;
  tables.reserve(specs.size());
  size_t next_block = 0;
  for (const SeqSpec& s : specs) {
    const int32_t nb = (s.context_len + bs - 1) / bs;
    tables.emplace_back(ids.begin() + next_block, ids.begin() + next_block + nb);
    next_block += nb;
    SequenceView v;
    v.first_token = batch.num_tokens;
    v.num_new = s.num_new;
    v.context_len = s.context_len;
    v.block_table = tables.back();
    batch.seqs.push_back(v);
    batch.num_tokens += s.num_new;
  }

  const int64_t T = batch.num_tokens;
  HostBuffer qbuf(static_cast<size_t>(T) * H * d * sizeof(float));
  Tensor q = qbuf.view(DType::kF32, {T, static_cast<int64_t>(H) * d});
  {
    // Large enough that softmax is far from uniform.
    std::normal_distribution<float> nd(0.0f, 2.0f);
    for (int64_t i = 0; i < q.numel(); ++i) q.as<float>()[i] = nd(rng);
  }
  AttentionParams params{H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), c.window};

  HostBuffer ref_buf(q.nbytes()), out_buf(q.nbytes());
  Tensor ref = ref_buf.view(DType::kF32, q.shape), out = out_buf.view(DType::kF32, q.shape);
  paged_attention_reference(q, kv, batch, params, ref, *pools[0]);
  float scale = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::fabs(ref.as<float>()[i]));
  ASSERT_GT(scale, 0.0f);

  const std::vector<const char*> all_isas = isas();
  for (const char* isa : all_isas) {
    for (ThreadPool* pool : pools) {
      // The driver (tiling, scheduling, splitting) is the same for every ISA: the slower ISAs run on
      // one pool only.
      if (isa != all_isas.back() && pool != pools.back()) continue;
      SCOPED_TRACE(std::string(isa) + " threads=" + std::to_string(pool->num_threads()));
      std::fill_n(out.as<float>(), out.numel(), std::nanf(""));
      paged_attention_for_isa(isa, q, kv, batch, params, out, *pool);
      double worst = 0;
      int64_t worst_i = 0;
      for (int64_t i = 0; i < out.numel(); ++i) {
        const double e = std::fabs(static_cast<double>(out.as<float>()[i]) - ref.as<float>()[i]);
        if (!(e <= worst)) {  // also catches NaN
          worst = std::isnan(e) ? INFINITY : e;
          worst_i = i;
        }
      }
      EXPECT_LT(worst / scale, 1e-5) << "at token " << worst_i / (H * d) << " head " << worst_i % (H * d) / d
                                     << " dim " << worst_i % d << ": " << out.as<float>()[worst_i] << " vs "
                                     << ref.as<float>()[worst_i];
    }
  }
  // The default entry point (best ISA) too.
  std::fill_n(out.as<float>(), out.numel(), std::nanf(""));
  paged_attention(q, kv, batch, params, out, *pools.back());
  for (int64_t i = 0; i < out.numel(); ++i)
    ASSERT_LT(std::fabs(out.as<float>()[i] - ref.as<float>()[i]) / scale, 1e-5) << "paged_attention at " << i;
}

// A prefill chunk that starts mid-sequence, decode tokens, a fresh prompt, a first-token decode.
const std::vector<SeqSpec> kMixed{{37, 87}, {1, 130}, {20, 20}, {1, 1}, {5, 69}};

TEST(CpuAttention, FastMatchesReference) {
  ThreadPool one(1), two(2), three(3);
  const std::vector<ThreadPool*> pools{&one, &two, &three};
  uint32_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16})
    for (int d : {16, 48, 64, 128, 256})
      for (auto [h, kvh] : std::vector<std::pair<int, int>>{{4, 4}, {9, 3}, {8, 2}, {8, 1}})
        for (int32_t window : {0, 5, 24})
          for (int bs : {16, 64}) check_case({dtype, d, h, kvh, window, bs}, kMixed, pools, seed++);
}

TEST(CpuAttention, OddHeadDims) {
  ThreadPool one(1), two(2);
  uint32_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kBF16})
    for (int d : {2, 18, 40, 80, 96, 200})
      for (int32_t window : {0, 24}) check_case({dtype, d, 6, 2, window, 16}, kMixed, {&one, &two}, seed++);
}

TEST(CpuAttention, LongPrefill) {
  // Many tiles per kv head (and more than one chunk of keys per tile).
  ThreadPool one(1), two(2);
  check_case({DType::kBF16, 64, 9, 3, 0, 64}, {{300, 300}}, {&one, &two}, 7);
  check_case({DType::kF16, 128, 8, 2, 100, 16}, {{200, 260}, {1, 400}}, {&one, &two}, 8);
}

TEST(CpuAttention, DecodeSplitsLongContexts) {
  // Few work items (batch-1 and batch-2 decode), so key ranges are split across threads and merged.
  ThreadPool one(1), two(2), three(3), four(4);
  const std::vector<ThreadPool*> pools{&one, &two, &three, &four};
  uint32_t seed = 200;
  for (DType dtype : {DType::kF32, DType::kBF16})
    for (int32_t window : {0, 5, 300}) {
      check_case({dtype, 64, 9, 3, window, 64}, {{1, 700}}, pools, seed++);
      check_case({dtype, 128, 8, 8, window, 16}, {{1, 2000}}, pools, seed++);
      check_case({dtype, 64, 8, 1, window, 16}, {{1, 513}, {1, 64}}, pools, seed++);
      check_case({dtype, 64, 9, 3, window, 64}, {{3, 900}}, pools, seed++);  // a short chunk at long context
    }
}

TEST(CpuVec, ExpMatchesStdExp) {
  std::mt19937 rng(3);
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  std::uniform_real_distribution<float> ud(-87.0f, 88.0f);
  for (int i = 0; i < 100000; ++i) x.push_back(ud(rng));
  for (float v : {0.0f, -0.0f, 1e-8f, -1e-8f, 0.34657359f, -0.34657359f, 1.0f, -1.0f, 88.5f, 88.7f})
    x.push_back(v);
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    const VecOps& ops = vec_ops_for(isa);
    SCOPED_TRACE(ops.isa);
    for (size_t n : {x.size(), size_t{1}, size_t{7}, size_t{17}}) {  // also the masked tails
      std::vector<float> y(n);
      ops.exp(x.data(), y.data(), static_cast<int64_t>(n));
      double worst = 0;
      for (size_t i = 0; i < n; ++i) {
        const double ref = std::exp(static_cast<double>(x[i]));
        worst = std::max(worst, std::fabs(y[i] - ref) / ref);
      }
      EXPECT_LT(worst, 2e-7);
    }
    const float special[] = {-INFINITY, INFINITY, -1000.0f, 1000.0f, -104.0f, 89.0f, -88.0f, -100.0f};
    float out[8];
    ops.exp(special, out, 8);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_EQ(out[1], INFINITY);
    EXPECT_EQ(out[2], 0.0f);
    EXPECT_EQ(out[3], INFINITY);
    EXPECT_LT(out[4], 1e-44f);
    EXPECT_EQ(out[5], INFINITY);
    EXPECT_NEAR(out[6], std::exp(-88.0), 1e-44);  // subnormal results
    EXPECT_NEAR(out[7], std::exp(-100.0), 2e-45);
    float nan_in = std::nanf(""), nan_out = 0;
    ops.exp(&nan_in, &nan_out, 1);
    EXPECT_TRUE(std::isnan(nan_out));
    // In place.
    std::vector<float> y(x.begin(), x.begin() + 1000);
    ops.exp(y.data(), y.data(), static_cast<int64_t>(y.size()));
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], std::exp(static_cast<double>(x[i])), 2e-7 * std::exp(x[i]));
  }
}

TEST(CpuVec, SiluMul) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    const VecOps& ops = vec_ops_for(isa);
    SCOPED_TRACE(ops.isa);
    for (int64_t n : {1, 15, 16, 33, 1536}) {
      std::vector<float> g(n), u(n), o(n);
      for (auto& v : g) v = nd(rng);
      for (auto& v : u) v = nd(rng);
      if (n > 10) {
        g[0] = -200.0f;  // exp(-g) overflows: silu -> -0
        g[1] = 200.0f;
        g[2] = 0.0f;
      }
      ops.silu_mul(g.data(), u.data(), o.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double gd = g[i];
        const double ref = gd / (1.0 + std::exp(-gd)) * u[i];
        ASSERT_NEAR(o[i], ref, 1e-6 * std::max(1.0, std::fabs(ref))) << "n=" << n << " i=" << i << " g=" << g[i];
      }
    }
  }
}

}  // namespace
}  // namespace kiln::cpu
