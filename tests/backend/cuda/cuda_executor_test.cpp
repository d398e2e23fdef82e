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
