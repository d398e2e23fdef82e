// Tokenizer throughput: single-threaded encode (add_special_tokens = false),
// one call per corpus line, over the corpus repeated to at least 10 MB.
//
//   tokenizer_bench TOKENIZER [TOKENIZER...] CORPUS
//
// TOKENIZER: a directory with tokenizer.json(.gz), or a tokenizer.json(.gz) file.
// CORPUS: one line per text, each a JSON string or raw text; may be gzipped.
// Prints one line per tokenizer: "encode NAME MB/s TOKENS/s (load MS)".
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

bool read_all(const std::string& path, std::string& out) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return n == 0;
}

std::string display_name(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p))
    return p.filename().empty() ? p.parent_path().filename().string() : p.filename().string();
  return p.parent_path().filename().string();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER [TOKENIZER...] CORPUS\n", argv[0]);
    return 2;
  }
  std::string corpus_path = argv[argc - 1];
  std::string data;
  if (!read_all(corpus_path, data)) {
    std::fprintf(stderr, "cannot read %s\n", corpus_path.c_str());
    return 1;
  }
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < data.size()) {
    size_t nl = data.find('\n', start);
    if (nl == std::string::npos) nl = data.size();
    std::string line = data.substr(start, nl - start);
    start = nl + 1;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    lines.push_back(j.is_string() ? j.get<std::string>() : line);
  }
  size_t corpus_bytes = 0;
  for (const auto& l : lines) corpus_bytes += l.size();
  if (corpus_bytes == 0) {
    std::fprintf(stderr, "empty corpus\n");
    return 1;
  }
  const size_t kMinBytes = 10u << 20;
  size_t repeats = (kMinBytes + corpus_bytes - 1) / corpus_bytes;
  std::printf("corpus: %zu lines, %zu bytes, repeated %zu times (%.1f MB)\n", lines.size(), corpus_bytes,
              repeats, static_cast<double>(corpus_bytes * repeats) / 1e6);

  for (int a = 1; a < argc - 1; ++a) {
    std::string path = argv[a];
    auto load_start = std::chrono::steady_clock::now();
    auto tok = std::filesystem::is_directory(path) ? kiln::Tokenizer::from_dir(path)
                                                   : kiln::Tokenizer::from_file(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), tok.status().to_string().c_str());
      return 1;
    }
    double load_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();
    size_t tokens = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (size_t r = 0; r < repeats; ++r) {
      for (const auto& l : lines) {
        auto ids = (*tok)->encode(l, false);
        if (!ids.ok()) {
          std::fprintf(stderr, "encode failed: %s\n", ids.status().to_string().c_str());
          return 1;
        }
        tokens += ids->size();
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double mb = static_cast<double>(corpus_bytes * repeats) / 1e6;
    std::printf("encode %s %.2f MB/s %.0f tokens/s (load %.0f ms)\n", display_name(path).c_str(), mb / secs,
                static_cast<double>(tokens) / secs, load_ms);
    std::fflush(stdout);
  }
  return 0;
}
