// Reading the tokenizer suites' gzip'd golden files (tests/data/tokenizers, tests/data/gguf), shared by the
// conformance and GGUF tokenizer tests.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::test {

// The whole decompressed file; empty when it cannot be opened.
inline std::string read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return {};
  std::string data;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) data.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return data;
}

// Non-empty lines.
inline std::vector<std::string> lines_of(const std::string& data) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < data.size()) {
    size_t nl = data.find('\n', start);
    if (nl == std::string::npos) nl = data.size();
    if (nl > start) lines.push_back(data.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

// "1,2,3" (the first 40 ids, then ",...") for failure messages.
inline std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < 40; ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  if (ids.size() > 40) s += ",...";
  return s;
}

}  // namespace kiln::test
