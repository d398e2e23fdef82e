// Checks an engine against a fixture model's Hugging Face goldens (golden.json + golden.safetensors), for
// the golden suites (tests/model/golden_test.cpp, gguf_import_test.cpp).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/backend_factory.h"
#include "executor/sequence_runner.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "test_util.h"

namespace kiln::test {

struct GoldenCase {
  std::vector<int32_t> prompt, argmax_per_position, greedy;
  std::vector<float> greedy_logprobs;
  std::vector<float> logits;  // [prompt_len, vocab] or [vocab] (last position only)
  bool all_positions = false;
};

inline std::vector<GoldenCase> load_goldens(const std::string& model_dir) {
  std::ifstream in(model_dir + "/golden.json");
  nlohmann::json g = nlohmann::json::parse(in);
  auto st = SafetensorsFile::open(model_dir + "/golden.safetensors");
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  std::vector<GoldenCase> cases;
  for (size_t i = 0; i < g["cases"].size(); ++i) {
    const nlohmann::json& c = g["cases"][i];
    GoldenCase gc;
    gc.prompt = c["prompt"].get<std::vector<int32_t>>();
    gc.argmax_per_position = c["argmax_per_position"].get<std::vector<int32_t>>();
    gc.greedy = c["greedy_24"].get<std::vector<int32_t>>();
    gc.greedy_logprobs = c["greedy_logprobs"].get<std::vector<float>>();
    const SafetensorsEntry* e = st->find("case" + std::to_string(i) + ".logits");
    gc.all_positions = e != nullptr;
    if (!e) e = st->find("case" + std::to_string(i) + ".last_logits");
    EXPECT_NE(e, nullptr);
    const float* p = static_cast<const float*>(e->data);
    gc.logits.assign(p, p + e->nbytes / 4);
    cases.push_back(std::move(gc));
  }
  return cases;
}

// An engine built with the goldens' limits: max_batch_size 1, 256 tokens in, 32 out.
inline BuildConfig golden_build_config(int64_t max_num_tokens = 0, const std::string& backend = "cpu") {
  BuildConfig bc;
  bc.backend = backend;
  bc.max_batch_size = 1;
  bc.max_input_len = 256;
  bc.max_seq_len = 256 + 32;
  bc.max_num_tokens = max_num_tokens;
  return bc;
}

// Every golden case through the engine: fp32 (`exact`) with the thresholds (argmax at every
// position, logits within 1e-3, the 24 greedy tokens and their log-probs); otherwise the 16-bit thresholds
// (argmax on >= 99% of positions, logits within 2e-2 of the largest reference logit, first 8 greedy tokens).
inline void check_engine_against_goldens(const std::string& engine_dir, const std::string& golden_dir, bool exact) {
  auto engine = load_engine(engine_dir);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto made = make_backend(engine->build.backend);  // the backend the engine was built for
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  Backend& backend = **made;
  auto model = LlamaModel::load(*engine, backend);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto runner = SequenceRunner::create(**model, backend);
  ASSERT_TRUE(runner.ok());
  const int64_t V = engine->model.vocab_size;

  for (const GoldenCase& gc : load_goldens(golden_dir)) {
    SCOPED_TRACE("prompt of " + std::to_string(gc.prompt.size()) + " tokens");
    GreedyOptions opt;
    opt.max_new_tokens = 24;
    opt.stop_at_eos = false;
    opt.return_prompt_logits = true;
    auto r = (*runner)->generate(gc.prompt, opt);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const size_t n = gc.prompt.size();
    ASSERT_EQ(r->prompt_logits.size(), n * V);

    size_t argmax_equal = 0;
    for (size_t p = 0; p < n; ++p) argmax_equal += argmax(&r->prompt_logits[p * V], V) == gc.argmax_per_position[p];
    const float* ours = gc.all_positions ? r->prompt_logits.data() : &r->prompt_logits[(n - 1) * V];
    double max_abs = 0, max_ref = 0;
    for (size_t i = 0; i < gc.logits.size(); ++i) {
      max_abs = std::max(max_abs, std::abs(double(ours[i]) - gc.logits[i]));
      max_ref = std::max(max_ref, std::abs(double(gc.logits[i])));
    }
    if (exact) {
      EXPECT_EQ(argmax_equal, n) << "argmax_per_position differs";
      EXPECT_LT(max_abs, 1e-3) << "logits differ from transformers";
      EXPECT_EQ(r->output_ids, gc.greedy) << "greedy_24 differs";
      ASSERT_EQ(r->log_probs.size(), gc.greedy_logprobs.size());
      for (size_t i = 0; i < gc.greedy_logprobs.size(); ++i)
        EXPECT_NEAR(r->log_probs[i], gc.greedy_logprobs[i], 1e-3) << "log-prob of greedy token " << i;
    } else {
      EXPECT_GE(argmax_equal, static_cast<size_t>(std::floor(0.99 * n))) << "argmax equal at " << argmax_equal << "/" << n;
      EXPECT_LT(max_abs / max_ref, 2e-2) << "relative logits error";
      ASSERT_GE(r->output_ids.size(), 8u);
      EXPECT_TRUE(std::equal(gc.greedy.begin(), gc.greedy.begin() + 8, r->output_ids.begin())) << "first 8 greedy tokens differ";
    }
  }
}

// Converts an HF dir at `dtype`, builds an engine for `backend`, and checks every golden case.
inline void check_model_against_goldens(const std::string& hf_dir, const std::string& golden_dir, DType dtype,
                                        const std::string& backend, int64_t max_num_tokens = 0) {
  TempDir tmp;
  ConvertOptions co{.model_dir = hf_dir, .output_dir = tmp.sub("ckpt"), .dtype = dtype};
  Status s = convert_hf_checkpoint(co);
  ASSERT_TRUE(s.ok()) << s.to_string();
  s = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), golden_build_config(max_num_tokens, backend), nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  check_engine_against_goldens(tmp.sub("engine"), golden_dir, dtype == DType::kF32);
}

}  // namespace kiln::test
