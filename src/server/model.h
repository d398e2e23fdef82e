// A loaded model of the repository. The kinds: `tensorrt_llm` (token ids in, token ids out, one executor
// per model); text models come next. Counters for statistics and metrics live here, per model.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "executor/executor.h"
#include "model/engine.h"
#include "model/loaded_model.h"
#include "model_config.pb.h"
#include "server/metrics.h"
#include "server/reply_worker.h"
#include "server/server_core.h"
#include "server/trtllm_tensors.h"

namespace kiln::server {

class Model : public std::enable_shared_from_this<Model> {
 public:
  virtual ~Model() = default;
  const std::string& name() const { return name_; }
  const std::string& version() const { return version_; }
  std::shared_ptr<const inference::ModelConfig> config() const { return config_; }
  virtual ModelMetadata metadata() const = 0;
  virtual Result<CancelFn> infer(InferCall call, ReplyFn on_reply) = 0;
  // This model's samples (the Triton core counters; subclasses add theirs).
  virtual void metrics(MetricsText& out) const;
  ModelStats stats() const;
  // Stops taking calls; lets running ones finish for up to `timeout`, then cancels them.
  virtual void shutdown(std::chrono::seconds timeout) = 0;

 protected:
  Model(std::string name, std::shared_ptr<inference::ModelConfig> config)
      : name_(std::move(name)), config_(std::move(config)) {}
  // Statistics, updated by the subclasses: one call (request) of `rows` batch rows (Triton's inference count
  // counts rows; its execution count, executions).
  void record(bool ok, uint64_t duration_ns, uint64_t queue_ns, uint64_t compute_ns, uint64_t rows = 1);
  std::string labels() const { return "model=\"" + name_ + "\",version=\"" + version_ + "\""; }

  std::string name_, version_ = "1";
  std::shared_ptr<inference::ModelConfig> config_;
  std::atomic<uint64_t> success_{0}, failure_{0}, success_ns_{0}, fail_ns_{0}, queue_ns_{0}, compute_ns_{0},
      inferences_{0}, executions_{0}, last_ms_{0}, pending_{0};
};

// The `tensorrt_llm` model: its engine (gpt_model_path), an executor configured from its parameters.
class TrtllmModel : public Model {
 public:
  static Result<std::shared_ptr<TrtllmModel>> load(const std::string& model_dir, const std::string& name,
                                                   std::shared_ptr<inference::ModelConfig> config);
  ~TrtllmModel() override;
  ModelMetadata metadata() const override;
  // The tensor contract (trtllm_tensors.h) on top of generate().
  Result<CancelFn> infer(InferCall call, ReplyFn on_reply) override;

  // Token-level generation: the seam under the tensor contract and typed callers (the OpenAI API). Runs
  // `requests` (one per row) on the executor with the call's priority and queue timeout as a Triton call
  // gives them, counted as one call of requests.size() rows in the statistics and metrics. `on_chunk(row,
  // chunk)` runs on the model's reply worker, in order, for every chunk of every row (a chunk per step: new
  // tokens only); each row ends with one final chunk (an error, cancelled, or finished). After an error the
  // other rows are cancelled. Errors before anything is queued come back here and no chunk follows.
  struct GenerateOptions {
    std::string client_id;               // the call's request id (the `stop` input cancels by it)
    uint64_t priority = 0;               // Triton's request priority: 0 = the model's default
    std::optional<uint64_t> timeout_us;  // Triton's request timeout
  };
  using ChunkFn = std::function<void(size_t row, const Response& chunk)>;
  // Cancels one row, or every row (nullopt); safe after the call ended.
  using RowCancelFn = std::function<void(std::optional<size_t> row)>;
  Result<RowCancelFn> generate(std::vector<Request> requests, const GenerateOptions& options, ChunkFn on_chunk);

  void metrics(MetricsText& out) const override;
  void shutdown(std::chrono::seconds timeout) override;
  const TrtllmLimits& limits() const { return limits_; }

 private:
  TrtllmModel(std::string name, std::shared_ptr<inference::ModelConfig> config)
      : Model(std::move(name), std::move(config)) {}

  Engine engine_;
  LoadedModel loaded_;  // the engine's ranks on their backends (cpu or cuda)
  std::unique_ptr<Executor> executor_;
  TrtllmLimits limits_;
  bool decoupled_ = false;
  std::set<std::string> noted_;  // kinds of notes already logged (under calls_mu_)
  Histogram input_tokens_{{16, 64, 256, 1024, 4096, 16384}}, output_tokens_{{16, 64, 256, 1024, 4096, 16384}};
  Histogram ttft_ms_{{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}};
  Histogram itl_ms_{{0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000}};
  // Request id -> executor ids of the calls in flight, for the `stop` input.
  std::mutex calls_mu_;
  std::multimap<std::string, RequestId> by_client_id_;
  void forget_client_id(const std::string& client_id, RequestId id);
  ReplyWorker replies_;  // last: stopped (and drained) before the members its jobs use go away
};

// The engine directory of a tensorrt_llm model: gpt_model_path when it exists; otherwise (the seed's
// "/tensorrtllm_backend/triton_model_repo/tensorrt_llm/1", or a template left unfilled) the same path
// relative to the model's folder, else the folder's version directory "1".
std::string resolve_engine_dir(const std::string& model_dir, const std::string& name,
                               const std::optional<std::string>& gpt_model_path);

// A folder named in a model's config: as given, relative to the model's folder, or (a path written for another
// machine, ".../<name>/<rest>") <rest> inside the model's folder; nullopt when none of these exists.
std::optional<std::string> resolve_model_path(const std::string& model_dir, const std::string& name,
                                              const std::string& path);

}  // namespace kiln::server
