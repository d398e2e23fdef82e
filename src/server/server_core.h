// The transport-independent server: the model repository, the loaded models (each with its executor),
// inference calls, statistics and metrics. The gRPC and HTTP frontends (grpc_frontend, http_frontend) only
// translate their wire formats to and from these calls, so every rule is enforced once, here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "core/status.h"
#include "server/infer_tensor.h"

namespace inference {
class ModelConfig;
}

namespace kiln::server {

enum class ModelControlMode { kNone, kExplicit, kPoll };

struct ServerOptions {
  std::string model_repository;
  ModelControlMode control_mode = ModelControlMode::kNone;
  std::vector<std::string> load_models;  // --load-model (explicit mode); "*" = all
  std::string http_address = "0.0.0.0";
  int http_port = 8000, grpc_port = 8001, metrics_port = 8002;  // 0: pick a free port; -1: off
  int log_verbose = 0;
  uint64_t max_request_bytes = 64ull << 20;  // HTTP body / gRPC message cap
  int max_json_depth = 64;
  uint64_t max_header_bytes = 16 << 10;
  std::chrono::seconds shutdown_timeout{30};  // SIGTERM: in-flight requests get this long to finish
  std::chrono::seconds repository_poll{15};   // poll mode: time between scans of the repository
  Status validate() const;
};

// A tensor's metadata as model metadata reports it.
struct TensorMetadata {
  std::string name;
  std::string datatype;        // "INT32", "BYTES", ...
  std::vector<int64_t> shape;  // -1 = variable; includes the batch dimension (-1) when max_batch_size > 0
  bool optional = false;
};

struct ModelMetadata {
  std::string name;
  std::vector<std::string> versions;
  std::string platform;  // tensorrt_llm models: their backend ("tensorrtllm"); "kiln_text"; "ensemble"
  std::vector<TensorMetadata> inputs, outputs;
};

struct ModelStatus {
  std::string name, version;
  std::string state;   // "READY", "UNAVAILABLE", "LOADING"
  std::string reason;  // why it is not ready
};

// Triton's per-model statistics (durations in nanoseconds).
struct ModelStats {
  std::string name, version;
  uint64_t last_inference_ms = 0, inference_count = 0, execution_count = 0;
  uint64_t success_count = 0, success_ns = 0, fail_count = 0, fail_ns = 0;
  uint64_t queue_ns = 0, compute_ns = 0;
};

// One inference call as a frontend hands it over.
struct InferCall {
  std::string model, version;  // version "" = the latest
  std::string id;              // the client's request id, echoed back
  std::vector<InferTensor> inputs;
  std::set<std::string> requested_outputs;  // empty: all
  bool stream = false;  // the transport can carry several responses (gRPC ModelStreamInfer, generate_stream)
  uint64_t priority = 0;             // Triton's request priority: 0 = the model's default, 1 = highest
  std::optional<uint64_t> timeout_us;  // Triton's request timeout: fail if still queued after this long
};

// A request-level parameter (KServe v2 "parameters") as either protocol carries it.
using RequestParameter = std::variant<bool, int64_t, uint64_t, double, std::string>;

// Takes one request parameter into the call: `priority` and `timeout` (microseconds; 0 = none). Sequence
// batching parameters and anything unknown are refused by name, never ignored. The protocol-specific ones
// (HTTP binary_data_output, gRPC triton_enable_empty_final_response) are the frontends' own.
Status apply_request_parameter(InferCall& call, const std::string& key, const RequestParameter& value);

// One response to a call: a result, an error, or (streams) an empty final flag.
struct InferReply {
  std::string model, version, id;
  Status error;
  std::vector<InferTensor> outputs;
  bool final = true;  // the last reply of this call (Triton's triton_final_response)
};

// Called from engine threads, once per reply; the last one has final = true. Keep it short.
using ReplyFn = std::function<void(InferReply)>;

// Cancels a call (client gone); safe to call after the call ended.
using CancelFn = std::function<void()>;

class Model;  // a loaded model (server/model.h)

class ServerCore {
 public:
  static Result<std::unique_ptr<ServerCore>> create(const ServerOptions& options);
  ~ServerCore();

  bool live() const { return true; }
  bool ready() const;  // every model that should be loaded is loaded, and not shutting down
  std::string name() const { return "kiln"; }
  std::string version() const;
  std::vector<std::string> extensions() const;

  // Models. `version` "" means the latest (kiln serves version "1" of each model folder).
  Result<ModelMetadata> model_metadata(const std::string& name, const std::string& version) const;
  Result<bool> model_ready(const std::string& name, const std::string& version) const;
  // The parsed config.pbtxt (plus what kiln filled in, e.g. max_batch_size from the engine).
  Result<std::shared_ptr<const inference::ModelConfig>> model_config(const std::string& name,
                                                                     const std::string& version) const;
  std::vector<ModelStatus> repository_index(bool ready_only) const;
  // The repository API (explicit model control mode only; refused otherwise, as Triton does).
  Status load_model(const std::string& name);
  Status unload_model(const std::string& name);
  Result<std::vector<ModelStats>> statistics(const std::string& name, const std::string& version) const;

  // A loaded model (the latest version), for typed callers such as the OpenAI API: NotFound when unknown,
  // Unavailable when it failed to load.
  Result<std::shared_ptr<Model>> model(const std::string& name) const { return find(name, ""); }

  // Starts an inference. Errors found before anything is queued come back here (and no reply follows);
  // afterwards every outcome is a reply.
  Result<CancelFn> infer(InferCall call, ReplyFn on_reply);

  // Prometheus text format (the metrics port).
  std::string metrics_text() const;

  // Log settings (level only: never a file path from the network).
  int log_verbose() const { return log_verbose_.load(); }
  void set_log_verbose(int level) { log_verbose_.store(level); }

  // Stops accepting calls; in-flight calls get `timeout` to finish, then are cancelled.
  void shutdown(std::chrono::seconds timeout);

  const ServerOptions& options() const { return options_; }

 private:
  explicit ServerCore(const ServerOptions& o) : options_(o), log_verbose_(o.log_verbose) {}
  Result<std::shared_ptr<Model>> find(const std::string& name, const std::string& version) const;
  Status check_repository_api() const;
  Status load(const std::string& name);  // (re)loads a model folder, whatever the control mode
  Status unload(const std::string& name);
  // Poll mode: loads models that appeared or changed and unloads those whose folder went away.
  void poll_repository();
  std::filesystem::file_time_type model_signature(const std::string& name) const;

  ServerOptions options_;
  std::atomic<int> log_verbose_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Model>> models_;  // loaded, by name
  std::map<std::string, std::string> failed_;             // name -> why it did not load
  // Poll mode: what each folder looked like when it was last (re)loaded, and the scanning thread.
  std::map<std::string, std::filesystem::file_time_type> seen_;
  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  std::thread poller_;
};

}  // namespace kiln::server
