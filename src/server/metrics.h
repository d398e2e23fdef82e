// Prometheus text exposition (format 0.0.4) for the metrics port: every metric family appears once, as one
// group of samples (all models' samples together) under its # HELP and # TYPE lines, as the format requires.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::server {

// Collects samples from every model, grouped by family, in the order families are first seen.
class MetricsText {
 public:
  enum class Type { kCounter, kGauge, kHistogram };
  // One sample: `family{labels} value` (`labels` without braces, may be empty).
  void sample(const std::string& family, Type type, const std::string& help, const std::string& labels,
              double value);
  // A histogram's lines under `family` (_bucket, _sum, _count).
  void histogram_lines(const std::string& family, const std::string& help, const std::string& lines);
  std::string text() const;

 private:
  struct Family {
    Type type;
    std::string help, samples;
  };
  Family& family(const std::string& name, Type type, const std::string& help);
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

// Cumulative histogram with fixed bucket bounds (Prometheus style); thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  void write(MetricsText& out, const std::string& family, const std::string& help, const std::string& labels) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

// The process-level metrics Triton reports for the host: nv_cpu_utilization (share of all cores busy since the
// previous scrape, from /proc/stat), nv_cpu_memory_used_bytes and nv_cpu_memory_total_bytes (/proc/meminfo).
void write_host_metrics(MetricsText& out);

}  // namespace kiln::server
