// kiln bench: offline throughput and latency of an engine, like trtllm-bench. N requests of random tokens
// (fixed lengths, or lengths drawn from a JSONL dataset), at most `concurrency` in flight (a finished
// request is replaced at once), output length forced (end ids off) so that runs are comparable.
// Reports output tokens/s, requests/s, time to first token, inter-token latency and end-to-end latency
// percentiles, per-request prefill and decode rates, and peak resident memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/backend_factory.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/executor_flags.h"
#include "executor/executor.h"
#include "model/engine.h"
#include "model/loaded_model.h"

namespace kiln::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int32_t input = 0, output = 0;
};

// {"input_len": N, "output_len": M} per line.
Result<std::vector<Shape>> read_dataset(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("--dataset " + path + ": cannot open");
  std::vector<Shape> shapes;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(lineno) + ": ";
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return invalid_argument(where + "expected {\"input_len\": N, \"output_len\": M}");
    Shape s;
    for (auto [key, dst] : {std::pair{"input_len", &s.input}, std::pair{"output_len", &s.output}}) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 24))
        return invalid_argument(where + "'" + key + "' must be a positive integer");
      *dst = it->get<int32_t>();
    }
    shapes.push_back(s);
  }
  if (shapes.empty()) return invalid_argument("--dataset " + path + " holds no requests");
  return shapes;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

struct Timing {
  Clock::time_point sent, first, last;
  std::vector<double> itl_ms;
  int64_t tokens = 0;
  bool done = false;
};

struct RunResult {
  double seconds = 0;
  int64_t output_tokens = 0, input_tokens = 0;
  std::vector<double> ttft_ms, itl_ms, e2e_ms, prefill_tps, decode_tps;
};

