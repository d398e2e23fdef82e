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
#include "backend/cuda/cuda_kernel_test_util.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace kiln::cuda {
namespace {

using namespace kernel_test;

#define SKIP_WITHOUT_GPU()                                                   \
  do {                                                                       \
    int kiln_n_ = 0;                                                         \
    const cudaError_t kiln_e_ = cudaGetDeviceCount(&kiln_n_);                \
    if (kiln_e_ != cudaSuccess || kiln_n_ == 0) {                            \
      (void)cudaGetLastError();                                              \
      GTEST_SKIP() << "no CUDA device (" << cuda_err(kiln_e_) << ")";        \
    }                                                                        \
  } while (0)

// The attention workspace as the backend keeps it: poisoned (0xFF) but for its arrival counters, which are
// zero from the allocation on (the kernels leave them zero).
#define WS_INIT(mem)                                                                                       \
  do {                                                                                                     \
    CUDA_ASSERT(cudaMemset((mem).p, 0xFF, std::max<size_t>((mem).bytes, 16)));                            \
    CUDA_ASSERT(cudaMemset((mem).p, 0, std::min((mem).bytes, attention_workspace_counter_bytes())));      \
  } while (0)

// A batch layout's arrays on the device and the DeviceBatch over them (what CudaBackend::begin_forward makes):
// T = token_seq.size() tokens of S = first.size() sequences; tables [S, max_blocks_per_seq].
struct DeviceLayout {
  DevMem token_seq, token_pos, first, num_new, ctx, tables;
  DeviceBatch batch;
};

void upload_layout(const std::vector<int32_t>& token_seq, const std::vector<int32_t>& token_pos,
                   const std::vector<int32_t>& first, const std::vector<int32_t>& num_new,
                   const std::vector<int32_t>& ctx, const std::vector<int32_t>& tables, int32_t block_size,
                   int32_t max_blocks_per_seq, int32_t max_context_len, int32_t max_num_new, DeviceLayout* l) {
  DEV_ALLOC(l->token_seq, token_seq.size() * 4, token_seq.data());
  DEV_ALLOC(l->token_pos, token_pos.size() * 4, token_pos.data());
  DEV_ALLOC(l->first, first.size() * 4, first.data());
  DEV_ALLOC(l->num_new, num_new.size() * 4, num_new.data());
  DEV_ALLOC(l->ctx, ctx.size() * 4, ctx.data());
  DEV_ALLOC(l->tables, tables.size() * 4, tables.data());
  DeviceBatch& b = l->batch;
  b.num_tokens = static_cast<int32_t>(token_seq.size());
  b.num_seqs = static_cast<int32_t>(first.size());
  b.block_size = block_size;
  b.max_blocks_per_seq = max_blocks_per_seq;
  b.max_context_len = max_context_len;
  b.max_num_new = max_num_new;
  b.token_seq = static_cast<const int32_t*>(l->token_seq.p);
  b.token_pos = static_cast<const int32_t*>(l->token_pos.p);
  b.seq_first_token = static_cast<const int32_t*>(l->first.p);
  b.seq_num_new = static_cast<const int32_t*>(l->num_new.p);
  b.seq_context_len = static_cast<const int32_t*>(l->ctx.p);
  b.block_tables = static_cast<const int32_t*>(l->tables.p);
}

using kernel_test::describe;
using test::describe;
using test::SeqSpec;
using Case = test::AttentionCase;

double tolerance(DType t) { return t == DType::kF32 ? 1e-4 : t == DType::kF16 ? 5e-3 : 2e-2; }

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
  DevMem dk, dv, dq, dout, dws;
  DEV_ALLOC(dk, pool_n * esize, kbuf.data());
  DEV_ALLOC(dv, pool_n * esize, vbuf.data());
  DEV_ALLOC(dq, qn * esize, q_act.data());
  constexpr size_t kGuard = 4096;  // bytes after the output that must stay untouched
  DEV_ALLOC(dout, qn * esize + kGuard, static_cast<const void*>(nullptr));
  CUDA_ASSERT(cudaMemset(dout.p, 0xFF, dout.bytes));  // NaN in every float type
  DeviceLayout layout;
  ASSERT_NO_FATAL_FAILURE(upload_layout(token_seq, token_pos, seq_first, seq_new, seq_ctx, tables, bs, mbps, max_ctx,
                                        max_new, &layout));

