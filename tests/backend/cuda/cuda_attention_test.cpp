// kiln::cuda::paged_attention against the CPU reference (kiln::cpu::paged_attention_reference) on random
// data: decode batches (split-KV, long contexts), prefill and chunked prefill, mixed batches, GQA ratios,
// head dims, sliding windows, block sizes 16 and 64, f32 / f16 / bf16. The reference runs on the same
// rounded inputs (q rounded to the activation type and back; the very same K/V pool bytes).
// Poison everywhere the kernel must not look: unused KV blocks, rows past each sequence's context, padding
// block-table entries, the output (and a guard after it) and the workspace. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/attention_cases.h"
#include "backend/cpu/attention.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace kiln::cuda {
namespace {

std::string cuda_err(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

#define CUDA_ASSERT(call)                                                       \
  do {                                                                          \
    const cudaError_t kiln_e_ = (call);                                         \
    ASSERT_EQ(kiln_e_, cudaSuccess) << #call << " -> " << cuda_err(kiln_e_);    \
  } while (0)

#define SKIP_WITHOUT_GPU()                                                   \
  do {                                                                       \
    int kiln_n_ = 0;                                                         \
    const cudaError_t kiln_e_ = cudaGetDeviceCount(&kiln_n_);                \
    if (kiln_e_ != cudaSuccess || kiln_n_ == 0) {                            \
      (void)cudaGetLastError();                                              \
      GTEST_SKIP() << "no CUDA device (" << cuda_err(kiln_e_) << ")";        \
    }                                                                        \
  } while (0)

// Device memory freed (and the free checked) at scope exit.
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() {
    if (p) {
      EXPECT_EQ(cudaFree(p), cudaSuccess);
    }
  }
};
// Allocates and (when src) uploads.
#define DEV_ALLOC(mem, n, src)                                                           \
  do {                                                                                   \
    (mem).bytes = (n);                                                                   \
    CUDA_ASSERT(cudaMalloc(&(mem).p, std::max<size_t>((mem).bytes, 16)));                \
    if (src) CUDA_ASSERT(cudaMemcpy((mem).p, (src), (mem).bytes, cudaMemcpyHostToDevice)); \
  } while (0)

struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() {
    if (s) {
      EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
    }
  }
};

ThreadPool& ref_pool() {
  static ThreadPool pool(0);
  return pool;
}

using test::describe;
using test::SeqSpec;
using Case = test::AttentionCase;

std::string describe(const std::vector<SeqSpec>& specs) {
  std::string s = "seqs (new/context):";
  for (const SeqSpec& x : specs) s += " " + std::to_string(x.num_new) + "/" + std::to_string(x.context_len);
  return s;
}

double tolerance(DType t) { return t == DType::kF32 ? 1e-4 : t == DType::kF16 ? 5e-3 : 2e-2; }

// Fast uniform-ish random floats (the pools can be tens of millions of elements).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  // Sum of two uniforms in [-a, a]: triangular, mean 0, never exactly 0 in practice.
  float sym(float a) {
    const float u = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);
    const float v = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);
    return (u + v - 1.0f) * a;
  }
};

