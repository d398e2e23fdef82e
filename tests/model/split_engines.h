// Shared by the parallelism tests (CPU: tests/model/parallel_test.cpp, GPU: tests/backend/cuda/
// cuda_rank_group_test.cpp): a fixture model converted and built for a tp x pp split, and a run of requests
// through an executor over it.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "executor/executor.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/loaded_model.h"
#include "test_util.h"

namespace kiln::test {

struct Split {
  int tp, pp;
};

inline std::string split_name(const Split& s) { return "tp" + std::to_string(s.tp) + "_pp" + std::to_string(s.pp); }

struct SplitEngine {
  std::string model;  // tests/data/models/<model>
  Split split{1, 1};
  DType dtype = DType::kF32;
  std::string backend = "cpu";
  int64_t max_input_len = 96;
  int64_t max_beam_width = 1;
};

// Converts and builds into tmp/<split name> (8 sequences, 24 tokens out, blocks of 8, 256 tokens a forward).
inline std::string build_split(const TempDir& tmp, const SplitEngine& e) {
  const std::string ckpt = tmp.sub(split_name(e.split) + "_ckpt"), engine = tmp.sub(split_name(e.split));
  ConvertOptions o{.model_dir = data_path("models/" + e.model), .output_dir = ckpt, .dtype = e.dtype,
                   .tp_size = e.split.tp, .pp_size = e.split.pp};
  Status s = convert_hf_checkpoint(o);
  EXPECT_TRUE(s.ok()) << s.to_string();
  BuildConfig b;
  b.backend = e.backend;
  b.max_batch_size = 8;
  b.max_input_len = e.max_input_len;
  b.max_seq_len = e.max_input_len + 24;
  b.max_beam_width = e.max_beam_width;
  b.tokens_per_block = 8;
  b.max_num_tokens = 256;
  b.tp_size = 0;  // as converted
  b.pp_size = 0;
  s = build_engine(ckpt, engine, b, nullptr);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return engine;
}

struct RunOptions {
  bool overlap = true;
  // KV tokens: fixed, so that ranks sharing one memory (the CPU, or a GPU with KILN_SHARED_GPU_RANKS) do not
  // each take a fraction of all of it.
  int64_t kv_tokens = 2048;
  ExecutorStats* stats = nullptr;  // the executor's stats at the end, when given
};

// Every request at once on a fresh executor over the engine dir; final responses in request order.
inline std::vector<Response> run_all(const std::string& dir, const std::vector<Request>& reqs, RunOptions o = {}) {
  auto loaded = load_model(dir);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  if (!loaded.ok()) return {};
  ExecutorConfig config;
  config.kv_cache.max_tokens = o.kv_tokens;
  config.overlap = o.overlap;
  auto ex = Executor::create(*loaded->runner, config);
  EXPECT_TRUE(ex.ok()) << ex.status().to_string();
  if (!ex.ok()) return {};
  std::vector<RequestId> ids;
  for (const Request& r : reqs) ids.push_back(*(*ex)->enqueue(r));
  std::vector<Response> out;
  for (RequestId id : ids) {
    auto r = (*ex)->await_final(id);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    if (!r.ok()) return {};
    EXPECT_TRUE(r->error.ok()) << r->error.to_string();
    out.push_back(std::move(*r));
  }
  if (o.stats) *o.stats = (*ex)->stats();
  return out;
}

// Greedy requests with log-probs of 9, 22, 35, ... prompt tokens, run to their length.
inline std::vector<Request> split_test_prompts(int32_t vocab, int n) {
  std::vector<Request> reqs;
  for (int i = 0; i < n; ++i) {
    Request r;
    for (int k = 0; k < 9 + 13 * i; ++k) r.input_ids.push_back((37 * k + 101 * i + 5) % vocab);
    r.max_new_tokens = 12 + i;
    r.output.return_log_probs = true;
    r.end_ids = std::vector<int32_t>{};  // the fixtures' EOS is arbitrary: run to the length
    reqs.push_back(std::move(r));
  }
  return reqs;
}

}  // namespace kiln::test
