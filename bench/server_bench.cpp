// What the server costs: the same workload run in process (Executor API, callbacks) and through gRPC
// streaming (ServerCore + GrpcFrontend on loopback, a ModelStreamInfer stream per request from C++ client
// threads), alternating, in one process so that both see the same machine at the same time.
//
// 1. Throughput: `concurrency` requests at once (a burst), `input` random tokens in, `output` tokens out
//    (end id off, so both modes do identical work); output tokens/s and per-request latency (send to final
//    response) for each mode, best of `reps`.
// 2. Per-request overhead when idle: `overhead_requests` sequential 1-token requests of 8 tokens in each
//    mode (gRPC: on one open stream); the difference of the p50 round trips is what the server adds.
//
//   server_bench REPO [--input 128] [--output 128] [--concurrency 64] [--reps 3] [--overhead_requests 200]
// REPO is a repository whose tensorrt_llm model is decoupled (kiln repo init --decoupled); the in-process
// executor is made from the same engine and the same executor parameters.
#include <grpcpp/grpcpp.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <latch>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "bench_stats.h"
#include "executor/executor.h"
#include "grpc_service.grpc.pb.h"
#include "model/engine.h"
#include "server/grpc_frontend.h"
#include "server/server_core.h"

using namespace kiln;
using Clock = std::chrono::steady_clock;
using kiln::bench::percentile;

namespace {

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// CPU seconds this process has used (all threads: engine, compute pool, server and client).
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  int output = 0;
};

Workload make_workload(int n, int input, int output, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  Workload w;
  w.output = output;
  w.prompts.resize(n);
  for (auto& p : w.prompts)
    for (int t = 0; t < input; ++t) p.push_back(tok(rng));
  return w;
}

struct RunResult {
  double seconds = 0, tokens = 0, cpu = 0, iterations = 0;
  std::vector<double> latency_ms;  // per request: sent -> final response
  int errors = 0;
  double tokens_per_s() const { return tokens / seconds; }
};

// ---- in process ---------------------------------------------------------------------------------------------

// The server's engine iterations so far (its metrics' iteration counter).
double server_iterations(const server::ServerCore& core) {
  const std::string text = core.metrics_text();
  const std::string key = "general_type=\"iteration_counter\"} ";
  const size_t at = text.find(key);
  return at == std::string::npos ? 0 : std::stod(text.substr(at + key.size()));
}