// Builds the batch, runs both implementations and compares. q std ~ 2 so that softmax is far from uniform.
void check_case(const Case& c, const std::vector<SeqSpec>& specs, uint32_t seed) {
  SCOPED_TRACE(describe(c) + " " + describe(specs));
  std::mt19937 rng(seed);
  Rng frng(seed);
  const int d = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, bs = c.block_size;
  const size_t esize = dtype_size(c.dtype);

  // Pool with 3 unused blocks; every sequence's blocks scattered over it.
  int64_t total_blocks = 3;
  int32_t max_blocks = 0, max_ctx = 0, max_new = 0;
  for (const SeqSpec& s : specs) {
    const int32_t nb = (s.context_len + bs - 1) / bs;
    total_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
    max_ctx = std::max(max_ctx, s.context_len);
    max_new = std::max(max_new, s.num_new);
  }
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);

  // Per-sequence block tables, padded with ids far out of range (a read of one faults).
  const int32_t mbps = max_blocks + 2;
  std::vector<int32_t> tables(static_cast<size_t>(specs.size()) * mbps, 1 << 29);
  std::vector<std::vector<int32_t>> host_tables;
  host_tables.reserve(specs.size());
  std::vector<bool> used(total_blocks, false);
  size_t next_block = 0;
  AttentionBatch batch;
  batch.block_size = bs;
  std::vector<int32_t> token_seq, token_pos, seq_first, seq_new, seq_ctx;
  for (size_t si = 0; si < specs.size(); ++si) {
    const SeqSpec& s = specs[si];
    const int32_t nb = (s.context_len + bs - 1) / bs;
    host_tables.emplace_back(ids.begin() + next_block, ids.begin() + next_block + nb);
    next_block += nb;
    std::copy(host_tables.back().begin(), host_tables.back().end(), tables.begin() + si * mbps);
    SequenceView v;
    v.first_token = batch.num_tokens;
    v.num_new = s.num_new;
    v.context_len = s.context_len;
    v.block_table = host_tables.back();
    batch.seqs.push_back(v);
    seq_first.push_back(batch.num_tokens);
    seq_new.push_back(s.num_new);
    seq_ctx.push_back(s.context_len);
    for (int32_t i = 0; i < s.num_new; ++i) {
      token_seq.push_back(static_cast<int32_t>(si));
      token_pos.push_back(s.context_len - s.num_new + i);
    }
    batch.num_tokens += s.num_new;
  }

  // K/V: random where a sequence holds a position, NaN elsewhere (unused blocks, rows past the context).
  const Shape pool_shape{total_blocks, KVH, bs, d};
  const size_t pool_n = static_cast<size_t>(pool_shape.numel());
  std::vector<bool> live_row(static_cast<size_t>(total_blocks) * bs, false);
  for (size_t si = 0; si < specs.size(); ++si)
    for (int32_t p = 0; p < specs[si].context_len; ++p) live_row[static_cast<size_t>(host_tables[si][p / bs]) * bs + p % bs] = true;
  HostBuffer kbuf(pool_n * esize), vbuf(pool_n * esize);
  {
    std::vector<float> tmp(pool_n);
    for (int kv = 0; kv < 2; ++kv) {
      for (int64_t blk = 0; blk < total_blocks; ++blk)
        for (int g = 0; g < KVH; ++g)
          for (int r = 0; r < bs; ++r) {
            float* row = tmp.data() + ((blk * KVH + g) * bs + r) * d;
            const bool live = live_row[static_cast<size_t>(blk) * bs + r];
            for (int e = 0; e < d; ++e) row[e] = live ? frng.sym(1.7f) : std::nanf("");
          }
      ASSERT_TRUE(convert_floats(tmp.data(), DType::kF32, (kv ? vbuf : kbuf).data(), c.dtype, pool_n));
    }
  }
  KvLayer kv_host{kbuf.view(c.dtype, pool_shape), vbuf.view(c.dtype, pool_shape)};

  // q in the activation type, and the same values widened back for the reference.
  const int64_t T = batch.num_tokens;
  const size_t qn = static_cast<size_t>(T) * H * d;
  std::vector<float> qf(qn);
  for (auto& x : qf) x = frng.sym(3.4f);
  std::vector<uint8_t> q_act(qn * esize);
  ASSERT_TRUE(convert_floats(qf.data(), DType::kF32, q_act.data(), c.dtype, qn));
  ASSERT_TRUE(convert_floats(q_act.data(), c.dtype, qf.data(), DType::kF32, qn));

  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  ::kiln::AttentionParams cparams{H, KVH, d, scale, c.window};
  HostBuffer ref_buf(qn * sizeof(float)), qref_buf(qn * sizeof(float));
  std::memcpy(qref_buf.data(), qf.data(), qn * sizeof(float));
  Tensor qref = qref_buf.view(DType::kF32, {T, static_cast<int64_t>(H) * d});
  Tensor ref = ref_buf.view(DType::kF32, qref.shape);
  cpu::paged_attention_reference(qref, kv_host, batch, cparams, ref, ref_pool());

  // Device side.
  DevMem dk, dv, dq, dout, dws, d_tseq, d_tpos, d_first, d_new, d_ctx, d_tables;
  DEV_ALLOC(dk, pool_n * esize, kbuf.data());
  DEV_ALLOC(dv, pool_n * esize, vbuf.data());
  DEV_ALLOC(dq, qn * esize, q_act.data());
  constexpr size_t kGuard = 4096;  // bytes after the output that must stay untouched
  DEV_ALLOC(dout, qn * esize + kGuard, static_cast<const void*>(nullptr));
  CUDA_ASSERT(cudaMemset(dout.p, 0xFF, dout.bytes));  // NaN in every float type
  DEV_ALLOC(d_tseq, token_seq.size() * 4, token_seq.data());
  DEV_ALLOC(d_tpos, token_pos.size() * 4, token_pos.data());
  DEV_ALLOC(d_first, seq_first.size() * 4, seq_first.data());
  DEV_ALLOC(d_new, seq_new.size() * 4, seq_new.data());
  DEV_ALLOC(d_ctx, seq_ctx.size() * 4, seq_ctx.data());
  DEV_ALLOC(d_tables, tables.size() * 4, tables.data());

  AttentionParams p{H, KVH, d, scale, c.window};
  const size_t ws_bytes = attention_workspace_bytes(p, static_cast<int32_t>(T), max_ctx);
  DEV_ALLOC(dws, ws_bytes, static_cast<const void*>(nullptr));
  CUDA_ASSERT(cudaMemset(dws.p, 0xFF, std::max<size_t>(ws_bytes, 16)));

  DeviceBatch b;
  b.num_tokens = static_cast<int32_t>(T);
  b.num_seqs = static_cast<int32_t>(specs.size());
  b.block_size = bs;
  b.max_blocks_per_seq = mbps;
  b.max_context_len = max_ctx;
  b.max_num_new = max_new;
  b.token_seq = static_cast<const int32_t*>(d_tseq.p);
  b.token_pos = static_cast<const int32_t*>(d_tpos.p);
  b.seq_first_token = static_cast<const int32_t*>(d_first.p);
  b.seq_num_new = static_cast<const int32_t*>(d_new.p);
  b.seq_context_len = static_cast<const int32_t*>(d_ctx.p);
  b.block_tables = static_cast<const int32_t*>(d_tables.p);
  DeviceKv kv;
  kv.k = dk.p;
  kv.v = dv.p;
  kv.dtype = c.dtype;
  kv.num_blocks = static_cast<int32_t>(total_blocks);
  kv.num_kv_heads = KVH;
  kv.head_dim = d;

  // The batch's split into prefill sequences and decode tokens (as the backend passes it): the second pass.
  std::vector<int32_t> prefill_seqs, decode_tokens;
  for (size_t si = 0; si < specs.size(); ++si) {
    if (specs[si].num_new > kAttentionDecodeMaxNew) prefill_seqs.push_back(static_cast<int32_t>(si));
    else
      for (int32_t i = 0; i < specs[si].num_new; ++i) decode_tokens.push_back(seq_first[si] + i);
  }
  DevMem d_pseqs, d_dtoks;
  DEV_ALLOC(d_pseqs, std::max<size_t>(prefill_seqs.size(), 1) * 4, prefill_seqs.empty() ? nullptr : prefill_seqs.data());
  DEV_ALLOC(d_dtoks, std::max<size_t>(decode_tokens.size(), 1) * 4, decode_tokens.empty() ? nullptr : decode_tokens.data());
  for (int pass = 0; pass < (prefill_seqs.empty() ? 1 : 2); ++pass) {
  SCOPED_TRACE(pass ? "with the prefill/decode split" : "without the split");
  if (pass == 1) {
    b.prefill_seqs = static_cast<const int32_t*>(d_pseqs.p);
    b.decode_tokens = static_cast<const int32_t*>(d_dtoks.p);
    b.num_prefill_seqs = static_cast<int32_t>(prefill_seqs.size());
    b.num_decode_tokens = static_cast<int32_t>(decode_tokens.size());
    for (size_t si = 0; si < specs.size(); ++si)
      if (specs[si].num_new > kAttentionDecodeMaxNew) b.max_prefill_new = std::max(b.max_prefill_new, specs[si].num_new);
    CUDA_ASSERT(cudaMemset(dout.p, 0xFF, dout.bytes));
  }
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  paged_attention(dq.p, c.dtype, kv, b, p, dout.p, dws.p, ws_bytes, stream.s);
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));

  std::vector<uint8_t> out_raw(dout.bytes);
  CUDA_ASSERT(cudaMemcpy(out_raw.data(), dout.p, dout.bytes, cudaMemcpyDeviceToHost));
  for (size_t i = qn * esize; i < out_raw.size(); ++i)
    ASSERT_EQ(out_raw[i], 0xFF) << "write past the end of the output, byte " << i - qn * esize;
  std::vector<float> out(qn);
  ASSERT_TRUE(convert_floats(out_raw.data(), c.dtype, out.data(), DType::kF32, qn));

  double err2 = 0, ref2 = 0, worst = 0;
  int64_t worst_i = 0, first_bad = -1, bad = 0;
  const float* r = ref.as<float>();
  for (size_t i = 0; i < qn; ++i) {
    if (!std::isfinite(out[i])) {
      if (bad++ == 0) first_bad = static_cast<int64_t>(i);
      continue;
    }
    const double e = static_cast<double>(out[i]) - r[i];
    err2 += e * e;
    ref2 += static_cast<double>(r[i]) * r[i];
    if (std::fabs(e) > worst) {
      worst = std::fabs(e);
      worst_i = static_cast<int64_t>(i);
    }
  }
  ASSERT_GT(ref2, 0.0);
  const double rel = std::sqrt(err2 / ref2);
  const auto where = [&](int64_t i) {
    return "token " + std::to_string(i / (H * d)) + " head " + std::to_string(i % (H * d) / d) + " dim " +
           std::to_string(i % d) + ": " + std::to_string(out[i]) + " vs " + std::to_string(r[i]);
  };
  ASSERT_EQ(bad, 0) << bad << " non-finite outputs (unwritten or NaN), first at " << where(first_bad);
  EXPECT_LT(rel, tolerance(c.dtype)) << "relative L2 error " << rel << "; max abs error " << worst << " at "
                                     << where(worst_i);
  }
}