  AttentionParams p{H, KVH, d, scale, c.window};
  const size_t ws_bytes = attention_workspace_bytes(p, static_cast<int32_t>(T), max_ctx);
  DEV_ALLOC(dws, ws_bytes, static_cast<const void*>(nullptr));
  WS_INIT(dws);

  DeviceBatch b = layout.batch;
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

  // The same call again, in a CUDA graph replayed three times, and with the splits merged by the separate
  // combine kernel (instead of the decode kernel's last CTA): the same bits every time (the arrival
  // counters are back to zero after each call).
  const auto same_again = [&](const char* what) {
    std::vector<uint8_t> again(dout.bytes);
    CUDA_ASSERT(cudaMemcpy(again.data(), dout.p, dout.bytes, cudaMemcpyDeviceToHost));
    size_t i = 0;
    while (i < again.size() && again[i] == out_raw[i]) ++i;
    ASSERT_EQ(i, again.size()) << what << ": output byte " << i << " differs from the first call's";
  };
  CUDA_ASSERT(cudaMemset(dout.p, 0xFF, qn * esize));
  paged_attention(dq.p, c.dtype, kv, b, p, dout.p, dws.p, ws_bytes, stream.s);
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  ASSERT_NO_FATAL_FAILURE(same_again("second call"));
  {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CUDA_ASSERT(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal));
    paged_attention(dq.p, c.dtype, kv, b, p, dout.p, dws.p, ws_bytes, stream.s);
    CUDA_ASSERT(cudaStreamEndCapture(stream.s, &graph));
    CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 3; ++rep) {
      CUDA_ASSERT(cudaMemsetAsync(dout.p, 0xFF, qn * esize, stream.s));
      CUDA_ASSERT(cudaGraphLaunch(exec, stream.s));
      CUDA_ASSERT(cudaStreamSynchronize(stream.s));
      ASSERT_NO_FATAL_FAILURE(same_again("graph replay"));
    }
    CUDA_ASSERT(cudaGraphExecDestroy(exec));
    CUDA_ASSERT(cudaGraphDestroy(graph));
  }
  set_attention_combine_fusion(false);
  CUDA_ASSERT(cudaMemset(dout.p, 0xFF, qn * esize));
  paged_attention(dq.p, c.dtype, kv, b, p, dout.p, dws.p, ws_bytes, stream.s);
  set_attention_combine_fusion(true);
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  ASSERT_NO_FATAL_FAILURE(same_again("separate combine kernel"));
  // Every counter back at zero.
  std::vector<int32_t> counters(std::min(ws_bytes, attention_workspace_counter_bytes()) / 4);
  CUDA_ASSERT(cudaMemcpy(counters.data(), dws.p, counters.size() * 4, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < counters.size(); ++i) ASSERT_EQ(counters[i], 0) << "arrival counter " << i;
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

TEST(CudaAttention, DecodeCombineInKernelManySplits) {
  // Batch 1 to 3 up to 32K context: up to 128 splits per (token, kv head), merged by the last CTA of each;
  // check_case also replays the call in a graph and compares with the separate combine kernel, bit for bit.
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1500;
  for (DType dt : {DType::kF16, DType::kBF16}) {
    check_case({dt, 128, 32, 8, 0, 16}, {{1, 32768}}, seed++);
    check_case({dt, 96, 32, 32, 0, 64}, {{1, 32000}}, seed++);   // Phi-3-mini's heads
    check_case({dt, 96, 32, 32, 0, 16}, {{1, 1024}}, seed++);
    check_case({dt, 64, 64, 4, 0, 64}, {{1, 16384}, {1, 7}, {1, 9000}}, seed++);   // 16 query heads per kv head
    check_case({dt, 128, 40, 2, 2000, 16}, {{1, 20000}, {1, 2100}}, seed++);      // two head groups, window
    check_case({dt, 32, 8, 1, 0, 8}, {{1, 12345}, {3, 300}}, seed++);             // several tokens of one seq
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

// ---------------------------------------------------------------- RoPE fused into decode attention

// Decode batches (one new token per sequence at `contexts`): rope_kv_write_attention against
// qkv_rope_kv_write followed by paged_attention, on two copies of the same pools: the outputs and the whole
// K/V pools must be the same bits. bucket: max_context_len rounded up as the backend's graphed steps do.
void check_rope_fused(const test::RopeAttentionCase& c, const std::vector<int32_t>& contexts, bool bucket,
                      uint32_t seed) {
  std::string ctxs = "contexts:";
  for (int32_t x : contexts) ctxs += " " + std::to_string(x);
  SCOPED_TRACE(describe(c) + " " + ctxs + (bucket ? " (bucketed max_context_len)" : ""));
  std::mt19937 rng(seed);
  Rng frng(seed);
  const int d = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, bs = c.block_size;
  const size_t esize = dtype_size(c.dtype);
  const int S = static_cast<int>(contexts.size()), T = S;
  int64_t total_blocks = 2;
  int32_t max_blocks = 0, max_ctx = 0;
  for (int32_t ctx : contexts) {
    const int32_t nb = (ctx + bs - 1) / bs;
    total_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
    max_ctx = std::max(max_ctx, ctx);
  }
  if (bucket) {
    int32_t b = 1;
    while (b < max_blocks) b *= 2;
    max_ctx = b * bs;
  }
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t mbps = max_blocks + 1;
  std::vector<int32_t> tables(static_cast<size_t>(S) * mbps, 0);
  std::vector<int32_t> tseq, tpos, first, nnew, cl;
  size_t next = 0;
  for (int s = 0; s < S; ++s) {
    const int32_t nb = (contexts[s] + bs - 1) / bs;
    for (int32_t i = 0; i < nb; ++i) tables[static_cast<size_t>(s) * mbps + i] = ids[next++];
    tseq.push_back(s);
    tpos.push_back(contexts[s] - 1);
    first.push_back(s);
    nnew.push_back(1);
    cl.push_back(contexts[s]);
  }
  // Pools: random everywhere but the new tokens' rows, which hold NaN until written.
  const size_t pool_n = static_cast<size_t>(total_blocks) * KVH * bs * d;
  std::vector<uint8_t> kpool(pool_n * esize), vpool(pool_n * esize);
  {
    std::vector<float> f(pool_n);
    for (int kv = 0; kv < 2; ++kv) {
      for (auto& x : f) x = frng.sym(1.7f);
      for (int s = 0; s < S; ++s) {
        const int32_t p = contexts[s] - 1;
        const int64_t blk = tables[static_cast<size_t>(s) * mbps + p / bs];
        for (int g = 0; g < KVH; ++g)
          for (int e = 0; e < d; ++e) f[((blk * KVH + g) * bs + p % bs) * d + e] = std::nanf("");
      }
      ASSERT_TRUE(convert_floats(f.data(), DType::kF32, (kv ? vpool : kpool).data(), c.dtype, pool_n));
    }
  }
  // qkv [T, (H + 2 KVH) d] and cos_sin [T, d] of each token's position (theta 10000).
  const size_t qkv_n = static_cast<size_t>(T) * (H + 2 * KVH) * d;
  std::vector<float> qkvf(qkv_n);
  for (auto& x : qkvf) x = frng.sym(3.4f);
  std::vector<uint8_t> qkv(qkv_n * esize);
  ASSERT_TRUE(convert_floats(qkvf.data(), DType::kF32, qkv.data(), c.dtype, qkv_n));
  std::vector<float> cs(static_cast<size_t>(T) * d);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < d / 2; ++i) {
      const double ang = tpos[t] * std::pow(10000.0, -2.0 * i / d);
      cs[static_cast<size_t>(t) * d + i] = static_cast<float>(std::cos(ang));
      cs[static_cast<size_t>(t) * d + d / 2 + i] = static_cast<float>(std::sin(ang));
    }

  const size_t out_n = static_cast<size_t>(T) * H * d;
  DevMem k1, v1, k2, v2, dqkv, dcs, dq, out1, out2, ws;
  DEV_ALLOC(k1, pool_n * esize, kpool.data());
  DEV_ALLOC(v1, pool_n * esize, vpool.data());
  DEV_ALLOC(k2, pool_n * esize, kpool.data());
  DEV_ALLOC(v2, pool_n * esize, vpool.data());
  DEV_ALLOC(dqkv, qkv.size(), qkv.data());
  DEV_ALLOC(dcs, cs.size() * 4, cs.data());
  DEV_ALLOC(dq, out_n * esize, static_cast<const void*>(nullptr));
  DEV_ALLOC(out1, out_n * esize, static_cast<const void*>(nullptr));
  DEV_ALLOC(out2, out_n * esize, static_cast<const void*>(nullptr));
  CUDA_ASSERT(cudaMemset(out1.p, 0xFF, out1.bytes));
  CUDA_ASSERT(cudaMemset(out2.p, 0xFF, out2.bytes));
  DeviceLayout layout;
  ASSERT_NO_FATAL_FAILURE(upload_layout(tseq, tpos, first, nnew, cl, tables, bs, mbps, max_ctx, 1, &layout));
  AttentionParams p{H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), 0};
  const size_t ws_bytes = attention_workspace_bytes(p, T, max_ctx);
  DEV_ALLOC(ws, ws_bytes, static_cast<const void*>(nullptr));
  WS_INIT(ws);
  DeviceBatch b = layout.batch;
  QkvParams qp{H, KVH, d, d, 1e-6f, nullptr, nullptr};
  DeviceKv kv1{k1.p, v1.p, c.dtype, static_cast<int32_t>(total_blocks), KVH, d};
  DeviceKv kv2{k2.p, v2.p, c.dtype, static_cast<int32_t>(total_blocks), KVH, d};
  const float* csp = static_cast<const float*>(dcs.p);
  ASSERT_TRUE(rope_attention_fusable(dqkv.p, c.dtype, qp, csp, b, kv2, p, out2.p));

  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  qkv_rope_kv_write(dqkv.p, c.dtype, qp, csp, b, kv1, dq.p, stream.s);
  paged_attention(dq.p, c.dtype, kv1, b, p, out1.p, ws.p, ws_bytes, stream.s);
  rope_kv_write_attention(dqkv.p, c.dtype, qp, csp, b, kv2, p, out2.p, ws.p, ws_bytes, stream.s);
  CUDA_ASSERT(cudaGetLastError());
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));

  const auto fetch = [&](const DevMem& m) {
    std::vector<uint8_t> h(m.bytes);
    EXPECT_EQ(cudaMemcpy(h.data(), m.p, m.bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  };
  const auto first_diff = [](const std::vector<uint8_t>& x, const std::vector<uint8_t>& y) -> int64_t {
    for (size_t i = 0; i < x.size(); ++i)
      if (x[i] != y[i]) return static_cast<int64_t>(i);
    return -1;
  };
  const std::vector<uint8_t> o1 = fetch(out1), o2 = fetch(out2);
  std::vector<float> of(out_n);
  ASSERT_TRUE(convert_floats(o1.data(), c.dtype, of.data(), DType::kF32, out_n));
  for (size_t i = 0; i < out_n; ++i) ASSERT_TRUE(std::isfinite(of[i])) << "unfused output " << i << " not finite";
  const int64_t od = first_diff(o1, o2);
  EXPECT_EQ(od, -1) << "outputs differ first at element " << od / static_cast<int64_t>(esize) << " (token "
                    << od / static_cast<int64_t>(esize) / (H * d) << ")";
  const int64_t kd = first_diff(fetch(k1), fetch(k2));
  EXPECT_EQ(kd, -1) << "K pools differ first at element " << kd / static_cast<int64_t>(esize);
  const int64_t vd = first_diff(fetch(v1), fetch(v2));
  EXPECT_EQ(vd, -1) << "V pools differ first at element " << vd / static_cast<int64_t>(esize);
}

TEST(CudaAttention, RopeFusedMatchesUnfused) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 9100;
  const std::vector<std::vector<int32_t>> batches{
      {1}, {17}, {256}, {1024}, {5000}, {1, 17, 256, 1024, 5000, 33, 64}, {5000, 4097, 1, 300, 16, 1023, 2}};
  for (DType dt : {DType::kF16, DType::kBF16})
    for (auto [h, kvh, d] : std::vector<std::array<int, 3>>{{32, 8, 128}, {32, 32, 96}})
      for (int bs : {16, 64})
        for (const auto& ctxs : batches) {
          check_rope_fused({dt, d, h, kvh, bs}, ctxs, seed % 2 == 0, seed);
          ++seed;
          if (HasFatalFailure()) return;
        }
  // Other head dims and groupings of the mma kernel: 32, 64; 8 and 24 query heads per kv head (two head groups).
  for (auto [h, kvh, d] : std::vector<std::array<int, 3>>{{8, 2, 32}, {16, 2, 64}, {48, 2, 64}}) {
    check_rope_fused({DType::kF16, d, h, kvh, 16}, {1, 90, 2000}, seed % 2 == 0, seed);
    ++seed;
    if (HasFatalFailure()) return;
  }
}

