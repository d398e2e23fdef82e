// Shared by the executor tests: fixture-model engines built once per process, and an executor to run on them.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "executor/executor.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "test_util.h"

namespace kiln::test {

struct EngineOptions {
  std::string model = "llama";  // tests/data/models/<model>
  int64_t max_batch_size = 16;
  int64_t max_input_len = 128;
  int64_t max_output_len = 32;
  int64_t max_num_tokens = 0;
  int64_t max_beam_width = 1;
  int tokens_per_block = 8;
  std::string key() const {
    return model + "/" + std::to_string(max_batch_size) + "/" + std::to_string(max_input_len) + "/" +
           std::to_string(max_output_len) + "/" + std::to_string(max_num_tokens) + "/" +
           std::to_string(max_beam_width) + "/" + std::to_string(tokens_per_block);
  }
};

// A loaded fp32 model on the CPU backend; engines are built once per process and cached.
struct LoadedModel {
  std::unique_ptr<TempDir> dir;
  Engine engine;
  CpuBackend backend;
  std::unique_ptr<LlamaModel> model;
};

inline LoadedModel& load_model(const EngineOptions& o) {
  static std::map<std::string, std::unique_ptr<LoadedModel>> cache;
  auto& slot = cache[o.key()];
  if (slot) return *slot;
  slot = std::make_unique<LoadedModel>();
  slot->dir = std::make_unique<TempDir>();
  const TempDir& tmp = *slot->dir;
  ConvertOptions co{.model_dir = data_path("models/" + o.model), .output_dir = tmp.sub("ckpt"), .dtype = DType::kF32};
  Status s = convert_hf_checkpoint(co);
  KILN_CHECK(s.ok(), s.to_string().c_str());
  BuildConfig bc;
  bc.max_batch_size = o.max_batch_size;
  bc.max_input_len = o.max_input_len;
  bc.max_seq_len = o.max_input_len + o.max_output_len;
  bc.max_num_tokens = o.max_num_tokens;
  bc.max_beam_width = o.max_beam_width;
  bc.tokens_per_block = o.tokens_per_block;
  s = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), bc, nullptr);
  KILN_CHECK(s.ok(), s.to_string().c_str());
  auto engine = load_engine(tmp.sub("engine"));
  KILN_CHECK(engine.ok(), engine.status().to_string().c_str());
  slot->engine = std::move(*engine);
  auto model = LlamaModel::load(slot->engine, slot->backend);
  KILN_CHECK(model.ok(), model.status().to_string().c_str());
  slot->model = std::move(*model);
  return *slot;
}

inline std::unique_ptr<Executor> make_executor(LoadedModel& m, ExecutorConfig config = {}) {
  if (!config.kv_cache.max_tokens && !config.kv_cache.max_bytes) config.kv_cache.max_bytes = 64ull << 20;
  auto ex = Executor::create(*m.model, m.backend, config);
  KILN_CHECK(ex.ok(), ex.status().to_string().c_str());
  return std::move(*ex);
}

// Runs one request alone on a fresh executor and returns its final response.
inline Response run_alone(LoadedModel& m, const Request& r, ExecutorConfig config = {}) {
  auto ex = make_executor(m, config);
  auto id = ex->enqueue(r);
  KILN_CHECK(id.ok(), id.status().to_string().c_str());
  auto resp = ex->await_final(*id);
  KILN_CHECK(resp.ok(), resp.status().to_string().c_str());
  return std::move(*resp);
}

inline std::vector<int32_t> random_tokens(std::mt19937& rng, int n, int32_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

}  // namespace kiln::test
