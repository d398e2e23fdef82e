// Shared by the server's C++ tests: an fp32 engine of a fixture model, and tensorrt_llm model folders made
// from the seed tutorial's config.pbtxt.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "model/checkpoint.h"
#include "model/engine.h"
#include "test_util.h"

namespace kiln::test {

inline std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Converts tests/data/models/<model> to fp32 in dir/ckpt and builds dir/engine (8 tokens per block);
// returns the engine folder.
inline std::string build_fp32_engine(const TempDir& dir, const std::string& model, int64_t max_batch_size,
                                     int64_t max_input_len, int64_t max_seq_len) {
  ConvertOptions co{.model_dir = data_path("models/" + model), .output_dir = dir.sub("ckpt"), .dtype = DType::kF32};
  Status s = convert_hf_checkpoint(co);
  KILN_CHECK(s.ok(), s.to_string());
  BuildConfig bc;
  bc.max_batch_size = max_batch_size;
  bc.max_input_len = max_input_len;
  bc.max_seq_len = max_seq_len;
  bc.tokens_per_block = 8;
  s = build_engine(dir.sub("ckpt"), dir.sub("engine"), bc, nullptr);
  KILN_CHECK(s.ok(), s.to_string());
  return dir.sub("engine");
}

// repo/<name>: the seed's tensorrt_llm config renamed (decoupled or not, prompt echoed as the seed has it),
// a small KV cache, `extra_config` appended, and a copy of the engine in 1/.
inline void write_seed_trtllm_model(const std::string& repo, const std::string& engine, const std::string& name,
                                    bool decoupled, const std::string& extra_config = "") {
  std::string config = read_text(data_path("server/seed_tensorrt_llm_config.pbtxt"));
  auto replace_once = [&](const std::string& from, const std::string& to) {
    const size_t at = config.find(from);
    KILN_CHECK(at != std::string::npos, "fixture config: '" + from + "' not found");
    config.replace(at, from.size(), to);
  };
  replace_once("name: \"tensorrt_llm\"", "name: \"" + name + "\"");
  if (decoupled) replace_once("decoupled: false", "decoupled: true");
  // Keep the KV cache small (the default is a fraction of free memory).
  config += "\nparameters: { key: \"max_tokens_in_paged_kv_cache\" value: { string_value: \"4096\" } }\n";
  config += extra_config;
  std::filesystem::create_directories(repo + "/" + name);
  std::ofstream(repo + "/" + name + "/config.pbtxt") << config;
  std::filesystem::copy(engine, repo + "/" + name + "/1", std::filesystem::copy_options::recursive);
}

}  // namespace kiln::test
