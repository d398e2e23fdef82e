// CPU paged-attention benchmark: one layer of a SmolLM2-135M-shaped model (9 heads, 3 KV heads,
// head_dim 64, bf16 KV cache, block 64): a 512-token prefill and batch-1 decode at contexts 512 and
// 2048: the reference kernel, and the fast one with its generic C++ kernels (baseline ISA, and built for
// AVX2) and with the best this CPU has (AVX-512).  Times are per call (one layer): the fastest of the calls made in --reps x 20 ms.
//
//   attention_bench [--threads N] [--reps R] [--only reference|generic|avx2|fast] [--shape prefill|decode512|decode2048]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/attention.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

using namespace kiln;
using Clock = std::chrono::steady_clock;

namespace {

struct Setup {
  HostBuffer kbuf, vbuf, qbuf, obuf;
  KvLayer kv;
  Tensor q, out;
  std::vector<int32_t> table;
  AttentionBatch batch;
  AttentionParams params;
};

// One sequence with `num_new` new tokens ending at `context_len`, KV blocks in scattered order.
void make_setup(Setup& s, int32_t num_new, int32_t context_len, DType kv_type) {
  const int H = 9, KVH = 3, d = 64, bs = 64;
  std::mt19937 rng(1);
  const int32_t nb = (context_len + bs - 1) / bs;
  s.table.resize(nb);
  std::iota(s.table.begin(), s.table.end(), 0);
  std::shuffle(s.table.begin(), s.table.end(), rng);
  const Shape shape{nb, KVH, bs, d};
  const size_t n = static_cast<size_t>(shape.numel());
  s.kbuf = HostBuffer(n * dtype_size(kv_type));
  s.vbuf = HostBuffer(n * dtype_size(kv_type));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> tmp(n);
  for (auto& x : tmp) x = nd(rng);
  convert_floats(tmp.data(), DType::kF32, s.kbuf.data(), kv_type, n);
  for (auto& x : tmp) x = nd(rng);
  convert_floats(tmp.data(), DType::kF32, s.vbuf.data(), kv_type, n);
  s.kv = {s.kbuf.view(kv_type, shape), s.vbuf.view(kv_type, shape)};
  s.qbuf = HostBuffer(static_cast<size_t>(num_new) * H * d * sizeof(float));
  s.obuf = HostBuffer(static_cast<size_t>(num_new) * H * d * sizeof(float));
  s.q = s.qbuf.view(DType::kF32, {num_new, H * d});
  s.out = s.obuf.view(DType::kF32, {num_new, H * d});
  for (int64_t i = 0; i < s.q.numel(); ++i) s.q.as<float>()[i] = 2.0f * nd(rng);
  SequenceView v;
  v.first_token = 0;
  v.num_new = num_new;
  v.context_len = context_len;
  v.block_table = s.table;
  s.batch.seqs = {v};
  s.batch.num_tokens = num_new;
  s.batch.block_size = bs;
  s.params = {H, KVH, d, 1.0f / std::sqrt(static_cast<float>(d)), 0};
}

// Fastest single call among calls made for at least reps x 20 ms: the other threads of a shared
// machine only ever slow a call down, and a call that lost its core for a scheduler tick is dropped.
double time_call(const std::function<void()>& fn, int reps) {
  fn();  // warm-up
  double best = 1e30;
  const auto start = Clock::now();
  do {
    auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  } while (std::chrono::duration<double>(Clock::now() - start).count() < 0.02 * reps);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, reps = 5;
  std::string only, shape;  // for profiling one kernel on one shape
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) shape = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--reps R] [--only reference|generic|avx2|fast] [--shape prefill|decode512|decode2048]\n", argv[0]);
      return 2;
    }
  }
  ThreadPool own(threads);
  ThreadPool& pool = threads > 0 ? own : ThreadPool::global();
  std::printf("cpu: %d threads, %s\n", pool.num_threads(), cpu_features().to_string().c_str());
  std::printf("one layer: 9 heads / 3 kv heads, head_dim 64, bf16 KV cache, block 64\n");
  const CpuFeatures& f = cpu_features();
  const char* best_isa = f.avx512f && f.avx512bw && f.avx512vl ? "avx512" : f.avx2 && f.fma ? "avx2" : "generic";

  struct Shape {
    const char* key;
    const char* name;
    int32_t num_new, context;
  };
  for (const Shape& sh : {Shape{"prefill", "prefill 512", 512, 512}, Shape{"decode512", "decode ctx 512", 1, 512},
                          Shape{"decode2048", "decode ctx 2048", 1, 2048}}) {
    if (!shape.empty() && shape != sh.key) continue;
    Setup s;
    make_setup(s, sh.num_new, sh.context, DType::kBF16);
    auto timed = [&](const char* name, const std::function<void()>& fn) {
      return only.empty() || only == name ? time_call(fn, reps) : NAN;
    };
    double ref = timed("reference", [&] { cpu::paged_attention_reference(s.q, s.kv, s.batch, s.params, s.out, pool); });
    double gen = timed("generic", [&] { cpu::paged_attention_for_isa("generic", s.q, s.kv, s.batch, s.params, s.out, pool); });
    double avx2 = timed("avx2", [&] { cpu::paged_attention_for_isa("avx2", s.q, s.kv, s.batch, s.params, s.out, pool); });
    double fast = timed("fast", [&] { cpu::paged_attention(s.q, s.kv, s.batch, s.params, s.out, pool); });
    std::printf("%-16s reference %8.1f us | fast: generic %8.1f us, avx2 %8.1f us, best (%s) %8.1f us = %.1fx\n",
                sh.name, ref * 1e6, gen * 1e6, avx2 * 1e6, best_isa, fast * 1e6, ref / fast);
  }
  return 0;
}
