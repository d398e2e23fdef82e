#include "server/metrics.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace kiln::server {

namespace {

const char* type_name(MetricsText::Type t) {
  switch (t) {
    case MetricsText::Type::kCounter: return "counter";
    case MetricsText::Type::kGauge: return "gauge";
    case MetricsText::Type::kHistogram: return "histogram";
  }
  return "untyped";
}

std::string number(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

}  // namespace

MetricsText::Family& MetricsText::family(const std::string& name, Type type, const std::string& help) {
  auto it = families_.find(name);
  if (it == families_.end()) {
    order_.push_back(name);
    it = families_.emplace(name, Family{type, help, ""}).first;
  }
  return it->second;
}

void MetricsText::sample(const std::string& name, Type type, const std::string& help, const std::string& labels,
                         double value) {
  Family& f = family(name, type, help);
  f.samples += name;
  if (!labels.empty()) f.samples += "{" + labels + "}";
  f.samples += " " + number(value) + "\n";
}

void MetricsText::histogram_lines(const std::string& name, const std::string& help, const std::string& lines) {
  family(name, Type::kHistogram, help).samples += lines;
}

std::string MetricsText::text() const {
  std::string out;
  for (const std::string& name : order_) {
    const Family& f = families_.at(name);
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + type_name(f.type) + "\n" + f.samples;
  }
  return out;
}

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::write(MetricsText& out, const std::string& family, const std::string& help,
                      const std::string& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    os << family << "_bucket{" << labels << ",le=\"";
    if (i < bounds_.size()) os << bounds_[i];
    else os << "+Inf";
    os << "\"} " << cumulative << "\n";
  }
  os << family << "_sum{" << labels << "} " << number(sum_) << "\n"
     << family << "_count{" << labels << "} " << count_ << "\n";
  out.histogram_lines(family, help, os.str());
}

void write_host_metrics(MetricsText& out) {
  // CPU: busy share of all cores between two scrapes (the first scrape: since boot).
  static std::mutex mu;
  static uint64_t last_busy = 0, last_total = 0;
  std::ifstream stat("/proc/stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal && cpu == "cpu") {
    const uint64_t busy = user + nice + system + irq + softirq + steal, total = busy + idle + iowait;
    double utilization = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (total > last_total) utilization = static_cast<double>(busy - last_busy) / static_cast<double>(total - last_total);
      last_busy = busy;
      last_total = total;
    }
    out.sample("nv_cpu_utilization", MetricsText::Type::kGauge, "CPU utilization rate [0.0 - 1.0]", "", utilization);
  }
  // Memory: MemTotal - MemAvailable is what is in use.
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  uint64_t kb = 0, total_kb = 0, available_kb = 0;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemTotal:") total_kb = kb;
    else if (key == "MemAvailable:") available_kb = kb;
  }
  if (total_kb > 0) {
    out.sample("nv_cpu_memory_total_bytes", MetricsText::Type::kGauge, "CPU total memory (RAM), in bytes", "",
               static_cast<double>(total_kb) * 1024.0);
    out.sample("nv_cpu_memory_used_bytes", MetricsText::Type::kGauge, "CPU used memory (RAM), in bytes", "",
               static_cast<double>(total_kb - std::min(total_kb, available_kb)) * 1024.0);
  }
}

}  // namespace kiln::server
