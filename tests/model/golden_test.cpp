// Golden tests: every fixture model's outputs against Hugging Face transformers (fp32, eager, CPU).
#include <gtest/gtest.h>

#include <filesystem>

#include "golden_check.h"
#include "model/checkpoint.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

void check_model(const std::string& hf_dir, const std::string& golden_dir, DType dtype, int64_t max_num_tokens = 0) {
  test::check_model_against_goldens(hf_dir, golden_dir, dtype, "cpu", max_num_tokens);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, Float32MatchesTransformers) {
  const std::string dir = test::data_path("models/" + GetParam());
  check_model(dir, dir, DType::kF32);
}

TEST_P(GoldenTest, Float32ChunkedPrefillMatchesTransformers) {
  // 16-token prefill chunks: later chunks attend to KV written by earlier forwards, across blocks.
  const std::string dir = test::data_path("models/" + GetParam());
  check_model(dir, dir, DType::kF32, 16);
}

TEST_P(GoldenTest, BFloat16WithinTolerance) {
  const std::string dir = test::data_path("models/" + GetParam());
  check_model(dir, dir, DType::kBF16);
}

TEST_P(GoldenTest, Float16WithinTolerance) {
  const std::string dir = test::data_path("models/" + GetParam());
  check_model(dir, dir, DType::kF16);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3"));

TEST(GoldenLegacyConfig, Phi3FromTransformers4Config) {
  // The same weights with the older hub config.json (rope_scaling, rope_theta, torch_dtype).
  const std::string src = test::data_path("models/phi3");
  test::TempDir hf;
  fs::copy_file(src + "/config.legacy.json", hf.sub("config.json"));
  fs::copy_file(src + "/generation_config.json", hf.sub("generation_config.json"));
  fs::create_symlink(fs::absolute(src + "/model.safetensors"), hf.sub("model.safetensors"));
  check_model(hf.path(), src, DType::kF32);
}

}  // namespace
}  // namespace kiln
