#include "server/server_core.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "server/model.h"
#include "server/model_config_loader.h"
#include "server/text_models.h"

namespace kiln::server {

namespace fs = std::filesystem;

Status ServerOptions::validate() const {
  if (model_repository.empty()) return invalid_argument("give --model_repo (or --model-repository)");
  std::error_code ec;
  if (!fs::is_directory(model_repository, ec))
    return not_found("model repository '" + model_repository + "' is not a directory");
  if (control_mode == ModelControlMode::kPoll && repository_poll.count() < 1)
    return invalid_argument("--repository-poll-secs must be at least 1");
  if (control_mode != ModelControlMode::kExplicit && !load_models.empty())
    return invalid_argument("--load-model needs --model-control-mode explicit");
  for (int port : {http_port, grpc_port, metrics_port})
    if (port < -1 || port > 65535) return invalid_argument("port " + std::to_string(port) + " is outside [0, 65535]");
  if (max_request_bytes < 1024) return invalid_argument("the request size cap must be at least 1024 bytes");
  if (max_json_depth < 4 || max_json_depth > 10000) return invalid_argument("the JSON depth cap must be in [4, 10000]");
  return {};
}

namespace {

// Loads one model folder of the repository.
Result<std::shared_ptr<Model>> load_folder(ServerCore& core, const std::string& repo, const std::string& name) {
  KILN_RETURN_IF_ERROR(check_model_name(name));
  const std::string dir = (fs::path(repo) / name).string();
  auto config = load_model_config((fs::path(dir) / "config.pbtxt").string(), name + "/config.pbtxt");
  if (!config.ok()) return config.status();
  auto shared = std::make_shared<inference::ModelConfig>(std::move(*config));
  if (!shared->name().empty() && shared->name() != name)
    return invalid_argument(name + "/config.pbtxt: name \"" + shared->name() + "\" differs from the folder name");
  shared->set_name(name);
  const std::string& backend = shared->backend();
  if (backend == "tensorrtllm" || backend == "tensorrt_llm" || backend == "kiln") {
    KILN_ASSIGN_OR_RETURN(auto m, TrtllmModel::load(dir, name, shared));
    return std::shared_ptr<Model>(std::move(m));
  }
  // preprocessing / postprocessing / ensemble / tensorrt_llm_bls (text_models.h); an ensemble's tensorrt_llm
  // model is looked up when called, so the load order does not matter.
  if (text_model_kind(*shared, name)) return load_text_model(core, repo, name, shared);
  return unimplemented("model '" + name + "' (backend \"" + backend + "\", platform \"" + shared->platform() +
                       "\"): kiln serves tensorrt_llm models and the TensorRT-LLM text models (preprocessing, "
                       "postprocessing, ensemble, tensorrt_llm_bls)");
}

std::vector<std::string> folders_with_config(const std::string& repo) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(repo, ec))
    if (e.is_directory(ec) && fs::exists(e.path() / "config.pbtxt", ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

Result<std::unique_ptr<ServerCore>> ServerCore::create(const ServerOptions& options) {
  KILN_RETURN_IF_ERROR(options.validate());
  std::unique_ptr<ServerCore> core(new ServerCore(options));
  std::vector<std::string> names;
  const bool all = options.control_mode != ModelControlMode::kExplicit ||
                   std::find(options.load_models.begin(), options.load_models.end(), "*") != options.load_models.end();
  if (all) names = folders_with_config(options.model_repository);
  else names = options.load_models;
  for (const std::string& name : names) {
    Status s = core->load(name);
    if (!s.ok()) std::fprintf(stderr, "kiln serve: model '%s' not loaded: %s\n", name.c_str(), s.message().c_str());
  }
  if (options.control_mode == ModelControlMode::kPoll) {
    ServerCore* c = core.get();
    core->poller_ = std::thread([c] {
      std::unique_lock<std::mutex> lock(c->poll_mu_);
      while (!c->poll_cv_.wait_for(lock, c->options_.repository_poll, [c] { return c->stopping_.load(); })) {
        lock.unlock();
        c->poll_repository();
        lock.lock();
      }
    });
  }
  return core;
}

fs::file_time_type ServerCore::model_signature(const std::string& name) const {
  // The newest modification time of config.pbtxt, the version folder and the files directly in it: an engine
  // or tokenizer rewritten in place, a file added or removed, or an edited config all change it.
  std::error_code ec;
  const fs::path dir = fs::path(options_.model_repository) / name;
  fs::file_time_type newest = fs::last_write_time(dir / "config.pbtxt", ec);
  for (const fs::path& p : {dir, dir / "1"}) {
    if (auto t = fs::last_write_time(p, ec); !ec && t > newest) newest = t;
  }
  for (const auto& e : fs::directory_iterator(dir / "1", ec))
    if (auto t = fs::last_write_time(e.path(), ec); !ec && t > newest) newest = t;
  return newest;
}

void ServerCore::poll_repository() {
  const std::vector<std::string> present = folders_with_config(options_.model_repository);
  std::vector<std::string> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, m] : models_)
      if (!std::binary_search(present.begin(), present.end(), name)) gone.push_back(name);
    for (const auto& [name, why] : failed_)
      if (!std::binary_search(present.begin(), present.end(), name)) gone.push_back(name);
  }
  for (const std::string& name : gone) {
    std::fprintf(stderr, "kiln serve: poll: model folder '%s' is gone\n", name.c_str());
    (void)unload(name);
    std::lock_guard<std::mutex> lock(mu_);
    failed_.erase(name);
    seen_.erase(name);
  }
  for (const std::string& name : present) {
    if (stopping_) return;
    const fs::file_time_type sig = model_signature(name);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = seen_.find(name);
      if (it != seen_.end() && it->second == sig) continue;
    }
    std::fprintf(stderr, "kiln serve: poll: model '%s' is new or changed: loading\n", name.c_str());
    Status s = load(name);
    if (!s.ok()) std::fprintf(stderr, "kiln serve: model '%s' not loaded: %s\n", name.c_str(), s.message().c_str());
  }
}