const std::vector<std::pair<int, int>> kGqa{{4, 4}, {8, 4}, {8, 2}, {16, 2}};  // ratios 1, 2, 4, 8
const std::vector<DType> kDtypes{DType::kF32, DType::kF16, DType::kBF16};
const std::vector<int> kHeadDims{16, 32, 64, 96, 128, 256};
const std::vector<int32_t> kWindows{0, 24, 100};

// Decode: one new token per sequence, contexts from 1 to 5000.
const std::vector<SeqSpec> kDecode{{1, 1}, {1, 17}, {1, 64}, {1, 65}, {1, 300}, {1, 2049}, {1, 5000}};

TEST(CudaAttention, DecodeMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (DType dt : kDtypes)
    for (int d : kHeadDims)
      for (auto [h, kvh] : kGqa)
        for (int32_t w : kWindows) {
          const int bs = seed % 2 ? 16 : 64;
          check_case({dt, d, h, kvh, w, bs}, kDecode, seed++);
          if (HasFatalFailure()) return;
        }
}

TEST(CudaAttention, DecodeSplitsLongContexts) {
  // Batch 1 and 2: the key range is split over many CTAs and combined.
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1000;
  for (DType dt : kDtypes)
    for (int bs : {16, 64})
      for (int32_t w : {0, 100, 3000}) {
        check_case({dt, 128, 32, 8, w, bs}, {{1, 5000}}, seed++);
        check_case({dt, 64, 8, 1, w, bs}, {{1, 4097}, {1, 3}}, seed++);
        check_case({dt, 128, 8, 8, w, bs}, {{1, 129}, {1, 2500}}, seed++);
        if (HasFatalFailure()) return;
      }
}