RunResult run_in_process(Executor& ex, const Workload& w) {
  std::mutex mu;
  std::condition_variable done;
  RunResult res;
  size_t finals = 0;
  const auto t0 = Clock::now();
  std::vector<Clock::time_point> sent(w.prompts.size());
  for (size_t i = 0; i < w.prompts.size(); ++i) {
    Request r;
    r.input_ids = w.prompts[i];
    r.max_new_tokens = w.output;
    r.end_ids = std::vector<int32_t>{};
    r.streaming = true;
    r.on_response = [&, i](const Response& resp) {
      std::lock_guard<std::mutex> lock(mu);
      if (!resp.error.ok()) ++res.errors;
      if (!resp.output_ids.empty()) res.tokens += static_cast<double>(resp.output_ids[0].size());
      if (resp.is_final) {
        res.latency_ms.push_back(ms_since(sent[i]));
        ++finals;
        done.notify_all();
      }
    };
    sent[i] = Clock::now();
    if (!ex.enqueue(std::move(r)).ok()) ++res.errors, ++finals;
  }
  std::unique_lock<std::mutex> lock(mu);
  done.wait(lock, [&] { return finals == w.prompts.size(); });
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

// One request through the executor's blocking API (enqueue, then await_final on the calling thread): the
// in-process counterpart of a client thread that sends a request and reads its answer. Returns ms (-1: error).
double in_process_round_trip(Executor& ex, const std::vector<int32_t>& prompt, int output) {
  Request r;
  r.input_ids = prompt;
  r.max_new_tokens = output;
  r.end_ids = std::vector<int32_t>{};
  const auto sent = Clock::now();
  Result<RequestId> id = ex.enqueue(std::move(r));
  if (!id.ok()) return -1;
  Result<Response> final = ex.await_final(*id);
  const double ms = ms_since(sent);
  return final.ok() && final->error.ok() ? ms : -1;
}

// ---- through gRPC ---------------------------------------------------------------------------------------------

inference::ModelInferRequest grpc_request(const std::vector<int32_t>& ids, int output) {
  inference::ModelInferRequest req;
  req.set_model_name("tensorrt_llm");
  auto add = [&](const char* name, const char* type, std::vector<int64_t> shape, const void* data, size_t bytes) {
    auto* in = req.add_inputs();
    in->set_name(name);
    in->set_datatype(type);
    for (int64_t d : shape) in->add_shape(d);
    req.add_raw_input_contents(std::string(static_cast<const char*>(data), bytes));
  };
  const int32_t len = static_cast<int32_t>(ids.size()), out = output, end = -1;
  const bool streaming = true;
  add("input_ids", "INT32", {1, len}, ids.data(), ids.size() * 4);
  add("input_lengths", "INT32", {1, 1}, &len, 4);
  add("request_output_len", "INT32", {1, 1}, &out, 4);
  add("end_id", "INT32", {1, 1}, &end, 4);
  add("streaming", "BOOL", {1, 1}, &streaming, 1);
  return req;
}

bool is_final(const inference::ModelStreamInferResponse& m) {
  auto it = m.infer_response().parameters().find("triton_final_response");
  return it != m.infer_response().parameters().end() && it->second.bool_param();
}

// Reads one request's responses up to its final one: the output tokens received, or -1 on an error.
template <typename Stream>
double read_until_final(Stream& stream, bool report_errors) {
  double tokens = 0;
  inference::ModelStreamInferResponse m;
  while (stream.Read(&m)) {
    if (!m.error_message().empty()) {
      if (report_errors) std::fprintf(stderr, "stream error: %s\n", m.error_message().c_str());
      return -1;
    }
    for (int i = 0; i < m.infer_response().outputs_size(); ++i)
      if (m.infer_response().outputs(i).name() == "output_ids")
        tokens += static_cast<double>(m.infer_response().raw_output_contents(i).size() / 4);
    if (is_final(m)) return tokens;
  }
  return -1;
}

// A client stream (one ModelStreamInfer call) that sends requests one after another, as tritonclient's
// start_stream / async_stream_infer does.
class ClientStream {
 public:
  explicit ClientStream(inference::GRPCInferenceService::Stub& stub) : stream_(stub.ModelStreamInfer(&ctx_)) {}
  ~ClientStream() {
    stream_->WritesDone();
    grpc::Status s = stream_->Finish();
    if (!s.ok()) std::fprintf(stderr, "stream: %s\n", s.error_message().c_str());
  }
  // Sends one request and reads its responses; returns the latency (ms) from the write to the final
  // response, and the tokens received (-1: an error).
  std::pair<double, double> request(const inference::ModelInferRequest& req, bool report_errors = true) {
    const auto sent = Clock::now();
    if (!stream_->Write(req)) return {ms_since(sent), -1};
    const double tokens = read_until_final(*stream_, report_errors);
    return {ms_since(sent), tokens};
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<inference::ModelInferRequest, inference::ModelStreamInferResponse>> stream_;
};

RunResult run_grpc(inference::GRPCInferenceService::Stub& stub, const Workload& w) {
  std::vector<inference::ModelInferRequest> reqs;
  for (const auto& p : w.prompts) reqs.push_back(grpc_request(p, w.output));
  RunResult res;
  std::mutex mu;
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  // Every client opens its stream first; then all send at once, a burst like the in-process one.
  std::latch opened(static_cast<std::ptrdiff_t>(reqs.size()));
  for (size_t i = 0; i < reqs.size(); ++i)
    threads.emplace_back([&, i] {
      ClientStream stream(stub);  // a stream per concurrent client
      opened.arrive_and_wait();
      const auto [ms, tokens] = stream.request(reqs[i]);
      std::lock_guard<std::mutex> lock(mu);
      if (tokens < 0) ++res.errors;
      else res.tokens += tokens;
      res.latency_ms.push_back(ms);
    });
  for (auto& t : threads) t.join();
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

// The idle-latency client: one open stream; request() sends the 8-token, 1-output request and returns its
// round trip in ms (-1: an error); floor() sends one for an unknown model (answered without the engine);
// live() makes a unary ServerLive call.
class IdleClient {
 public:
  IdleClient(const std::string& address, int64_t vocab)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        stub_(inference::GRPCInferenceService::NewStub(channel_)),
        req_(grpc_request(make_workload(1, 8, 1, vocab, 7).prompts[0], 1)),
        unknown_(req_),
        stream_(std::make_unique<ClientStream>(*stub_)) {
    unknown_.set_model_name("no_such_model");
  }
  double request() {
    const auto [ms, tokens] = stream_->request(req_);
    return tokens == 1 ? ms : -1;
  }
  double floor() { return stream_->request(unknown_, false).first; }
  double live() {
    grpc::ClientContext ctx;
    inference::ServerLiveRequest lreq;
    inference::ServerLiveResponse lresp;
    const auto t = Clock::now();
    return stub_->ServerLive(&ctx, lreq, &lresp).ok() ? ms_since(t) : -1;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  inference::ModelInferRequest req_, unknown_;
  std::unique_ptr<ClientStream> stream_;
};

// `server_bench --idle-client ADDRESS VOCAB`: an IdleClient in its own process, driven over stdin/stdout:
// each command byte ('r' request, 'f' floor, 'l' live) is answered with one line holding the milliseconds.
int idle_client_main(const std::string& address, int64_t vocab) {
  IdleClient client(address, vocab);
  for (int c; (c = std::getchar()) != EOF && c != 'q';) {
    const double ms = c == 'r' ? client.request() : c == 'f' ? client.floor() : c == 'l' ? client.live() : -1;
    std::printf("%.6f\n", ms);
    std::fflush(stdout);
  }
  return 0;
}

// The parent's side of that process.
class IdleClientProcess {
 public:
  IdleClientProcess(const char* self, const std::string& address, int64_t vocab) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) std::perror("pipe"), std::exit(1);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    posix_spawn_file_actions_addclose(&fa, to_child[1]);
    posix_spawn_file_actions_addclose(&fa, from_child[0]);
    const std::string v = std::to_string(vocab);
    char* const args[] = {const_cast<char*>(self), const_cast<char*>("--idle-client"),
                          const_cast<char*>(address.c_str()), const_cast<char*>(v.c_str()), nullptr};
    if (posix_spawn(&pid_, self, &fa, nullptr, args, environ) != 0) std::perror("posix_spawn"), std::exit(1);
    posix_spawn_file_actions_destroy(&fa);
    close(to_child[0]);
    close(from_child[1]);
    to_ = fdopen(to_child[1], "w");
    from_ = fdopen(from_child[0], "r");
  }
  ~IdleClientProcess() {
    std::fputc('q', to_);
    std::fclose(to_);
    std::fclose(from_);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  double ask(char command) {
    std::fputc(command, to_);
    std::fflush(to_);
    double ms = -1;
    if (std::fscanf(from_, "%lf", &ms) != 1) return -1;
    return ms;
  }

 private:
  pid_t pid_ = 0;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

int flag(int argc, char** argv, const char* name, int fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoi(argv[i + 1]);
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && !std::strcmp(argv[1], "--idle-client")) return idle_client_main(argv[2], std::atoll(argv[3]));
  if (argc < 2) {
    std::fprintf(stderr, "usage: server_bench REPO [--input 128] [--output 128] [--concurrency 64] [--reps 3] "
                         "[--overhead_requests 200]\n");
    return 2;
  }
  const std::string repo = argv[1];
  const int input = flag(argc, argv, "--input", 128), output = flag(argc, argv, "--output", 128);
  const int concurrency = flag(argc, argv, "--concurrency", 64), reps = flag(argc, argv, "--reps", 3);
  const int overhead_n = flag(argc, argv, "--overhead_requests", 200);
  std::string mode = "both";  // --mode local|grpc: one side only (for profiling)
  for (int i = 2; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];

  // The server: gRPC only, on a free loopback port.
  server::ServerOptions so;
  so.model_repository = repo;
  so.http_port = so.metrics_port = -1;
  so.grpc_port = 0;
  so.http_address = "127.0.0.1";
  auto core = server::ServerCore::create(so);
  if (!core.ok() || !(*core)->ready()) {
    std::fprintf(stderr, "server: %s\n", core.ok() ? "a model did not load" : core.status().to_string().c_str());
    return 1;
  }
  auto fe = server::GrpcFrontend::start(**core, "127.0.0.1", 0);
  if (!fe.ok()) {
    std::fprintf(stderr, "gRPC: %s\n", fe.status().to_string().c_str());
    return 1;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string((*fe)->port()),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = inference::GRPCInferenceService::NewStub(channel);

  // In process: the same engine, the executor's defaults (what the repository's parameters also leave).
  const std::string engine_dir = (std::filesystem::path(repo) / "tensorrt_llm" / "1").string();
  auto engine = load_engine(engine_dir);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().to_string().c_str());
    return 1;
  }
  CpuBackend backend;
  auto model = LlamaModel::load(*engine, backend);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().to_string().c_str()), 1;
  auto ex = Executor::create(**model, backend, ExecutorConfig{});
  if (!ex.ok()) return std::fprintf(stderr, "%s\n", ex.status().to_string().c_str()), 1;
  std::printf("engine %s: %s, max_batch_size %lld\nin process: %s\n", engine_dir.c_str(),
              dtype_name(engine->build.dtype), static_cast<long long>(engine->build.max_batch_size),
              (*ex)->kv_plan().c_str());

  const int64_t vocab = engine->model.vocab_size;
  // Warm-up both paths.
  run_in_process(**ex, make_workload(2, 16, 4, vocab, 1));
  run_grpc(*stub, make_workload(2, 16, 4, vocab, 1));

  // 1. Throughput, alternating modes (--reps 0: only the idle overhead below).
  if (reps > 0) std::printf("\n%d concurrent requests, %d tokens in, %d out (end id off), best of %d, modes alternating\n",
              concurrency, input, output, reps);
  if (reps > 0)
    std::printf("%-12s %9s %11s %14s %14s %14s %7s %9s %11s\n", "mode", "seconds", "out tok/s", "latency p50",
              "latency p90", "latency p99", "errors", "CPU s", "iterations");
  RunResult best_local, best_grpc;
  for (int r = 0; r < reps; ++r) {
    const Workload w = make_workload(concurrency, input, output, vocab, 100 + r);
    RunResult a, b;
    if (mode != "grpc") {
      const double c0 = cpu_seconds(), i0 = static_cast<double>((*ex)->stats().iterations);
      a = run_in_process(**ex, w);
      a.cpu = cpu_seconds() - c0;
      a.iterations = static_cast<double>((*ex)->stats().iterations) - i0;
    }
    if (mode != "local") {
      const double c0 = cpu_seconds(), i0 = server_iterations(**core);
      b = run_grpc(*stub, w);
      b.cpu = cpu_seconds() - c0;
      b.iterations = server_iterations(**core) - i0;
    }
    if (mode == "local" || mode == "grpc") {
      const RunResult& x = mode == "local" ? a : b;
      std::printf("  rep %d (%s only): %.1f tok/s, %.2f CPU s, %.0f iterations\n", r, mode.c_str(), x.tokens_per_s(),
                  x.cpu, x.iterations);
      continue;
    }
    if (r == 0 || a.tokens_per_s() > best_local.tokens_per_s()) best_local = a;
    if (r == 0 || b.tokens_per_s() > best_grpc.tokens_per_s()) best_grpc = b;
    std::printf("  rep %d: in process %.1f tok/s, gRPC %.1f tok/s\n", r, a.tokens_per_s(), b.tokens_per_s());
  }
  if (mode == "local" || mode == "grpc") return 0;
  if (reps > 0) {
  auto row = [](const char* mode, const RunResult& x) {
    std::printf("%-12s %9.2f %11.1f %12.1fms %12.1fms %12.1fms %7d %9.2f %11.0f\n", mode, x.seconds, x.tokens_per_s(),
                percentile(x.latency_ms, 0.5), percentile(x.latency_ms, 0.9), percentile(x.latency_ms, 0.99), x.errors, x.cpu, x.iterations);
  };
  row("in process", best_local);
  row("gRPC stream", best_grpc);
  const double cost = 1.0 - best_grpc.tokens_per_s() / best_local.tokens_per_s();
  std::printf("server throughput cost: %.2f%% (target <= 5%%); p50 latency added under load: %.2f ms\n",
              100.0 * cost, percentile(best_grpc.latency_ms, 0.5) - percentile(best_local.latency_ms, 0.5));
  }

  // 2. Per-request overhead on an idle server: 1 token out of 8 in, one request at a time, alternating with
  // the same request in process (sent and awaited on one thread, as the gRPC client does). The gRPC client keeps one stream open (as tritonclient's start_stream) and
  // runs in its own process, as real clients do. The transport's own floor is measured twice: requests sent
  // back to back (hot), and a request right after an in-process engine request (cold: the engine's pass
  // has evicted gRPC's code and data from the caches and the transport's threads slept through it, which is
  // what every real request meets on an idle server). Floor requests are answered without the engine (an
  // unknown model's error response).
  const Workload tiny = make_workload(1, 8, 1, vocab, 7);
  const std::string address = "127.0.0.1:" + std::to_string((*fe)->port());
  std::vector<double> local_ms, grpc_ms, live_ms, hot_floor_ms, cold_floor_ms;
  {
    IdleClientProcess child(argv[0], address, vocab);
    for (int i = 0; i < overhead_n; ++i) {
      local_ms.push_back(in_process_round_trip(**ex, tiny.prompts[0], 1));
      const double ms = child.ask('r');
      if (ms < 0) return std::fprintf(stderr, "idle request from the client process failed\n"), 1;
      grpc_ms.push_back(ms);
      in_process_round_trip(**ex, tiny.prompts[0], 1);
      cold_floor_ms.push_back(child.ask('f'));
    }
    for (int i = 0; i < overhead_n; ++i) {
      live_ms.push_back(child.ask('l'));
      hot_floor_ms.push_back(child.ask('f'));
    }
  }
  std::printf("\ngRPC floor on this machine (client process, no engine): unary ServerLive p50 %.3f ms; stream request "
              "p50 %.3f ms hot, %.3f ms cold (right after an engine pass)\n", percentile(live_ms, 0.5),
              percentile(hot_floor_ms, 0.5), percentile(cold_floor_ms, 0.5));
  const double added = percentile(grpc_ms, 0.5) - percentile(local_ms, 0.5);
  std::printf("idle round trip, 8 tokens in, 1 out, %d requests each, alternating: in process p50 %.3f ms, gRPC "
              "stream p50 %.3f ms (p90 %.3f ms): the server adds %.3f ms at p50 (target < 0.5 ms), of which the "
              "cold transport floor is %.3f ms\n", overhead_n, percentile(local_ms, 0.5), percentile(grpc_ms, 0.5),
              percentile(grpc_ms, 0.9), added, percentile(cold_floor_ms, 0.5));
  (*ex)->shutdown();
  (*fe)->shutdown();
  (*core)->shutdown(std::chrono::seconds(5));
  const bool errors = best_local.errors || best_grpc.errors;
  return errors ? 1 : 0;
}