// Outside the fused op's scope rope_attention_fusable says no (the backend then runs the two ops) and the
// fused launcher refuses.
TEST(CudaAttention, RopeFusedScope) {
  DeviceBatch b;
  b.num_tokens = 1;
  b.num_seqs = 1;
  b.block_size = 16;
  b.max_blocks_per_seq = 1;
  b.max_context_len = 1;
  b.max_num_new = 1;
  alignas(16) static int32_t dummy_i[64];
  b.token_seq = b.token_pos = b.seq_first_token = b.seq_num_new = b.seq_context_len = b.block_tables = dummy_i;
  alignas(16) static float buf[4096];
  const QkvParams qp{32, 8, 128, 128, 1e-6f, nullptr, nullptr};
  const AttentionParams p{32, 8, 128, 0.088f, 0};
  const DeviceKv kv{buf, buf, DType::kF16, 1, 8, 128};
  EXPECT_TRUE(rope_attention_fusable(buf, DType::kF16, qp, buf, b, kv, p, buf));
  DeviceKv kv_bf = kv;
  kv_bf.dtype = DType::kBF16;
  EXPECT_TRUE(rope_attention_fusable(buf, DType::kBF16, qp, buf, b, kv_bf, p, buf));
  DeviceBatch prefill = b;
  prefill.max_num_new = 2;  // a sequence adds two tokens
  EXPECT_FALSE(rope_attention_fusable(buf, DType::kF16, qp, buf, prefill, kv, p, buf));
  QkvParams partial = qp;
  partial.rotary_dim = 64;  // partial rotary
  EXPECT_FALSE(rope_attention_fusable(buf, DType::kF16, partial, buf, b, kv, p, buf));
  QkvParams normed = qp;
  normed.q_norm = buf;  // per-head q/k norm (Qwen3)
  EXPECT_FALSE(rope_attention_fusable(buf, DType::kF16, normed, buf, b, kv, p, buf));
  DeviceKv kv32 = kv;
  kv32.dtype = DType::kF32;
  EXPECT_FALSE(rope_attention_fusable(buf, DType::kF32, qp, buf, b, kv32, p, buf));  // f32
  for (int d : {16, 80, 256}) {  // no whole rotary k-steps / no mma decode kernel
    const QkvParams q2{32, 8, d, d, 1e-6f, nullptr, nullptr};
    const AttentionParams p2{32, 8, d, 0.1f, 0};
    const DeviceKv kv2{buf, buf, DType::kF16, 1, 8, d};
    EXPECT_FALSE(rope_attention_fusable(buf, DType::kF16, q2, buf, b, kv2, p2, buf)) << "head_dim " << d;
  }
  EXPECT_FALSE(rope_attention_fusable(reinterpret_cast<char*>(buf) + 2, DType::kF16, qp, buf, b, kv, p, buf));
}

