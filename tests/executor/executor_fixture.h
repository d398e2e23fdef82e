// Shared by the executor tests: fixture-model engines built once per process, and an executor to run on them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "backend/backend_factory.h"
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
  std::string backend = "cpu";
  DType dtype = DType::kF32;
  std::string key() const {
    return model + "/" + std::to_string(max_batch_size) + "/" + std::to_string(max_input_len) + "/" +
           std::to_string(max_output_len) + "/" + std::to_string(max_num_tokens) + "/" +
           std::to_string(max_beam_width) + "/" + std::to_string(tokens_per_block) + "/" + backend + "/" +
           dtype_name(dtype);
  }
};

// A loaded model (fp32 on the CPU backend unless the options say otherwise); engines are built once per
// process and cached.
struct LoadedModel {
  std::unique_ptr<TempDir> dir;
  Engine engine;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
};

inline LoadedModel& load_model(const EngineOptions& o) {
  static std::map<std::string, std::unique_ptr<LoadedModel>> cache;
  auto& slot = cache[o.key()];
  if (slot) return *slot;
  slot = std::make_unique<LoadedModel>();
  slot->dir = std::make_unique<TempDir>();
  const TempDir& tmp = *slot->dir;
  ConvertOptions co{.model_dir = data_path("models/" + o.model), .output_dir = tmp.sub("ckpt"), .dtype = o.dtype};
  Status s = convert_hf_checkpoint(co);
  KILN_CHECK(s.ok(), s.to_string().c_str());
  BuildConfig bc;
  bc.max_batch_size = o.max_batch_size;
  bc.max_input_len = o.max_input_len;
  bc.max_seq_len = o.max_input_len + o.max_output_len;
  bc.max_num_tokens = o.max_num_tokens;
  bc.max_beam_width = o.max_beam_width;
  bc.tokens_per_block = o.tokens_per_block;
  bc.backend = o.backend;
  s = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), bc, nullptr);
  KILN_CHECK(s.ok(), s.to_string().c_str());
  auto engine = load_engine(tmp.sub("engine"));
  KILN_CHECK(engine.ok(), engine.status().to_string().c_str());
  slot->engine = std::move(*engine);
  auto backend = make_backend(o.backend);
  KILN_CHECK(backend.ok(), backend.status().to_string().c_str());
  slot->backend = std::move(*backend);
  auto model = LlamaModel::load(slot->engine, *slot->backend);
  KILN_CHECK(model.ok(), model.status().to_string().c_str());
  slot->model = std::move(*model);
  return *slot;
}

inline std::unique_ptr<Executor> make_executor(LoadedModel& m, ExecutorConfig config = {}) {
  if (!config.kv_cache.max_tokens && !config.kv_cache.max_bytes) config.kv_cache.max_bytes = 64ull << 20;
  auto ex = Executor::create(*m.model, *m.backend, config);
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

// Waits until the executor has run `iterations` iterations, or it is idle, or 2 s pass.
inline void wait_for_iteration(Executor& ex, int64_t iterations) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    ExecutorStats s = ex.stats();
    if (s.iterations >= iterations || (s.active_requests == 0 && s.queued_requests == 0)) return;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// 16 requests, half of them sharing a 40-token prefix, random lengths.
inline std::vector<Request> mixed_requests(uint32_t seed, int32_t vocab, int n = 16) {
  std::mt19937 rng(seed);
  const std::vector<int32_t> shared = test::random_tokens(rng, 40, vocab);
  std::vector<Request> reqs;
  for (int i = 0; i < n; ++i) {
    Request r;
    const int len = std::uniform_int_distribution<int>(3, 100)(rng);
    if (i % 2 == 0 && len > 40) {
      r.input_ids = shared;
      auto tail = test::random_tokens(rng, len - 40, vocab);
      r.input_ids.insert(r.input_ids.end(), tail.begin(), tail.end());
    } else {
      r.input_ids = test::random_tokens(rng, len, vocab);
    }
    r.max_new_tokens = std::uniform_int_distribution<int>(4, 16)(rng);
    r.output.return_log_probs = true;
    r.end_ids = std::vector<int32_t>{};  // the tiny models' EOS is arbitrary: run to the length
    reqs.push_back(std::move(r));
  }
  return reqs;
}

// Enqueues the requests at random iterations of the running executor and returns their final responses.
inline std::vector<Response> run_crowd(Executor& ex, const std::vector<Request>& reqs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> at(reqs.size());
  for (auto& a : at) a = std::uniform_int_distribution<int>(0, 24)(rng);
  std::sort(at.begin(), at.end());
  std::vector<RequestId> ids;
  for (size_t i = 0; i < reqs.size(); ++i) {
    wait_for_iteration(ex, at[i]);
    auto id = ex.enqueue(reqs[i]);
    EXPECT_TRUE(id.ok()) << id.status().to_string();
    ids.push_back(*id);
  }
  std::vector<Response> out;
  for (RequestId id : ids) {
    auto r = ex.await_final(id);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    out.push_back(r.ok() ? std::move(*r) : Response{});
  }
  return out;
}

// Same tokens and finish reasons; log-probs within `tol`.
inline void expect_same_output(const Response& alone, const Response& crowd, const std::string& what,
                               float tol = 1e-4f) {
  ASSERT_EQ(alone.output_ids.size(), crowd.output_ids.size()) << what;
  for (size_t b = 0; b < alone.output_ids.size(); ++b) {
    EXPECT_EQ(alone.output_ids[b], crowd.output_ids[b]) << what << " beam " << b;
    if (b < alone.output_log_probs.size() && b < crowd.output_log_probs.size()) {
      ASSERT_EQ(alone.output_log_probs[b].size(), crowd.output_log_probs[b].size()) << what;
      for (size_t i = 0; i < alone.output_log_probs[b].size(); ++i)
        EXPECT_NEAR(alone.output_log_probs[b][i], crowd.output_log_probs[b][i], tol) << what << " step " << i;
    }
  }
  EXPECT_EQ(alone.finish_reasons, crowd.finish_reasons) << what;
}

}  // namespace kiln::test