ServerCore::~ServerCore() { shutdown(std::chrono::seconds(0)); }

std::string ServerCore::version() const { return KILN_VERSION; }

std::vector<std::string> ServerCore::extensions() const {
  // Only what kiln implements (shared memory, tracing and classification are refused, so not listed).
  return {"model_repository", "model_repository(unload_dependents)", "schedule_policy", "model_configuration",
          "binary_tensor_data", "parameters", "statistics", "logging", "generate"};
}

bool ServerCore::ready() const {
  if (stopping_) return false;
  std::lock_guard<std::mutex> lock(mu_);
  return failed_.empty();
}

Result<std::shared_ptr<Model>> ServerCore::find(const std::string& name, const std::string& version) const {
  KILN_RETURN_IF_ERROR(check_model_name(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    auto f = failed_.find(name);
    if (f != failed_.end()) return unavailable("model '" + name + "' is not ready: " + f->second);
    return not_found("unknown model '" + name + "'");
  }
  if (!version.empty() && version != it->second->version())
    return not_found("model '" + name + "' has no version " + version + " (kiln serves version " +
                     it->second->version() + ")");
  return it->second;
}

Result<ModelMetadata> ServerCore::model_metadata(const std::string& name, const std::string& version) const {
  KILN_ASSIGN_OR_RETURN(auto m, find(name, version));
  return m->metadata();
}

Result<bool> ServerCore::model_ready(const std::string& name, const std::string& version) const {
  auto m = find(name, version);
  if (m.ok()) return !stopping_.load();
  if (m.status().code() == StatusCode::kUnavailable) return false;
  return m.status();
}

Result<std::shared_ptr<const inference::ModelConfig>> ServerCore::model_config(const std::string& name,
                                                                               const std::string& version) const {
  KILN_ASSIGN_OR_RETURN(auto m, find(name, version));
  return m->config();
}

std::vector<ModelStatus> ServerCore::repository_index(bool ready_only) const {
  std::vector<ModelStatus> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& name : folders_with_config(options_.model_repository)) {
    if (models_.count(name)) out.push_back({name, "1", "READY", ""});
    else if (!ready_only) out.push_back({name, "1", "UNAVAILABLE", failed_.count(name) ? failed_.at(name) : "unloaded"});
  }
  return out;
}

Status ServerCore::check_repository_api() const {
  if (options_.control_mode == ModelControlMode::kPoll)
    return unavailable("explicit model load / unload is not allowed while the repository is polled "
                       "(--model-control-mode poll)");
  if (options_.control_mode != ModelControlMode::kExplicit)
    return unavailable("explicit model load / unload is not allowed: start kiln serve with "
                       "--model-control-mode explicit");
  return {};
}

Status ServerCore::load_model(const std::string& name) {
  KILN_RETURN_IF_ERROR(check_model_name(name));
  KILN_RETURN_IF_ERROR(check_repository_api());
  return load(name);
}