TEST(CudaAttention, DecodeOddGroups) {
  // Query heads per kv head not a power of two, and above 8 (several CTAs per kv head).
  SKIP_WITHOUT_GPU();
  uint32_t seed = 2000;
  for (DType dt : kDtypes)
    for (auto [h, kvh] : std::vector<std::pair<int, int>>{{9, 3}, {6, 1}, {32, 2}, {24, 2}, {64, 4}, {34, 2}}) {
      check_case({dt, 64, h, kvh, 0, 16}, kDecode, seed++);
      check_case({dt, 128, h, kvh, 24, 64}, {{1, 700}, {3, 40}}, seed++);
      if (HasFatalFailure()) return;
    }
}

TEST(CudaAttention, DecodeSmallBlocks) {
  // KV blocks smaller than the decode kernel's 16-key tiles (a tile spans several blocks).
  SKIP_WITHOUT_GPU();
  uint32_t seed = 2500;
  for (DType dt : kDtypes)
    for (int bs : {1, 4, 8})
      for (int32_t w : {0, 24}) {
        check_case({dt, 96, 8, 2, w, bs}, {{1, 300}, {1, 1000}, {2, 37}, {1, 5}}, seed++);
        if (HasFatalFailure()) return;
      }
}

TEST(CudaAttention, FewNewTokensPerSequence) {
  // Up to 4 new tokens per sequence (speculative verify, short chunks): still the decode kernel.
  SKIP_WITHOUT_GPU();
  uint32_t seed = 3000;
  for (DType dt : kDtypes)
    for (int d : {64, 128})
      for (int32_t w : kWindows) {
        check_case({dt, d, 8, 2, w, 16}, {{3, 900}, {4, 4}, {2, 100}, {1, 1}, {4, 64}}, seed++);
        if (HasFatalFailure()) return;
      }
}