// ---------------------------------------------------------------- timing (printed, not checked)

struct TimedBatch {
  DevMem k, v, q, out, ws;
  DeviceLayout layout;
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
  ASSERT_NO_FATAL_FAILURE(upload_layout(tseq, tpos, first, nnew, cl, ids, bs, nb, ctx, num_new, &t.layout));
  t.b = t.layout.batch;
  t.kv.k = t.k.p;
  t.kv.v = t.v.p;
  t.kv.dtype = dt;
  t.kv.num_blocks = static_cast<int32_t>(total_blocks);
  t.kv.num_kv_heads = KVH;
  t.kv.head_dim = d;
  t.p = AttentionParams{H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), 0};
  t.ws_bytes = attention_workspace_bytes(t.p, t.b.num_tokens, ctx);
  DEV_ALLOC(t.ws, t.ws_bytes, static_cast<const void*>(nullptr));
  WS_INIT(t.ws);
}

// Captures `reps` calls of `step` on `s` into a CUDA graph, replays it once to warm up, then times three replays:
// *ms_out = milliseconds per call (no host launch cost, as the backend runs decode steps).
template <typename Step>
void time_in_graph(cudaStream_t s, int reps, Step&& step, float* ms_out) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_ASSERT(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  for (int i = 0; i < reps; ++i) step();
  CUDA_ASSERT(cudaStreamEndCapture(s, &graph));
  CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_ASSERT(cudaGraphLaunch(exec, s));  // warm-up
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CUDA_ASSERT(cudaEventCreate(&e0));
  CUDA_ASSERT(cudaEventCreate(&e1));
  constexpr int kLaunches = 3;
  CUDA_ASSERT(cudaEventRecord(e0, s));
  for (int i = 0; i < kLaunches; ++i) CUDA_ASSERT(cudaGraphLaunch(exec, s));
  CUDA_ASSERT(cudaEventRecord(e1, s));
  CUDA_ASSERT(cudaEventSynchronize(e1));
  CUDA_ASSERT(cudaGetLastError());
  float ms = 0;
  CUDA_ASSERT(cudaEventElapsedTime(&ms, e0, e1));
  *ms_out = ms / (kLaunches * reps);
  CUDA_ASSERT(cudaGraphExecDestroy(exec));
  CUDA_ASSERT(cudaGraphDestroy(graph));
  CUDA_ASSERT(cudaEventDestroy(e0));
  CUDA_ASSERT(cudaEventDestroy(e1));
}

