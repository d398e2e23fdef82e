#include "server/model.h"

#include <filesystem>
#include <sstream>

namespace kiln::server {

namespace fs = std::filesystem;

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::text(const std::string& name, const std::string& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    os << name << "_bucket{" << labels << ",le=\"";
    if (i < bounds_.size()) os << bounds_[i];
    else os << "+Inf";
    os << "\"} " << cumulative << "\n";
  }
  os << name << "_sum{" << labels << "} " << sum_ << "\n" << name << "_count{" << labels << "} " << count_ << "\n";
  return os.str();
}

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

void Model::record(bool ok, uint64_t duration_ns, uint64_t queue_ns, uint64_t compute_ns) {
  (ok ? success_ : failure_) += 1;
  (ok ? success_ns_ : fail_ns_) += duration_ns;
  if (ok) {
    ++inferences_;
    ++executions_;
    queue_ns_ += queue_ns;
    compute_ns_ += compute_ns;
  }
  last_ms_ = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

std::string Model::counters_text() const {
  const std::string l = labels();
  std::ostringstream os;
  os << "nv_inference_request_success{" << l << "} " << success_ << "\n"
     << "nv_inference_request_failure{" << l << "} " << failure_ << "\n"
     << "nv_inference_count{" << l << "} " << inferences_ << "\n"
     << "nv_inference_exec_count{" << l << "} " << executions_ << "\n"
     << "nv_inference_request_duration_us{" << l << "} " << (success_ns_ + fail_ns_) / 1000 << "\n"
     << "nv_inference_queue_duration_us{" << l << "} " << queue_ns_ / 1000 << "\n"
     << "nv_inference_compute_infer_duration_us{" << l << "} " << compute_ns_ / 1000 << "\n"
     << "nv_inference_pending_request_count{" << l << "} " << pending_ << "\n";
  return os.str();
}

std::string resolve_engine_dir(const std::string& model_dir, const std::string& name,
                               const std::optional<std::string>& gpt_model_path) {
  const fs::path dir(model_dir);
  if (gpt_model_path && !gpt_model_path->empty() && gpt_model_path->find("${") == std::string::npos) {
    const fs::path p(*gpt_model_path);
    std::error_code ec;
    if (fs::is_directory(p, ec)) return p.string();
    if (p.is_relative() && fs::is_directory(dir / p, ec)) return (dir / p).string();
    // ".../<name>/1" written for another machine: the part after the model's own folder name.
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
  }
  return (dir / "1").string();
}

}  // namespace kiln::server
