// The in-flight batching executor on the GPU: a request's greedy tokens and log-probs do not depend on
// what else is in the batch (the CPU's BatchInvariance test, on the CUDA backend). Decode steps of 1..4
// tokens run the fused GEMVs and larger ones cuBLASLt, prompts arrive in chunks and mix with decode steps,
// so a request's rows go through different kernels alone and in the crowd: only their roundings may differ,
// which the tolerances bound (fp32: the CPU test's 1e-4; 16-bit: the goldens' 2e-2).
#include <gtest/gtest.h>

#include "backend/cuda/cuda_test_util.h"
#include "executor/executor_fixture.h"

namespace kiln {
namespace {

struct CudaInvarianceCase {
  std::string model;
  DType dtype;
  bool chunked;
  float log_prob_tol;
};

class CudaBatchInvariance : public ::testing::TestWithParam<CudaInvarianceCase> {};

TEST_P(CudaBatchInvariance, GreedyTokensAndLogProbsEqualAlone) {
  if (!test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  const CudaInvarianceCase& p = GetParam();
  test::EngineOptions plain{.model = p.model, .max_num_tokens = 256, .backend = "cuda", .dtype = p.dtype};
  test::EngineOptions small = plain;
  small.max_num_tokens = 40;  // prompts up to 100 tokens arrive in chunks
  test::LoadedModel& ref_model = test::load_model(plain);
  test::LoadedModel& model = test::load_model(p.chunked ? small : plain);
  const auto reqs = test::mixed_requests(7, static_cast<int32_t>(ref_model.engine.model.vocab_size));
  ExecutorConfig config;
  config.scheduler.enable_chunked_context = p.chunked;
  config.kv_cache.enable_reuse = true;
  auto ex = test::make_executor(model, config);
  const auto crowd = test::run_crowd(*ex, reqs, 11);
  for (size_t i = 0; i < reqs.size(); ++i)
    test::expect_same_output(test::run_alone(ref_model, reqs[i]), crowd[i], "request " + std::to_string(i),
                             p.log_prob_tol);
  ex->shutdown();
}

INSTANTIATE_TEST_SUITE_P(Executor, CudaBatchInvariance,
                         ::testing::Values(CudaInvarianceCase{"llama", DType::kF32, false, 1e-4f},
                                           CudaInvarianceCase{"llama", DType::kF32, true, 1e-4f},
                                           CudaInvarianceCase{"qwen3", DType::kF32, true, 1e-4f},
                                           CudaInvarianceCase{"llama", DType::kF16, true, 2e-2f},
                                           CudaInvarianceCase{"mistral", DType::kBF16, true, 2e-2f}),
                         [](const auto& info) {
                           return info.param.model + "_" + dtype_name(info.param.dtype) +
                                  (info.param.chunked ? "_chunked" : "");
                         });

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Sampled requests (temperature, top-k, top-p with decay, penalties, bad words, min_length, seeds) picked by the
// GPU sampler draw the tokens the host sampler draws from the same logits; those without penalties also run
// ahead of the host (overlap), the others wait for their last token.
TEST(CudaExecutor, DeviceSamplingDrawsTheHostSamplersTokens) {
  if (!test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  test::LoadedModel& m = test::load_model({.model = "llama", .max_num_tokens = 256, .backend = "cuda", .dtype = DType::kF32});
  const int32_t vocab = static_cast<int32_t>(m.engine.model.vocab_size);
  std::vector<Request> reqs = test::mixed_requests(61, vocab, 12);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.max_new_tokens = 16;
    r.sampling.random_seed = 1000 + i;
    r.sampling.temperature = 0.6f + 0.1f * static_cast<float>(i % 5);
    r.sampling.top_k = i % 3 == 0 ? 0 : static_cast<int32_t>(5 + 20 * (i % 4));
    r.sampling.top_p = i % 4 == 0 ? 0.0f : 0.7f + 0.05f * static_cast<float>(i % 5);
    if (r.sampling.top_k == 0 && r.sampling.top_p == 0.0f) r.sampling.top_p = 1.0f;  // sample the whole row
    if (i % 6 == 5) r.sampling.top_p_decay = 0.9f;
    if (i % 4 == 1) r.sampling.repetition_penalty = 1.3f;
    if (i % 4 == 2) {
      r.sampling.presence_penalty = 0.5f;
      r.sampling.frequency_penalty = 0.3f;
    }
    if (i % 5 == 3) r.bad_words = {{r.input_ids[0]}, {r.input_ids[1], r.input_ids[2]}};
    if (i == 7) {
      r.end_ids = std::vector<int32_t>{r.input_ids[3]};
      r.sampling.min_length = 8;
    }
    r.output.return_log_probs = i % 2 == 0;
  }
  auto run = [&](bool on_device, const std::vector<Request>& reqs) {
    ExecutorConfig config;
    config.device_sampling = on_device;
    auto ex = test::make_executor(m, config);
    std::vector<RequestId> ids;
    for (const Request& r : reqs) ids.push_back(*ex->enqueue(r));
    std::vector<Response> out;
    for (RequestId id : ids) {
      auto resp = ex->await_final(id);
      EXPECT_TRUE(resp.ok()) << resp.status().to_string();
      out.push_back(resp.ok() ? std::move(*resp) : Response{});
    }
    const ExecutorStats stats = ex->stats();
    ex.reset();
    return std::make_pair(out, stats);
  };
  const auto [host, host_stats] = run(false, reqs);
  const auto [device, device_stats] = run(true, reqs);
  for (size_t i = 0; i < reqs.size(); ++i)
    test::expect_same_output(host[i], device[i], "request " + std::to_string(i), 1e-4f);
  // A step runs ahead only when no request in it needs its last token's value (penalties, bans): every step
  // above has some. Without them:
  std::vector<Request> plain;
  for (const Request& r : reqs)
    if (r.sampling.repetition_penalty == 1.0f && r.sampling.presence_penalty == 0.0f && r.bad_words.empty() &&
        r.sampling.min_length == 0)
      plain.push_back(r);
  ASSERT_GE(plain.size(), 2u);
  const auto [plain_host, plain_host_stats] = run(false, plain);
  const auto [plain_device, plain_device_stats] = run(true, plain);
  EXPECT_GT(plain_device_stats.launched_ahead, 0) << "sampled steps without penalties should run ahead";
  EXPECT_EQ(plain_host_stats.launched_ahead, 0) << "host sampling needs the logits first";
  for (size_t i = 0; i < plain.size(); ++i)
    test::expect_same_output(plain_host[i], plain_device[i], "plain request " + std::to_string(i), 1e-4f);
}

}  // namespace
}  // namespace kiln