// Mean milliseconds per call over `reps` after warm-up: *ms_out with the calls captured in a CUDA graph (as the
// backend runs decode steps: no host launch cost), *ms_stream (optional) launched one by one on a stream.
void time_batch(TimedBatch& t, DType dt, int reps, float* ms_out, float* ms_stream = nullptr) {
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  auto step = [&] { paged_attention(t.q.p, dt, t.kv, t.b, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s); };
  for (int i = 0; i < 3; ++i) step();
  if (ms_stream) {
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    CUDA_ASSERT(cudaEventCreate(&e0));
    CUDA_ASSERT(cudaEventCreate(&e1));
    CUDA_ASSERT(cudaEventRecord(e0, stream.s));
    for (int i = 0; i < reps; ++i) step();
    CUDA_ASSERT(cudaEventRecord(e1, stream.s));
    CUDA_ASSERT(cudaEventSynchronize(e1));
    CUDA_ASSERT(cudaGetLastError());
    float ms = 0;
    CUDA_ASSERT(cudaEventElapsedTime(&ms, e0, e1));
    *ms_stream = ms / reps;
    CUDA_ASSERT(cudaEventDestroy(e0));
    CUDA_ASSERT(cudaEventDestroy(e1));
  }
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  time_in_graph(stream.s, reps, step, ms_out);
}