// Prefill: fresh prompts and chunks that start mid-sequence (prior context).
const std::vector<SeqSpec> kPrefill{{300, 300}, {5, 5}, {64, 64}, {65, 200}, {17, 1000}, {128, 129}};

TEST(CudaAttention, PrefillMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 4000;
  for (DType dt : kDtypes)
    for (int d : kHeadDims)
      for (auto [h, kvh] : kGqa) {
        const int32_t w = kWindows[seed % 3];
        const int bs = seed % 2 ? 16 : 64;
        check_case({dt, d, h, kvh, w, bs}, kPrefill, seed++);
        if (HasFatalFailure()) return;
      }
}

TEST(CudaAttention, PrefillWindows) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 5000;
  for (DType dt : kDtypes)
    for (int32_t w : {1, 24, 64, 65, 100, 299, 300})
      for (int bs : {16, 64}) {
        check_case({dt, 128, 8, 2, w, bs}, {{300, 300}, {100, 250}}, seed++);
        check_case({dt, 64, 4, 4, w, bs}, {{1, 1}, {250, 1000}}, seed++);
        if (HasFatalFailure()) return;
      }
}

TEST(CudaAttention, MixedBatches) {
  // Decode sequences and prefill chunks in one batch (prefill kernel for 16-bit types).
  SKIP_WITHOUT_GPU();
  const std::vector<SeqSpec> mixed{{37, 87}, {1, 130}, {20, 20}, {1, 1}, {5, 69}, {1, 3000}, {150, 150}, {4, 4000}};
  uint32_t seed = 6000;
  for (DType dt : kDtypes)
    for (int d : {64, 128, 256})
      for (auto [h, kvh] : kGqa)
        for (int32_t w : kWindows) {
          const int bs = seed % 2 ? 16 : 64;
          check_case({dt, d, h, kvh, w, bs}, mixed, seed++);
          if (HasFatalFailure()) return;
        }
}

