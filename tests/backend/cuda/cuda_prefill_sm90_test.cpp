// The Hopper prefill attention kernel (attention_prefill_sm90.cu) against the CPU reference
// (kiln::cpu::paged_attention_reference) and against the existing CUDA prefill path (paged_attention with the
// Hopper kernel turned off), on random data: Llama-3-8B / Phi-3-mini / head dim 64 shapes, prompts of 1 to 2048
// tokens, several sequences per batch, chunked prefill over cached tokens, sliding windows, f16 and bf16,
// shuffled physical blocks of several block sizes, and a sequence list (only the listed sequences written).
// Poison everywhere the kernel must not look: unused KV blocks and rows past each sequence's context (NaN),
// padding block-table entries (far out of range), the output. Plus CudaPrefillSm90.Timing (printed, not
// checked): new against old kernel at the Llama (4 x 2048) and Phi-3 (1 x 1024) shapes.
// Skips without a compute capability 9.0 GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/attention_cases.h"
#include "backend/cpu/attention.h"
#include "backend/cuda/attention_prefill_sm90.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "backend/cuda/cuda_kernel_test_util.h"

namespace kiln::cuda {
namespace {

using namespace kernel_test;

bool have_sm90() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return false;
  }
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

#define SKIP_WITHOUT_SM90()                                                    \
  do {                                                                         \
    if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 CUDA device"; \
  } while (0)

using test::SeqSpec;
using Case = test::AttentionCase;

double tolerance(DType t) { return t == DType::kF16 ? 5e-3 : 2e-2; }

// A batch on the host and the device: pools with 3 unused blocks, every sequence's blocks scattered.
struct Batch {
  Case c;
  std::vector<SeqSpec> specs;
  int64_t T = 0, total_blocks = 0;
  int32_t mbps = 0, max_ctx = 0, max_new = 0;
  std::vector<int32_t> token_seq, token_pos, first, nnew, ctx, tables;
  std::vector<std::vector<int32_t>> host_tables;
  std::vector<uint8_t> kbytes, vbytes, qbytes;
  DevMem dk, dv, dq, dout, dref, dws, d_tseq, d_tpos, d_first, d_new, d_ctx, d_tables;
  DeviceBatch b;
  DeviceKv kv;
  AttentionParams p;
  size_t ws_bytes = 0;
};

void build(Batch& x, const Case& c, const std::vector<SeqSpec>& specs, uint32_t seed, bool nan_poison = true) {
  x.c = c;
  x.specs = specs;
  std::mt19937 rng(seed);
  Rng frng(seed);
  const int d = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, bs = c.block_size;
  const size_t esize = dtype_size(c.dtype);
  x.total_blocks = 3;
  int32_t max_blocks = 0;
  for (const SeqSpec& s : specs) {
    const int32_t nb = (s.context_len + bs - 1) / bs;
    x.total_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
    x.max_ctx = std::max(x.max_ctx, s.context_len);
    x.max_new = std::max(x.max_new, s.num_new);
  }
  std::vector<int32_t> ids(x.total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  x.mbps = max_blocks + 2;
  x.tables.assign(specs.size() * x.mbps, 1 << 29);
  size_t next = 0;
  for (size_t si = 0; si < specs.size(); ++si) {
    const SeqSpec& s = specs[si];
    const int32_t nb = (s.context_len + bs - 1) / bs;
    x.host_tables.emplace_back(ids.begin() + next, ids.begin() + next + nb);
    next += nb;
    std::copy(x.host_tables.back().begin(), x.host_tables.back().end(), x.tables.begin() + si * x.mbps);
    x.first.push_back(static_cast<int32_t>(x.T));
    x.nnew.push_back(s.num_new);
    x.ctx.push_back(s.context_len);
    for (int32_t i = 0; i < s.num_new; ++i) {
      x.token_seq.push_back(static_cast<int32_t>(si));
      x.token_pos.push_back(s.context_len - s.num_new + i);
    }
    x.T += s.num_new;
  }
  // K/V: random where a sequence holds a position, NaN elsewhere.
  const size_t pool_n = static_cast<size_t>(x.total_blocks) * KVH * bs * d;
  std::vector<bool> live(static_cast<size_t>(x.total_blocks) * bs, false);
  for (size_t si = 0; si < specs.size(); ++si)
    for (int32_t p = 0; p < specs[si].context_len; ++p)
      live[static_cast<size_t>(x.host_tables[si][p / bs]) * bs + p % bs] = true;
  x.kbytes.resize(pool_n * esize);
  x.vbytes.resize(pool_n * esize);
  {
    std::vector<float> tmp(pool_n);
    for (int kv = 0; kv < 2; ++kv) {
      for (int64_t blk = 0; blk < x.total_blocks; ++blk)
        for (int g = 0; g < KVH; ++g)
          for (int r = 0; r < bs; ++r) {
            float* row = tmp.data() + ((blk * KVH + g) * bs + r) * d;
            const bool l = live[static_cast<size_t>(blk) * bs + r];
            for (int e = 0; e < d; ++e) row[e] = l || !nan_poison ? frng.sym(1.7f) : std::nanf("");
          }
      ASSERT_TRUE(convert_floats(tmp.data(), DType::kF32, (kv ? x.vbytes : x.kbytes).data(), c.dtype, pool_n));
    }
  }
  const size_t qn = static_cast<size_t>(x.T) * H * d;
  {
    std::vector<float> qf(qn);
    for (auto& v : qf) v = frng.sym(3.4f);
    x.qbytes.resize(qn * esize);
    ASSERT_TRUE(convert_floats(qf.data(), DType::kF32, x.qbytes.data(), c.dtype, qn));
  }
  DEV_ALLOC(x.dk, pool_n * esize, x.kbytes.data());
  DEV_ALLOC(x.dv, pool_n * esize, x.vbytes.data());
  DEV_ALLOC(x.dq, qn * esize, x.qbytes.data());
  DEV_ALLOC(x.dout, qn * esize, static_cast<const void*>(nullptr));
  DEV_ALLOC(x.dref, qn * esize, static_cast<const void*>(nullptr));
  DEV_ALLOC(x.d_tseq, x.token_seq.size() * 4, x.token_seq.data());
  DEV_ALLOC(x.d_tpos, x.token_pos.size() * 4, x.token_pos.data());
  DEV_ALLOC(x.d_first, x.first.size() * 4, x.first.data());
  DEV_ALLOC(x.d_new, x.nnew.size() * 4, x.nnew.data());
  DEV_ALLOC(x.d_ctx, x.ctx.size() * 4, x.ctx.data());
  DEV_ALLOC(x.d_tables, x.tables.size() * 4, x.tables.data());
  DeviceBatch& b = x.b;
  b.num_tokens = static_cast<int32_t>(x.T);
  b.num_seqs = static_cast<int32_t>(specs.size());
  b.block_size = bs;
  b.max_blocks_per_seq = x.mbps;
  b.max_context_len = x.max_ctx;
  b.max_num_new = x.max_new;
  b.token_seq = static_cast<const int32_t*>(x.d_tseq.p);
  b.token_pos = static_cast<const int32_t*>(x.d_tpos.p);
  b.seq_first_token = static_cast<const int32_t*>(x.d_first.p);
  b.seq_num_new = static_cast<const int32_t*>(x.d_new.p);
  b.seq_context_len = static_cast<const int32_t*>(x.d_ctx.p);
  b.block_tables = static_cast<const int32_t*>(x.d_tables.p);
  x.kv.k = x.dk.p;
  x.kv.v = x.dv.p;
  x.kv.dtype = c.dtype;
  x.kv.num_blocks = static_cast<int32_t>(x.total_blocks);
  x.kv.num_kv_heads = KVH;
  x.kv.head_dim = d;
  x.p = AttentionParams{H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), c.window};
  x.ws_bytes = attention_workspace_bytes(x.p, static_cast<int32_t>(x.T), x.max_ctx);
  DEV_ALLOC(x.dws, x.ws_bytes, static_cast<const void*>(nullptr));
}

PrefillSm90Args sm90_args(const Batch& x, void* out, const int32_t* seqs, int32_t num_seqs, int32_t max_new) {
  PrefillSm90Args a;
  a.q = x.dq.p;
  a.k = x.dk.p;
  a.v = x.dv.p;
  a.out = out;
  a.seqs = seqs;
  a.seq_first_token = x.b.seq_first_token;
  a.seq_num_new = x.b.seq_num_new;
  a.seq_context_len = x.b.seq_context_len;
  a.block_tables = x.b.block_tables;
  a.num_seqs = num_seqs;
  a.max_new = max_new;
  a.max_blocks_per_seq = x.mbps;
  a.block_size = x.c.block_size;
  a.num_heads = x.c.num_heads;
  a.num_kv_heads = x.c.num_kv_heads;
  a.head_dim = x.c.head_dim;
  a.window = x.c.window;
  a.scale = x.p.scale;
  a.bf16 = x.c.dtype == DType::kBF16;
  return a;
}

// The reference output [T, H * D] in f32: the CPU reference (cpu_ref) or the existing CUDA kernels.
void reference(Batch& x, bool cpu_ref, std::vector<float>* ref) {
  const int d = x.c.head_dim, H = x.c.num_heads;
  const size_t qn = static_cast<size_t>(x.T) * H * d;
  ref->assign(qn, 0.0f);
  if (cpu_ref) {
    AttentionBatch batch;
    batch.block_size = x.c.block_size;
    for (size_t si = 0; si < x.specs.size(); ++si) {
      SequenceView v;
      v.first_token = x.first[si];
      v.num_new = x.nnew[si];
      v.context_len = x.ctx[si];
      v.block_table = x.host_tables[si];
      batch.seqs.push_back(v);
    }
    batch.num_tokens = x.T;
    const Shape pool_shape{x.total_blocks, x.c.num_kv_heads, x.c.block_size, d};
    HostBuffer kb(x.kbytes.size()), vb(x.vbytes.size());
    std::memcpy(kb.data(), x.kbytes.data(), x.kbytes.size());
    std::memcpy(vb.data(), x.vbytes.data(), x.vbytes.size());
    KvLayer kv_host{kb.view(x.c.dtype, pool_shape), vb.view(x.c.dtype, pool_shape)};
    HostBuffer qref_buf(qn * sizeof(float)), ref_buf(qn * sizeof(float));
    ASSERT_TRUE(convert_floats(x.qbytes.data(), x.c.dtype, qref_buf.data(), DType::kF32, qn));
    Tensor qref = qref_buf.view(DType::kF32, {x.T, static_cast<int64_t>(H) * d});
    Tensor out = ref_buf.view(DType::kF32, qref.shape);
    ::kiln::AttentionParams cp{H, x.c.num_kv_heads, d, x.p.scale, x.c.window};
    cpu::paged_attention_reference(qref, kv_host, batch, cp, out, ref_pool());
    std::memcpy(ref->data(), out.as<float>(), qn * sizeof(float));
    return;
  }
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  CUDA_ASSERT(cudaMemset(x.dref.p, 0xFF, x.dref.bytes));
  prefill_sm90_set_enabled(false);  // the existing kernels, whatever paged_attention dispatches to
  paged_attention(x.dq.p, x.c.dtype, x.kv, x.b, x.p, x.dref.p, x.dws.p, x.ws_bytes, stream.s);
  prefill_sm90_set_enabled(true);
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  std::vector<uint8_t> raw(x.dref.bytes);
  CUDA_ASSERT(cudaMemcpy(raw.data(), x.dref.p, raw.size(), cudaMemcpyDeviceToHost));
  ASSERT_TRUE(convert_floats(raw.data(), x.c.dtype, ref->data(), DType::kF32, qn));
}

// Runs the new kernel over `list` (empty: every sequence, seqs = null) and compares the listed sequences'
// rows with the reference; the other rows must stay untouched.
void check(const Case& c, const std::vector<SeqSpec>& specs, uint32_t seed, bool cpu_ref,
           const std::vector<int32_t>& list = {}, bool batch_overload = false) {
  std::string lst = list.empty() ? "all" : "";
  for (int32_t s : list) lst += std::to_string(s) + " ";
  SCOPED_TRACE(test::describe(c) + " " + describe(specs) + " list: " + lst + (cpu_ref ? " (CPU ref)" : " (CUDA ref)"));
  Batch x;
  ASSERT_NO_FATAL_FAILURE(build(x, c, specs, seed));
  std::vector<float> ref;
  ASSERT_NO_FATAL_FAILURE(reference(x, cpu_ref, &ref));

  const int d = c.head_dim, H = c.num_heads;
  const size_t esize = dtype_size(c.dtype);
  const size_t qn = static_cast<size_t>(x.T) * H * d;
  DevMem dlist;
  int32_t max_new = x.max_new, nseq = static_cast<int32_t>(specs.size());
  std::vector<bool> selected(specs.size(), list.empty());
  if (!list.empty()) {
    DEV_ALLOC(dlist, list.size() * 4, list.data());
    max_new = 0;
    for (int32_t s : list) {
      selected[s] = true;
      max_new = std::max(max_new, specs[s].num_new);
    }
    nseq = static_cast<int32_t>(list.size());
  }
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  CUDA_ASSERT(cudaMemset(x.dout.p, 0xFF, x.dout.bytes));
  const int32_t* seqs = list.empty() ? nullptr : static_cast<const int32_t*>(dlist.p);
  if (batch_overload) {  // the entry point run_attention calls, from paged_attention's arguments
    ASSERT_TRUE(prefill_attention_sm90(x.dq.p, x.kv, x.b, x.p, x.dout.p, c.dtype == DType::kBF16, seqs, nseq, max_new,
                                       stream.s));
  } else {
    ASSERT_TRUE(prefill_attention_sm90(sm90_args(x, x.dout.p, seqs, nseq, max_new), stream.s));
  }
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  std::vector<uint8_t> raw(x.dout.bytes);
  CUDA_ASSERT(cudaMemcpy(raw.data(), x.dout.p, raw.size(), cudaMemcpyDeviceToHost));
  std::vector<float> out(qn);
  ASSERT_TRUE(convert_floats(raw.data(), c.dtype, out.data(), DType::kF32, qn));

  double err2 = 0, ref2 = 0, worst = 0;
  int64_t worst_i = -1, bad = 0, first_bad = -1, touched = 0;
  const size_t row = static_cast<size_t>(H) * d;
  for (int64_t t = 0; t < x.T; ++t) {
    const bool sel = selected[x.token_seq[t]];
    for (size_t e = 0; e < row; ++e) {
      const size_t i = t * row + e;
      if (!sel) {
        for (size_t b = 0; b < esize; ++b) touched += raw[i * esize + b] != 0xFF;
        continue;
      }
      if (!std::isfinite(out[i])) {
        if (bad++ == 0) first_bad = static_cast<int64_t>(i);
        continue;
      }
      const double err = static_cast<double>(out[i]) - ref[i];
      err2 += err * err;
      ref2 += static_cast<double>(ref[i]) * ref[i];
      if (std::fabs(err) > worst) {
        worst = std::fabs(err);
        worst_i = static_cast<int64_t>(i);
      }
    }
  }
  const auto where = [&](int64_t i) {
    if (i < 0) return std::string("-");
    return "token " + std::to_string(i / (H * d)) + " head " + std::to_string(i % (H * d) / d) + " dim " +
           std::to_string(i % d) + ": " + std::to_string(out[i]) + " vs " + std::to_string(ref[i]);
  };
  EXPECT_EQ(touched, 0) << "bytes written in rows of sequences not in the list";
  ASSERT_EQ(bad, 0) << bad << " non-finite outputs (unwritten or NaN), first at " << where(first_bad);
  ASSERT_GT(ref2, 0.0);
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_LT(rel, tolerance(c.dtype)) << "relative L2 error " << rel << "; max abs error " << worst << " at "
                                     << where(worst_i);
}

const std::vector<DType> kDtypes{DType::kF16, DType::kBF16};
// (head dim, H, KVH): Llama-3-8B, Phi-3-mini, head dim 64 with GQA 4, and odd / large groups.
const std::vector<std::array<int, 3>> kShapes{{128, 32, 8}, {96, 32, 32}, {64, 16, 4}};

TEST(CudaPrefillSm90, SmallPromptsMatchCpuReference) {
  SKIP_WITHOUT_SM90();
  uint32_t seed = 100;
  for (DType dt : kDtypes)
    for (auto [d, h, kvh] : kShapes) {
      check({dt, d, h, kvh, 0, 64}, {{1, 1}, {17, 17}, {64, 64}, {200, 200}}, seed++, true);
      if (HasFatalFailure()) return;
    }
}

TEST(CudaPrefillSm90, ChunkedPrefillMatchesCpuReference) {
  // New tokens after cached ones (chunked prefill, prefix reuse), several block sizes.
  SKIP_WITHOUT_SM90();
  uint32_t seed = 200;
  for (DType dt : kDtypes)
    for (auto [d, h, kvh] : kShapes)
      for (int bs : {64, 16}) {
        check({dt, d, h, kvh, 0, bs}, {{100, 1000}, {64, 300}, {129, 700}, {1, 50}, {300, 301}}, seed++, true);
        if (HasFatalFailure()) return;
      }
}

TEST(CudaPrefillSm90, LongPromptsMatchCudaKernel) {
  SKIP_WITHOUT_SM90();
  uint32_t seed = 300;
  for (DType dt : kDtypes)
    for (auto [d, h, kvh] : kShapes) {
      check({dt, d, h, kvh, 0, 64}, {{1024, 1024}}, seed++, false);
      check({dt, d, h, kvh, 0, 64}, {{2048, 2048}, {2048, 2048}, {2048, 2048}, {2048, 2048}}, seed++, false);
      check({dt, d, h, kvh, 0, 64}, {{2048, 2048}, {700, 700}, {300, 1800}, {5, 5}, {1000, 3000}}, seed++, false);
      if (HasFatalFailure()) return;
    }
}

TEST(CudaPrefillSm90, GroupSizesAndBlockSizes) {
  // Query heads per kv head 1 to 64 (odd ones leave padding rows in a CTA), block sizes 1 to 64.
  SKIP_WITHOUT_SM90();
  uint32_t seed = 400;
  for (DType dt : kDtypes) {
    for (auto [d, h, kvh] : std::vector<std::array<int, 3>>{{128, 12, 4}, {64, 40, 8}, {128, 64, 1}, {96, 14, 2}}) {
      check({dt, d, h, kvh, 0, 32}, {{150, 150}, {33, 90}}, seed++, true);
      if (HasFatalFailure()) return;
    }
    for (int bs : {1, 4, 8}) {
      check({dt, 128, 8, 2, 0, bs}, {{200, 260}, {70, 70}}, seed++, true);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(CudaPrefillSm90, SlidingWindows) {
  SKIP_WITHOUT_SM90();
  uint32_t seed = 500;
  for (DType dt : kDtypes)
    for (int32_t w : {1, 24, 100, 128, 129, 300, 1000}) {
      check({dt, 128, 32, 8, w, 64}, {{300, 300}, {100, 250}, {1, 1}}, seed++, true);
      check({dt, 96, 32, 32, w, 16}, {{250, 1000}, {64, 64}}, seed++, true);
      if (HasFatalFailure()) return;
    }
  check({DType::kF16, 128, 32, 8, 500, 64}, {{2048, 2048}, {1000, 1500}}, seed++, false);
}

TEST(CudaPrefillSm90, SequenceList) {
  // The mixed-batch split: only the listed sequences (in any order) are attended and written.
  SKIP_WITHOUT_SM90();
  uint32_t seed = 600;
  const std::vector<SeqSpec> mixed{{37, 87}, {1, 130}, {200, 200}, {3, 3000}, {150, 1150}, {1, 1}};
  for (DType dt : kDtypes)
    for (auto [d, h, kvh] : kShapes) {
      check({dt, d, h, kvh, 0, 64}, mixed, seed++, true, {4, 0, 2});
      check({dt, d, h, kvh, 24, 64}, mixed, seed++, true, {2}, true);
      if (HasFatalFailure()) return;
    }
}

TEST(CudaPrefillSm90, Declines) {
  // Unsupported cases launch nothing and return false (the caller falls back to the existing kernel).
  SKIP_WITHOUT_SM90();
  Batch x;
  ASSERT_NO_FATAL_FAILURE(build(x, {DType::kF16, 128, 8, 2, 0, 64}, {{10, 10}}, 7));
  PrefillSm90Args a = sm90_args(x, x.dout.p, nullptr, 1, 10);
  EXPECT_TRUE(prefill_attention_sm90(a, nullptr));
  CUDA_ASSERT(cudaDeviceSynchronize());
  for (int d : {16, 32, 80, 256}) {
    PrefillSm90Args b = a;
    b.head_dim = d;
    EXPECT_FALSE(prefill_attention_sm90(b, nullptr)) << "head_dim " << d;
  }
  PrefillSm90Args b = a;
  b.num_heads = 256;
  b.num_kv_heads = 2;  // 128 query heads per kv head
  EXPECT_FALSE(prefill_attention_sm90(b, nullptr));
  b = a;
  b.scale = 0.0f;
  EXPECT_FALSE(prefill_attention_sm90(b, nullptr));
  b = a;
  b.block_size = 48;
  EXPECT_FALSE(prefill_attention_sm90(b, nullptr));
  b = a;
  b.q = static_cast<const char*>(a.q) + 2;
  EXPECT_FALSE(prefill_attention_sm90(b, nullptr));
  prefill_sm90_set_enabled(false);
  EXPECT_FALSE(prefill_attention_sm90(a, nullptr));
  prefill_sm90_set_enabled(true);
}

// ---------------------------------------------------------------- timing (printed, not checked)

// Mean milliseconds per call of `step` over `reps` calls after 3 warm-up calls, with CUDA events.
template <typename Step>
void time_calls(cudaStream_t s, int reps, Step&& step, float* ms_out) {
  for (int i = 0; i < 3; ++i) step();
  CUDA_ASSERT(cudaStreamSynchronize(s));
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CUDA_ASSERT(cudaEventCreate(&e0));
  CUDA_ASSERT(cudaEventCreate(&e1));
  CUDA_ASSERT(cudaEventRecord(e0, s));
  for (int i = 0; i < reps; ++i) step();
  CUDA_ASSERT(cudaEventRecord(e1, s));
  CUDA_ASSERT(cudaEventSynchronize(e1));
  CUDA_ASSERT(cudaGetLastError());
  float ms = 0;
  CUDA_ASSERT(cudaEventElapsedTime(&ms, e0, e1));
  *ms_out = ms / reps;
  CUDA_ASSERT(cudaEventDestroy(e0));
  CUDA_ASSERT(cudaEventDestroy(e1));
}

TEST(CudaPrefillSm90, Timing) {
  SKIP_WITHOUT_SM90();
  constexpr int kReps = 20;
  struct TimedShape {
    const char* name;
    int seqs, tokens, h, kvh, d;
  };
  for (const TimedShape& sh :
       {TimedShape{"Llama-3-8B", 4, 2048, 32, 8, 128}, TimedShape{"Phi-3-mini", 1, 1024, 32, 32, 96},
        TimedShape{"Llama-3.2-1B", 4, 2048, 32, 8, 64}})
    for (DType dt : kDtypes) {
      Batch x;
      ASSERT_NO_FATAL_FAILURE(build(x, {dt, sh.d, sh.h, sh.kvh, 0, 64},
                                    std::vector<SeqSpec>(sh.seqs, SeqSpec{sh.tokens, sh.tokens}), 11, false));
      Stream stream;
      CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
      float ms_old = 0, ms_new = 0;
      prefill_sm90_set_enabled(false);
      time_calls(stream.s, kReps,
                 [&] { paged_attention(x.dq.p, dt, x.kv, x.b, x.p, x.dref.p, x.dws.p, x.ws_bytes, stream.s); },
                 &ms_old);
      prefill_sm90_set_enabled(true);
      if (HasFatalFailure()) return;
      const PrefillSm90Args a = sm90_args(x, x.dout.p, nullptr, sh.seqs, sh.tokens);
      bool ok = true;
      time_calls(stream.s, kReps, [&] { ok = ok && prefill_attention_sm90(a, stream.s); }, &ms_new);
      if (HasFatalFailure()) return;
      ASSERT_TRUE(ok);
      const double pairs = static_cast<double>(sh.seqs) * sh.tokens * (sh.tokens + 1) / 2.0;
      const double flops = 4.0 * sh.d * sh.h * pairs;
      std::printf("[timing] %s %s prefill %d x %d tokens, H=%d KVH=%d D=%d block=64: old %.1f us (%.1f TFLOP/s), "
                  "sm90 %.1f us (%.1f TFLOP/s), speedup %.2fx\n",
                  sh.name, dtype_name(dt), sh.seqs, sh.tokens, sh.h, sh.kvh, sh.d, ms_old * 1e3,
                  flops / (ms_old * 1e-3) / 1e12, ms_new * 1e3, flops / (ms_new * 1e-3) / 1e12, ms_old / ms_new);
    }
}

}  // namespace
}  // namespace kiln::cuda