// Decode step's RoPE + KV write + attention of a batch-1 timed batch (one token), in a CUDA graph of `reps`
// steps: unfused (qkv_rope_kv_write, then paged_attention) or fused (rope_kv_write_attention). Mean ms per step.
void time_rope_attention(TimedBatch& t, DType dt, int reps, bool fused, float* ms_out) {
  const int H = t.p.num_heads, KVH = t.p.num_kv_heads, d = t.p.head_dim;
  const int T = t.b.num_tokens;
  DevMem qkv, cs;
  {
    const size_t n = static_cast<size_t>(T) * (H + 2 * KVH) * d;
    std::vector<float> f(n);
    Rng frng(11);
    for (auto& x : f) x = frng.sym(3.4f);
    std::vector<uint8_t> a(n * dtype_size(dt));
    ASSERT_TRUE(convert_floats(f.data(), DType::kF32, a.data(), dt, n));
    DEV_ALLOC(qkv, a.size(), a.data());
    std::vector<float> c(static_cast<size_t>(T) * d, 0.5f);
    DEV_ALLOC(cs, c.size() * 4, c.data());
  }
  const QkvParams qp{H, KVH, d, d, 1e-6f, nullptr, nullptr};
  const float* csp = static_cast<const float*>(cs.p);
  Stream stream;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  auto step = [&] {
    if (fused) {
      rope_kv_write_attention(qkv.p, dt, qp, csp, t.b, t.kv, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s);
    } else {
      qkv_rope_kv_write(qkv.p, dt, qp, csp, t.b, t.kv, t.q.p, stream.s);
      paged_attention(t.q.p, dt, t.kv, t.b, t.p, t.out.p, t.ws.p, t.ws_bytes, stream.s);
    }
  };
  for (int i = 0; i < 3; ++i) step();
  CUDA_ASSERT(cudaStreamSynchronize(stream.s));
  time_in_graph(stream.s, reps, step, ms_out);
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
    if (ctx <= 1024) {
      float ms_unfused = 0, ms_fused = 0;
      time_rope_attention(t, DType::kF16, 200, false, &ms_unfused);
      if (HasFatalFailure()) return;
      time_rope_attention(t, DType::kF16, 200, true, &ms_fused);
      if (HasFatalFailure()) return;
      std::printf("[timing] float16 decode step 1 seq x %d ctx, H=%d KVH=%d D=%d block=%d: rope + attention %.2f us, "
                  "fused (rope_kv_write_attention) %.2f us, in a graph\n",
                  ctx, h, kvh, d, bs, ms_unfused * 1e3, ms_fused * 1e3);
    }
  }
}

}  // namespace
}  // namespace kiln::cuda