TEST(CudaAttention, F32OddHeadDims) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 7000;
  for (int d : {2, 8, 18, 40, 80, 200, 252})
    for (int32_t w : {0, 24}) {
      check_case({DType::kF32, d, 6, 2, w, 16}, {{37, 87}, {1, 130}, {20, 20}, {1, 1}, {1, 600}}, seed++);
      check_case({DType::kF32, d, 8, 1, w, 64}, kDecode, seed++);
      if (HasFatalFailure()) return;
    }
}

// ---------------------------------------------------------------- timing (printed, not checked)

struct TimedBatch {
  DevMem k, v, q, out, ws, tseq, tpos, first, nnew, ctx, tables;
  DeviceBatch b;
  DeviceKv kv;
  AttentionParams p;
  size_t ws_bytes = 0;
};

// Sequences of `num_new` new tokens at context `ctx` each; K/V filled with a repeated random pattern.
void build_timed(TimedBatch& t, int num_seqs, int num_new, int ctx, int H, int KVH, int d, int bs, DType dt) {
  const size_t esize = dtype_size(dt);
  const int nb = (ctx + bs - 1) / bs;
  const int64_t total_blocks = static_cast<int64_t>(num_seqs) * nb;
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(5);
  std::shuffle(ids.begin(), ids.end(), rng);
  const size_t pool_bytes = static_cast<size_t>(total_blocks) * KVH * bs * d * esize;
  DEV_ALLOC(t.k, pool_bytes, static_cast<const void*>(nullptr));
  DEV_ALLOC(t.v, pool_bytes, static_cast<const void*>(nullptr));
  {
    const size_t pat_n = 1 << 20;
    std::vector<float> f(pat_n);
    Rng frng(9);
    for (auto& x : f) x = frng.sym(1.7f);
    std::vector<uint8_t> pat(pat_n * esize);
    ASSERT_TRUE(convert_floats(f.data(), DType::kF32, pat.data(), dt, pat_n));
    for (size_t off = 0; off < pool_bytes; off += pat.size()) {
      const size_t n = std::min(pat.size(), pool_bytes - off);
      CUDA_ASSERT(cudaMemcpy(static_cast<char*>(t.k.p) + off, pat.data(), n, cudaMemcpyHostToDevice));
      CUDA_ASSERT(cudaMemcpy(static_cast<char*>(t.v.p) + off, pat.data() + (pat.size() - n), n,
                             cudaMemcpyHostToDevice));
    }
    const size_t qn = static_cast<size_t>(num_seqs) * num_new * H * d;
    std::vector<float> qf(qn);
    for (auto& x : qf) x = frng.sym(3.4f);
    std::vector<uint8_t> qa(qn * esize);
    ASSERT_TRUE(convert_floats(qf.data(), DType::kF32, qa.data(), dt, qn));
    DEV_ALLOC(t.q, qa.size(), qa.data());
    DEV_ALLOC(t.out, qa.size(), static_cast<const void*>(nullptr));
  }
  std::vector<int32_t> tseq, tpos, first, nnew, cl;
  for (int s = 0; s < num_seqs; ++s) {
    first.push_back(s * num_new);
    nnew.push_back(num_new);
    cl.push_back(ctx);
    for (int i = 0; i < num_new; ++i) {
      tseq.push_back(s);
      tpos.push_back(ctx - num_new + i);
    }
  }
  DEV_ALLOC(t.tseq, tseq.size() * 4, tseq.data());
  DEV_ALLOC(t.tpos, tpos.size() * 4, tpos.data());
  DEV_ALLOC(t.first, first.size() * 4, first.data());
  DEV_ALLOC(t.nnew, nnew.size() * 4, nnew.data());
  DEV_ALLOC(t.ctx, cl.size() * 4, cl.data());
  DEV_ALLOC(t.tables, ids.size() * 4, ids.data());
  t.b.num_tokens = num_seqs * num_new;
  t.b.num_seqs = num_seqs;
  t.b.block_size = bs;
  t.b.max_blocks_per_seq = nb;
  t.b.max_context_len = ctx;
  t.b.max_num_new = num_new;
  t.b.token_seq = static_cast<const int32_t*>(t.tseq.p);
  t.b.token_pos = static_cast<const int32_t*>(t.tpos.p);
  t.b.seq_first_token = static_cast<const int32_t*>(t.first.p);
  t.b.seq_num_new = static_cast<const int32_t*>(t.nnew.p);
  t.b.seq_context_len = static_cast<const int32_t*>(t.ctx.p);
  t.b.block_tables = static_cast<const int32_t*>(t.tables.p);
  t.kv.k = t.k.p;
  t.kv.v = t.v.p;
  t.kv.dtype = dt;
  t.kv.num_blocks = static_cast<int32_t>(total_blocks);
  t.kv.num_kv_heads = KVH;
  t.kv.head_dim = d;
  t.p = AttentionParams{H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), 0};
  t.ws_bytes = attention_workspace_bytes(t.p, t.b.num_tokens, ctx);
  DEV_ALLOC(t.ws, t.ws_bytes, static_cast<const void*>(nullptr));
}

