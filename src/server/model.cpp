#include "server/model.h"

#include <filesystem>
#include <sstream>

namespace kiln::server {

namespace fs = std::filesystem;

ModelStats Model::stats() const {
  ModelStats s;
  s.name = name_;
  s.version = version_;
  s.last_inference_ms = last_ms_;
  s.inference_count = inferences_;
  s.execution_count = executions_;
  s.success_count = success_;
  s.success_ns = success_ns_;
  s.fail_count = failure_;
  s.fail_ns = fail_ns_;
  s.queue_ns = queue_ns_;
  s.compute_ns = compute_ns_;
  return s;
}

void Model::record(bool ok, uint64_t duration_ns, uint64_t queue_ns, uint64_t compute_ns, uint64_t rows) {
  (ok ? success_ : failure_) += 1;
  (ok ? success_ns_ : fail_ns_) += duration_ns;
  if (ok) {
    inferences_ += rows;
    ++executions_;
    queue_ns_ += queue_ns;
    compute_ns_ += compute_ns;
  }
  last_ms_ = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

void Model::metrics(MetricsText& out) const {
  using T = MetricsText::Type;
  const std::string l = labels();
  out.sample("nv_inference_request_success", T::kCounter, "Number of successful inference requests, all batch sizes",
             l, static_cast<double>(success_));
  out.sample("nv_inference_request_failure", T::kCounter, "Number of failed inference requests, all batch sizes", l,
             static_cast<double>(failure_));
  out.sample("nv_inference_count", T::kCounter, "Number of inferences performed (a batch of n counts n)", l,
             static_cast<double>(inferences_));
  out.sample("nv_inference_exec_count", T::kCounter, "Number of model executions performed", l,
             static_cast<double>(executions_));
  out.sample("nv_inference_request_duration_us", T::kCounter, "Cumulative inference request duration in microseconds",
             l, static_cast<double>((success_ns_ + fail_ns_) / 1000));
  out.sample("nv_inference_queue_duration_us", T::kCounter, "Cumulative inference queuing duration in microseconds", l,
             static_cast<double>(queue_ns_ / 1000));
  out.sample("nv_inference_compute_infer_duration_us", T::kCounter,
             "Cumulative compute inference duration in microseconds", l, static_cast<double>(compute_ns_ / 1000));
  out.sample("nv_inference_pending_request_count", T::kGauge, "Instantaneous number of pending requests awaiting execution",
             l, static_cast<double>(pending_));
}

std::optional<std::string> resolve_model_path(const std::string& model_dir, const std::string& name,
                                              const std::string& path) {
  const fs::path p(path), dir(model_dir);
  std::error_code ec;
  if (fs::is_directory(p, ec)) return p.string();
  if (p.is_relative() && fs::is_directory(dir / p, ec)) return (dir / p).string();
  // ".../<name>/<rest>" written for another machine: <rest> inside this model's folder.
  fs::path tail;
  bool found = false;
  for (const fs::path& part : p) {
    if (found) tail /= part;
    if (part == name) {
      found = true;
      tail.clear();
    }
  }
  if (found && !tail.empty() && fs::is_directory(dir / tail, ec)) return (dir / tail).string();
  return std::nullopt;
}

std::string resolve_engine_dir(const std::string& model_dir, const std::string& name,
                               const std::optional<std::string>& gpt_model_path) {
  if (gpt_model_path && !gpt_model_path->empty() && gpt_model_path->find("${") == std::string::npos)
    if (auto found = resolve_model_path(model_dir, name, *gpt_model_path)) return *found;
  return (fs::path(model_dir) / "1").string();
}

}  // namespace kiln::server