// Runs `shapes` with at most `concurrency` requests in flight.
Result<RunResult> run(Executor& ex, const Request& proto, const std::vector<Shape>& shapes, int64_t concurrency,
                      int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Timing> t(shapes.size());
  size_t next = 0, finished = 0, in_flight = 0;
  Status failure;
  RunResult res;
  const auto t0 = Clock::now();
  auto submit = [&](size_t i) -> Status {  // with mu held
    Request r = proto;
    r.input_ids.resize(static_cast<size_t>(shapes[i].input));
    for (int32_t& id : r.input_ids) id = tok(rng);
    r.max_new_tokens = shapes[i].output;
    r.end_ids = std::vector<int32_t>{};  // forced length
    r.streaming = true;
    r.on_response = [&, i](const Response& resp) {
      const auto now = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      Timing& x = t[i];
      if (!resp.error.ok()) {
        if (failure.ok()) failure = resp.error.with_context("request " + std::to_string(i));
      } else if (!resp.output_ids.empty() && !resp.output_ids[0].empty()) {
        const int64_t n = static_cast<int64_t>(resp.output_ids[0].size());
        if (x.tokens == 0) x.first = now;
        else x.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - x.last).count() / static_cast<double>(n));
        x.last = now;
        x.tokens += n;
      }
      if (resp.is_final) {
        x.done = true;
        ++finished;
        --in_flight;
        cv.notify_all();
      }
    };
    t[i].sent = Clock::now();
    Result<RequestId> id = ex.enqueue(std::move(r));
    if (!id.ok()) return id.status().with_context("request " + std::to_string(i));
    ++in_flight;
    return {};
  };
  std::unique_lock<std::mutex> lock(mu);  // callbacks take it: they wait while a request is being submitted
  while (finished < shapes.size()) {
    while (next < shapes.size() && static_cast<int64_t>(in_flight) < concurrency && failure.ok())
      if (Status s = submit(next++); !s.ok()) failure = s;
    if (!failure.ok()) break;
    cv.wait(lock, [&] {
      return !failure.ok() || finished == shapes.size() ||
             (next < shapes.size() && static_cast<int64_t>(in_flight) < concurrency);
    });
  }
  if (!failure.ok()) {
    cv.wait(lock, [&] { return in_flight == 0; });  // the callbacks use this frame
    return failure;
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (size_t i = 0; i < t.size(); ++i) {
    const Timing& x = t[i];
    res.output_tokens += x.tokens;
    res.input_tokens += shapes[i].input;
    const double ttft = std::chrono::duration<double, std::milli>(x.first - x.sent).count();
    res.ttft_ms.push_back(ttft);
    res.e2e_ms.push_back(std::chrono::duration<double, std::milli>(x.last - x.sent).count());
    res.itl_ms.insert(res.itl_ms.end(), x.itl_ms.begin(), x.itl_ms.end());
    res.prefill_tps.push_back(1000.0 * shapes[i].input / ttft);
    if (x.tokens > 1) {
      const double decode_ms = std::chrono::duration<double, std::milli>(x.last - x.first).count();
      res.decode_tps.push_back(1000.0 * static_cast<double>(x.tokens - 1) / decode_ms);
    }
  }
  return res;
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // KiB on Linux
}

}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
  std::vector<FlagSpec> specs = {
      {"engine_dir", true, "engine dir from `kiln build`"},
      {"input_len", true, "tokens in per request (random ids; default 128)"},
      {"output_len", true, "tokens out per request, forced: end ids are ignored (default 128)"},
      {"dataset", true, "JSONL of {\"input_len\": N, \"output_len\": M}, one request a line (instead of the lengths)"},
      {"num_requests", true, "requests to run (default: 64; with --dataset, its lines, cycled)"},
      {"concurrency", true, "requests in flight at most (default: all at once)"},
      {"warmup", true, "requests run first and not measured (default 1)"},
      {"seed", true, "seed of the random prompt tokens (default 1)"},
      {"json", false, "print one JSON object instead of the table"},
  };
  for (auto more : {decoding_flag_specs(), executor_flag_specs()}) specs.insert(specs.end(), more.begin(), more.end());
  if (wants_help(argv)) {
    std::fputs(usage("bench",
                     "Offline benchmark: N requests of random tokens through the in-flight batching executor, output "
                     "length forced; tokens/s, requests/s, TTFT and inter-token latency percentiles, peak memory.",
                     specs)
                   .c_str(),
               stdout);
    return 0;
  }
  auto body = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("engine_dir"));
    KILN_ASSIGN_OR_RETURN(Request proto, request_template_from(a));
    if (proto.sampling.beam_width > 1) return unimplemented("kiln bench measures beam_width 1 only");
    KILN_ASSIGN_OR_RETURN(ExecutorConfig config, executor_config_from(a));
    std::vector<Shape> base;
    if (auto d = a.get("dataset")) {
      if (a.has("input_len") || a.has("output_len")) return invalid_argument("--dataset replaces --input_len/--output_len");
      KILN_ASSIGN_OR_RETURN(base, read_dataset(*d));
    } else {
      KILN_ASSIGN_OR_RETURN(int64_t in, a.get_int("input_len", 128));
      KILN_ASSIGN_OR_RETURN(int64_t out, a.get_int("output_len", 128));
      if (in < 1 || in > (1 << 24) || out < 1 || out > (1 << 24))
        return invalid_argument("--input_len and --output_len must be positive");
      base.push_back({static_cast<int32_t>(in), static_cast<int32_t>(out)});
    }
    KILN_ASSIGN_OR_RETURN(int64_t n, a.get_int("num_requests", a.has("dataset") ? static_cast<int64_t>(base.size()) : 64));
    KILN_ASSIGN_OR_RETURN(int64_t concurrency, a.get_int("concurrency", n));
    KILN_ASSIGN_OR_RETURN(int64_t warmup, a.get_int("warmup", 1));
    KILN_ASSIGN_OR_RETURN(int64_t seed, a.get_int("seed", 1));
    if (n < 1 || n > (1 << 24)) return invalid_argument("--num_requests must be in 1..16777216");
    if (concurrency < 1) return invalid_argument("--concurrency must be positive");
    if (warmup < 0 || warmup > n) return invalid_argument("--warmup must be in 0..num_requests");
    std::vector<Shape> shapes;
    for (int64_t i = 0; i < n; ++i) shapes.push_back(base[static_cast<size_t>(i) % base.size()]);

    KILN_ASSIGN_OR_RETURN(Engine engine, load_engine(dir));
    for (const Shape& s : shapes)
      if (s.input > engine.build.max_input_len || s.input + s.output > engine.build.max_seq_len)
        return invalid_argument("a request of " + std::to_string(s.input) + " in / " + std::to_string(s.output) +
                                " out exceeds the engine (max_input_len " + std::to_string(engine.build.max_input_len) +
                                ", max_seq_len " + std::to_string(engine.build.max_seq_len) + ")");
    KILN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(dir));  // one rank, or every rank of a tp/pp engine
    KILN_ASSIGN_OR_RETURN(auto executor, Executor::create(*loaded.runner, config));
    std::fprintf(stderr, "kiln bench: %s\n", executor->kv_plan().c_str());
    const int64_t vocab = engine.model.vocab_size;
    if (warmup > 0) {
      std::vector<Shape> w(shapes.begin(), shapes.begin() + warmup);
      KILN_RETURN_IF_ERROR(run(*executor, proto, w, concurrency, vocab, static_cast<uint32_t>(seed) + 7).status());
    }
    const int64_t it0 = executor->stats().iterations;
    KILN_ASSIGN_OR_RETURN(RunResult r, run(*executor, proto, shapes, concurrency, vocab, static_cast<uint32_t>(seed)));
    const int64_t iterations = executor->stats().iterations - it0;
    executor->shutdown();

    const double out_tps = static_cast<double>(r.output_tokens) / r.seconds;
    nlohmann::json j = {
        {"engine_dir", dir},
        {"backend", loaded.runner->backend_name()},
        {"tp_size", engine.build.tp_size},
        {"pp_size", engine.build.pp_size},
        {"weights", engine.build.weight_format()},
        {"num_requests", n},
        {"concurrency", std::min(concurrency, n)},
        {"input_tokens", r.input_tokens},
        {"output_tokens", r.output_tokens},
        {"seconds", r.seconds},
        {"output_tokens_per_s", out_tps},
        {"requests_per_s", static_cast<double>(n) / r.seconds},
        {"iterations", iterations},
        {"peak_rss_mib", peak_rss_mib()},
    };
    auto pcts = [](const std::vector<double>& v) {
      return nlohmann::json{{"mean", mean(v)}, {"p50", percentile(v, 0.5)}, {"p90", percentile(v, 0.9)}, {"p99", percentile(v, 0.99)}};
    };
    j["ttft_ms"] = pcts(r.ttft_ms);
    j["itl_ms"] = pcts(r.itl_ms);
    j["e2e_ms"] = pcts(r.e2e_ms);
    j["prefill_tokens_per_s_per_request"] = pcts(r.prefill_tps);
    j["decode_tokens_per_s_per_request"] = pcts(r.decode_tps);
    if (a.has("json")) {
      std::printf("%s\n", j.dump().c_str());
      return {};
    }
    std::printf("engine %s (backend %s; weights %s; tp_size %d, pp_size %d)\n", dir.c_str(),
                loaded.runner->backend_name().c_str(), engine.build.weight_format().c_str(), engine.build.tp_size,
                engine.build.pp_size);
    std::printf("%lld requests, at most %lld in flight, %lld input / %lld output tokens, %lld iterations, %.3f s\n",
                static_cast<long long>(n), static_cast<long long>(std::min(concurrency, n)),
                static_cast<long long>(r.input_tokens), static_cast<long long>(r.output_tokens),
                static_cast<long long>(iterations), r.seconds);
    std::printf("output tokens/s:   %.1f\nrequests/s:        %.3f\n", out_tps, static_cast<double>(n) / r.seconds);
    auto row = [](const char* name, const std::vector<double>& v, const char* unit) {
      std::printf("%-24s mean %9.2f  p50 %9.2f  p90 %9.2f  p99 %9.2f %s\n", name, mean(v), percentile(v, 0.5),
                  percentile(v, 0.9), percentile(v, 0.99), unit);
    };
    row("time to first token", r.ttft_ms, "ms");
    row("inter-token latency", r.itl_ms, "ms");
    row("end-to-end latency", r.e2e_ms, "ms");
    row("prefill per request", r.prefill_tps, "tokens/s");
    row("decode per request", r.decode_tps, "tokens/s");
    std::printf("peak resident memory: %.1f MiB\n", peak_rss_mib());
    return {};
  };
  Status s = body();
  return s.ok() ? 0 : report_error("bench", s);
}

}  // namespace kiln::cli