// Mean milliseconds per call over `reps` after warm-up: *ms_out with the calls captured in a CUDA graph (as the
// backend runs decode steps: no host launch cost), *ms_stream (optional) launched one by one on a stream.
void time_batch(TimedBatch& t, DType dt, int reps, float* ms_out, float* ms_stream = nullptr) {
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CUDA_ASSERT(cudaEventCreate(&e0));
  CUDA_ASSERT(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) paged_attention(t.q.p, dt, t.kv, t.b, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s);
  float ms = 0;
  if (ms_stream) {
    CUDA_ASSERT(cudaEventRecord(e0, stream.s));
    for (int i = 0; i < reps; ++i) paged_attention(t.q.p, dt, t.kv, t.b, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s);
    CUDA_ASSERT(cudaEventRecord(e1, stream.s));
    CUDA_ASSERT(cudaEventSynchronize(e1));
    CUDA_ASSERT(cudaGetLastError());
    CUDA_ASSERT(cudaEventElapsedTime(&ms, e0, e1));
    *ms_stream = ms / reps;
  }
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_ASSERT(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeRelaxed));
  for (int i = 0; i < reps; ++i) paged_attention(t.q.p, dt, t.kv, t.b, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s);
  CUDA_ASSERT(cudaStreamEndCapture(stream.s, &graph));
  CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_ASSERT(cudaGraphLaunch(exec, stream.s));  // warm-up
  constexpr int kLaunches = 3;
  CUDA_ASSERT(cudaEventRecord(e0, stream.s));
  for (int i = 0; i < kLaunches; ++i) CUDA_ASSERT(cudaGraphLaunch(exec, stream.s));
  CUDA_ASSERT(cudaEventRecord(e1, stream.s));
  CUDA_ASSERT(cudaEventSynchronize(e1));
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaEventElapsedTime(&ms, e0, e1));
  *ms_out = ms / (kLaunches * reps);
  CUDA_ASSERT(cudaGraphExecDestroy(exec));
  CUDA_ASSERT(cudaGraphDestroy(graph));
  CUDA_ASSERT(cudaEventDestroy(e0));
  CUDA_ASSERT(cudaEventDestroy(e1));
}