Status ServerCore::load(const std::string& name) {
  KILN_RETURN_IF_ERROR(check_model_name(name));
  if (stopping_) return unavailable("the server is shutting down");
  std::error_code ec;
  if (!fs::exists(fs::path(options_.model_repository) / name / "config.pbtxt", ec))
    return not_found("no model '" + name + "' in the repository");
  const fs::file_time_type sig = model_signature(name);  // before reading: a change during the load shows next time
  auto m = load_folder(*this, options_.model_repository, name);
  std::shared_ptr<Model> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    seen_[name] = sig;
    if (!m.ok()) {
      // A failed reload leaves the loaded instance serving (it is still READY); a first load records why.
      if (!models_.count(name)) failed_[name] = m.status().message();
      return m.status();
    }
    failed_.erase(name);
    auto it = models_.find(name);
    if (it != models_.end()) old = it->second;
    models_[name] = *m;
  }
  if (old) old->shutdown(options_.shutdown_timeout);  // a reload: the previous instance drains
  std::fprintf(stderr, "kiln serve: loaded model '%s' version 1\n", name.c_str());
  return {};
}

Status ServerCore::unload_model(const std::string& name) {
  KILN_RETURN_IF_ERROR(check_model_name(name));
  KILN_RETURN_IF_ERROR(check_repository_api());
  return unload(name);
}

Status ServerCore::unload(const std::string& name) {
  std::shared_ptr<Model> m;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_.erase(name);
    auto it = models_.find(name);
    if (it == models_.end()) return not_found("model '" + name + "' is not loaded");
    m = it->second;
    models_.erase(it);
  }
  m->shutdown(options_.shutdown_timeout);
  std::fprintf(stderr, "kiln serve: unloaded model '%s'\n", name.c_str());
  return {};
}

Result<std::vector<ModelStats>> ServerCore::statistics(const std::string& name, const std::string& version) const {
  std::vector<ModelStats> out;
  if (!name.empty()) {
    KILN_ASSIGN_OR_RETURN(auto m, find(name, version));
    out.push_back(m->stats());
    return out;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [n, m] : models_) out.push_back(m->stats());
  return out;
}

Status apply_request_parameter(InferCall& call, const std::string& key, const RequestParameter& value) {
  auto unsigned_value = [&]() -> Result<uint64_t> {
    if (auto* u = std::get_if<uint64_t>(&value)) return *u;
    if (auto* i = std::get_if<int64_t>(&value); i && *i >= 0) return static_cast<uint64_t>(*i);
    return invalid_argument("request parameter '" + key + "' must be a non-negative integer");
  };
  if (key == "priority") {
    KILN_ASSIGN_OR_RETURN(call.priority, unsigned_value());
    return {};
  }
  if (key == "timeout") {
    KILN_ASSIGN_OR_RETURN(uint64_t us, unsigned_value());
    if (us > 0) call.timeout_us = us;
    return {};
  }
  if (key == "sequence_id" || key == "sequence_start" || key == "sequence_end")
    return unimplemented("request parameter '" + key + "': sequence batching (stateful models) is not supported by kiln");
  return invalid_argument("unknown request parameter '" + key + "' (kiln understands priority and timeout)");
}

Result<CancelFn> ServerCore::infer(InferCall call, ReplyFn on_reply) {
  if (stopping_) return unavailable("the server is shutting down");
  KILN_ASSIGN_OR_RETURN(auto m, find(call.model, call.version));
  if (!call.requested_outputs.empty()) {
    const ModelMetadata md = m->metadata();
    for (const std::string& want : call.requested_outputs)
      if (std::none_of(md.outputs.begin(), md.outputs.end(), [&](const TensorMetadata& t) { return t.name == want; }))
        return invalid_argument("unexpected inference output '" + want + "' for model '" + call.model + "'");
  }
  return m->infer(std::move(call), std::move(on_reply));
}

std::string ServerCore::metrics_text() const {
  std::vector<std::shared_ptr<Model>> models;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [n, m] : models_) models.push_back(m);
  }
  MetricsText out;
  for (const auto& m : models) m->metrics(out);
  write_host_metrics(out);
  return out.text();
}

void ServerCore::shutdown(std::chrono::seconds timeout) {
  {
    std::lock_guard<std::mutex> lock(poll_mu_);  // the poller sees stopping_ under its lock: no lost wake-up
    if (stopping_.exchange(true)) return;
  }
  poll_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
  std::map<std::string, std::shared_ptr<Model>> models;
  {
    std::lock_guard<std::mutex> lock(mu_);
    models.swap(models_);
  }
  for (auto& [n, m] : models) m->shutdown(timeout);
}

}  // namespace kiln::server
