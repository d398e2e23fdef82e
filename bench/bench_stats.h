// Small helpers shared by the benchmark programs.
#pragma once

#include <algorithm>
#include <vector>

namespace kiln::bench {

// The p-th quantile (p in [0, 1]) of `v`, nearest rank; 0 for an empty sample.
inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

}  // namespace kiln::bench