TEST(CudaAttention, Timing) {
  SKIP_WITHOUT_GPU();
  constexpr int H = 32, KVH = 8, D = 128, kReps = 20;
  // KILN_ATTN_TIMING: "decode" times the decode cases only, "phi3" or "phi3:<context>" the batch-1 ones only.
  const char* only_env = std::getenv("KILN_ATTN_TIMING");
  const std::string only = only_env ? only_env : "";
  const bool phi3_only = only.rfind("phi3", 0) == 0;
  const int phi3_ctx = only.size() > 5 ? std::atoi(only.c_str() + 5) : 0;
  for (DType dt : {DType::kF16, DType::kBF16}) {
    if (phi3_only) break;
    {
      constexpr int S = 64, ctx = 2048;
      for (int bs : {16, 64}) {
        TimedBatch t;
        build_timed(t, S, 1, ctx, H, KVH, D, bs, dt);
        if (HasFatalFailure()) return;
        float ms = 0, ms_stream = 0;
        time_batch(t, dt, kReps, &ms, &ms_stream);
        if (HasFatalFailure()) return;
        const double bytes = 2.0 * S * ctx * KVH * D * dtype_size(dt);
        std::printf("[timing] %s decode %d seqs x %d ctx, H=%d KVH=%d D=%d block=%d: %.1f us, %.0f GB/s (K+V) in a "
                    "graph; %.1f us, %.0f GB/s launched one by one\n",
                    dtype_name(dt), S, ctx, H, KVH, D, bs, ms * 1e3, bytes / (ms * 1e-3) / 1e9, ms_stream * 1e3,
                    bytes / (ms_stream * 1e-3) / 1e9);
      }
    }
    // Prefill: Llama-3-8B's shape (2048-token prompt) and Phi-3-mini's (D=96, no GQA, 1024 tokens).
    if (only == "decode") continue;
    for (auto [T, h, kvh, d] : std::vector<std::array<int, 4>>{{2048, H, KVH, D}, {1024, 32, 32, 96}}) {
      TimedBatch t;
      build_timed(t, 1, T, T, h, kvh, d, 16, dt);
      if (HasFatalFailure()) return;
      float ms = 0;
      time_batch(t, dt, kReps, &ms);
      if (HasFatalFailure()) return;
      const double flops = 4.0 * T * T / 2 * h * d;
      std::printf("[timing] %s prefill 1 seq x %d tokens, H=%d KVH=%d D=%d: %.1f us, %.1f TFLOP/s (causal)\n",
                  dtype_name(dt), T, h, kvh, d, ms * 1e3, flops / (ms * 1e-3) / 1e12);
    }
  }
  if (!phi3_only) {
    constexpr int S = 1, ctx = 32768;
    TimedBatch t;
    build_timed(t, S, 1, ctx, H, KVH, D, 16, DType::kF16);
    if (HasFatalFailure()) return;
    float ms = 0, ms_stream = 0;
    time_batch(t, DType::kF16, kReps, &ms, &ms_stream);
    if (HasFatalFailure()) return;
    const double bytes = 2.0 * S * ctx * KVH * D * 2;
    std::printf("[timing] float16 decode 1 seq x %d ctx (split-KV), H=%d KVH=%d D=%d: %.1f us, %.0f GB/s in a graph; "
                "%.1f us, %.0f GB/s launched one by one\n",
                ctx, H, KVH, D, ms * 1e3, bytes / (ms * 1e-3) / 1e9, ms_stream * 1e3, bytes / (ms_stream * 1e-3) / 1e9);
  }
  // Batch 1 without GQA (Phi-3-mini: H = KVH = 32, D = 96, block 64), short to long contexts.
  for (int ctx : {256, 1024, 4096}) {
    if (phi3_ctx > 0 && ctx != phi3_ctx) continue;
    constexpr int h = 32, kvh = 32, d = 96, bs = 64;
    TimedBatch t;
    build_timed(t, 1, 1, ctx, h, kvh, d, bs, DType::kF16);
    if (HasFatalFailure()) return;
    float ms = 0, ms_stream = 0;
    time_batch(t, DType::kF16, 200, &ms, &ms_stream);
    if (HasFatalFailure()) return;
    const double bytes = 2.0 * ctx * kvh * d * 2;
    std::printf("[timing] float16 decode 1 seq x %d ctx, H=%d KVH=%d D=%d block=%d: %.2f us, %.0f GB/s (K+V) in a "
                "graph; %.2f us launched one by one\n",
                ctx, h, kvh, d, bs, ms * 1e3, bytes / (ms * 1e-3) / 1e9, ms_stream * 1e3);
  }
}

}  // namespace
}  // namespace kiln::cuda
