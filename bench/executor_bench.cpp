// Executor throughput: N concurrent requests of fixed input/output length through the in-flight batcher,
// output tokens/s next to the single-request rate measured in the same run, with time to first token and
// inter-token latency percentiles.
//
//   executor_bench ENGINE_DIR [--input 128] [--output 128] [--concurrency 1,4,16,64] [--reps 1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "bench_stats.h"
#include "executor/executor.h"
#include "model/engine.h"

using namespace kiln;
using Clock = std::chrono::steady_clock;
using kiln::bench::percentile;

namespace {

struct Run {
  double seconds = 0, tokens_per_s = 0;
  std::vector<double> ttft_ms, itl_ms;
};

// `concurrency` requests at once (a burst), each `input` random tokens in and `output` tokens out.
Run run_level(Executor& ex, int concurrency, int input, int output, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  std::mutex mu;
  Run run;
  std::vector<Clock::time_point> last(concurrency);
  std::vector<bool> first(concurrency, true);
  int finals = 0;
  std::condition_variable done;
  const auto t0 = Clock::now();
  for (int i = 0; i < concurrency; ++i) {
    Request r;
    for (int t = 0; t < input; ++t) r.input_ids.push_back(tok(rng));
    r.max_new_tokens = output;
    r.end_ids = std::vector<int32_t>{};  // output length forced
    r.streaming = true;
    r.on_response = [&, i](const Response& resp) {
      const auto now = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      const size_t n = resp.output_ids.empty() ? 0 : resp.output_ids[0].size();
      if (n > 0) {
        if (first[i]) {
          run.ttft_ms.push_back(std::chrono::duration<double, std::milli>(now - t0).count());
          first[i] = false;
        } else {
          run.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - last[i]).count() / n);
        }
        last[i] = now;
      }
      if (resp.is_final) {
        if (!resp.error.ok()) std::fprintf(stderr, "request failed: %s\n", resp.error.to_string().c_str());
        ++finals;
        done.notify_all();
      }
    };
    auto id = ex.enqueue(std::move(r));
    if (!id.ok()) {
      std::fprintf(stderr, "enqueue: %s\n", id.status().to_string().c_str());
      std::exit(1);
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  done.wait(lock, [&] { return finals == concurrency; });
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  run.tokens_per_s = static_cast<double>(concurrency) * output / run.seconds;
  return run;
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: executor_bench ENGINE_DIR [--input 128] [--output 128] [--concurrency 1,4,16,64] [--reps 1]\n");
    return 2;
  }
  int input = 128, output = 128, reps = 1;
  std::vector<int> levels = {1, 4, 16, 64};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--input")) input = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--output")) output = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--concurrency")) levels = parse_list(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  auto engine = load_engine(argv[1]);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().to_string().c_str());
    return 1;
  }
  CpuBackend backend;
  auto model = LlamaModel::load(*engine, backend);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().to_string().c_str());
    return 1;
  }
  ExecutorConfig config;
  auto ex = Executor::create(**model, backend, config);
  if (!ex.ok()) {
    std::fprintf(stderr, "%s\n", ex.status().to_string().c_str());
    return 1;
  }
  std::printf("engine %s: %s, max_batch_size %lld, max_num_tokens %lld\n%s\n", argv[1],
              dtype_name(engine->build.dtype), static_cast<long long>(engine->build.max_batch_size),
              static_cast<long long>(engine->build.max_num_tokens), (*ex)->kv_plan().c_str());
  run_level(**ex, 1, std::min(input, 16), 4, engine->model.vocab_size, 1);  // warm-up
  std::printf("%-11s %9s %12s %8s %10s %10s %10s %10s %10s\n", "concurrency", "seconds", "out tok/s", "x single",
              "TTFT p50", "TTFT p99", "ITL p50", "ITL p90", "ITL p99");
  double single = 0;
  for (int c : levels) {
    Run best;
    for (int r = 0; r < reps; ++r) {
      Run run = run_level(**ex, c, input, output, engine->model.vocab_size, 100 + r);
      if (run.tokens_per_s > best.tokens_per_s) best = run;
    }
    if (c == levels.front()) single = best.tokens_per_s;
    std::printf("%-11d %9.2f %12.1f %8.2f %8.1fms %8.1fms %8.1fms %8.1fms %8.1fms\n", c, best.seconds,
                best.tokens_per_s, best.tokens_per_s / single, percentile(best.ttft_ms, 0.5), percentile(best.ttft_ms, 0.99),
                percentile(best.itl_ms, 0.5), percentile(best.itl_ms, 0.9), percentile(best.itl_ms, 0.99));
    std::fflush(stdout);
  }
  (*ex)->shutdown();
  return 0;
}
