// CPU model benchmark: batch-1 decode tokens/s and prompt processing tokens/s of an engine, next to the
// floor that this machine's memory bandwidth sets (measured in the same run by copy and read loops).
//
//   cpu_model_bench ENGINE_DIR [ENGINE_DIR...] [--prompt 512] [--decode 128] [--reps 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/gemm.h"
#include "core/cpu_features.h"
#include "core/thread_pool.h"
#include "executor/sequence_runner.h"
#include "model/engine.h"

using namespace kiln;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Bandwidth {
  double copy_gbs;  // (read + write) bytes / s, memcpy on all threads
  double read_gbs;  // read bytes / s, summing on all threads
};

// Best of several passes over buffers much larger than the L3 cache.
Bandwidth measure_bandwidth(ThreadPool& pool) {
  const size_t bytes = 512ull << 20;
  HostBuffer a(bytes), b(bytes);
  std::memset(a.data(), 1, bytes);
  std::memset(b.data(), 2, bytes);
  Bandwidth bw{0, 0};
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = Clock::now();
    pool.parallel_for(static_cast<int64_t>(bytes / 4096), [&](int64_t s, int64_t e) {
      std::memcpy(static_cast<char*>(b.data()) + s * 4096, static_cast<char*>(a.data()) + s * 4096, (e - s) * 4096);
    });
    bw.copy_gbs = std::max(bw.copy_gbs, 2.0 * bytes / seconds_since(t0) / 1e9);
    std::vector<uint64_t> sums(pool.num_threads(), 0);
    t0 = Clock::now();
    pool.run([&](int t, int nt) {
      const uint64_t* p = static_cast<const uint64_t*>(a.data());
      size_t n = bytes / 8, s = n * t / nt, e = n * (t + 1) / nt;
      uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
      for (size_t i = s; i + 4 <= e; i += 4) {
        acc0 += p[i];
        acc1 += p[i + 1];
        acc2 += p[i + 2];
        acc3 += p[i + 3];
      }
      sums[t] = acc0 + acc1 + acc2 + acc3;
    });
    bw.read_gbs = std::max(bw.read_gbs, bytes / seconds_since(t0) / 1e9);
    if (std::accumulate(sums.begin(), sums.end(), 0ull) == 42) std::puts("");  // keep the loop
  }
  return bw;
}

// Bytes one decode step must read: every packed linear weight (LM head included) and the norms;
// the embedding lookup reads one row.
uint64_t decode_bytes_per_token(const Engine& e) {
  uint64_t total = 0;
  for (const EngineTensor& t : e.file->tensors())
    if (t.name != "embed.weight") total += t.nbytes;
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> engines;
  int prompt_len = 512, decode_len = 128, reps = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--prompt" && i + 1 < argc) prompt_len = std::atoi(argv[++i]);
    else if (a == "--decode" && i + 1 < argc) decode_len = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else engines.push_back(a);
  }
  if (engines.empty()) {
    std::fprintf(stderr, "usage: cpu_model_bench ENGINE_DIR... [--prompt 512] [--decode 128] [--reps 3]\n");
    return 2;
  }
  ThreadPool& pool = ThreadPool::global();
  std::printf("cpu: %d threads, %s\n", pool.num_threads(), cpu_features().to_string().c_str());
  Bandwidth bw = measure_bandwidth(pool);
  std::printf("memory bandwidth: copy %.1f GB/s (read+write), read %.1f GB/s\n", bw.copy_gbs, bw.read_gbs);

  for (const std::string& dir : engines) {
    auto engine = load_engine(dir);
    if (!engine.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), engine.status().to_string().c_str());
      return 1;
    }
    CpuBackend backend(pool);
    auto model = LlamaModel::load(*engine, backend);
    auto runner = SequenceRunner::create(**model, backend);
    if (!model.ok() || !runner.ok()) return 1;
    std::vector<int32_t> prompt(prompt_len);
    for (int i = 0; i < prompt_len; ++i) prompt[i] = 1 + (i * 7919) % static_cast<int>(engine->model.vocab_size - 1);
    GreedyOptions opt;
    opt.stop_at_eos = false;
    opt.return_log_probs = false;  // engine speed, as llama-bench measures it

    // Prompt processing: prefill only (one output token comes from the prefill's logits).
    double best_pp = 1e30;
    opt.max_new_tokens = 1;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      auto res = (*runner)->generate(prompt, opt);
      if (!res.ok()) {
        std::fprintf(stderr, "%s\n", res.status().to_string().c_str());
        return 1;
      }
      best_pp = std::min(best_pp, seconds_since(t0));
    }
    // Decode: a short prompt, then decode_len steps; time per step excludes the prefill.
    double best_decode = 1e30;
    std::vector<int32_t> short_prompt(prompt.begin(), prompt.begin() + 8);
    for (int r = 0; r < reps; ++r) {
      opt.max_new_tokens = 1;
      auto t0 = Clock::now();
      (void)(*runner)->generate(short_prompt, opt);
      double prefill = seconds_since(t0);
      opt.max_new_tokens = decode_len + 1;
      t0 = Clock::now();
      (void)(*runner)->generate(short_prompt, opt);
      best_decode = std::min(best_decode, (seconds_since(t0) - prefill) / decode_len);
    }
    const uint64_t bytes = decode_bytes_per_token(*engine);
    const double floor_tps = bw.read_gbs * 1e9 / bytes;
    std::printf("\n%s  (%s weights, %s GEMM kernel)\n", dir.c_str(), dtype_name(engine->build.dtype),
                cpu::gemm_kernel_name(engine->build.dtype));
    std::printf("  decode (batch 1):   %7.1f tokens/s  (%.2f ms/token; floor %.1f tokens/s = %.0f MB/token at %.1f GB/s read -> %.0f%% of floor)\n",
                1.0 / best_decode, best_decode * 1e3, floor_tps, bytes / 1e6, bw.read_gbs, 100.0 / best_decode / floor_tps);
    std::printf("  prompt (%d tokens): %7.1f tokens/s  (%.1f ms)\n", prompt_len, prompt_len / best_pp, best_pp * 1e3);
    std::printf("RESULT {\"engine\": \"%s\", \"dtype\": \"%s\", \"decode_tps\": %.1f, \"prompt_tps\": %.1f, \"floor_tps\": %.1f, "
                "\"read_gbs\": %.1f, \"copy_gbs\": %.1f}\n",
                dir.c_str(), dtype_name(engine->build.dtype), 1.0 / best_decode, prompt_len / best_pp, floor_tps, bw.read_gbs,
                bw.copy_gbs);
  }
  return 0;
}
