// kiln build / engine loading: limits validated at build, and damaged or mismatched engines refused
// with a message that says what is wrong and what to run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend_factory.h"
#include "backend/cpu/cpu_backend.h"
#include "io/engine_file.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/llama_model.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(convert_hf_checkpoint({.model_dir = test::data_path("models/qwen2"), .output_dir = ckpt(), .dtype = DType::kF32}).ok());
  }
  std::string ckpt() const { return dir_.sub("ckpt"); }
  std::string engine() const { return dir_.sub("engine"); }
  BuildConfig limits() const {
    BuildConfig b;
    b.max_batch_size = 4;
    b.max_input_len = 128;
    b.max_seq_len = 256;
    return b;
  }
  Status build(BuildConfig b) { return build_engine(ckpt(), engine(), b, nullptr); }
  std::string rank0() const { return engine() + "/rank0.engine"; }
  test::TempDir dir_;
};

TEST_F(EngineTest, BuildsLoadsAndPlans) {
  std::string plan;
  ASSERT_TRUE(build_engine(ckpt(), engine(), limits(), &plan).ok());
  EXPECT_NE(plan.find("KV cache per token: 512 bytes"), std::string::npos) << plan;  // K+V * 2 layers * 2 heads * 16 * 4 bytes
  auto e = load_engine(engine());
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->build.max_seq_len, 256);
  EXPECT_EQ(e->build.max_num_tokens, 4 * 128);
  EXPECT_NE(e->file->find("lm_head.weight"), nullptr) << "tied LM head is packed from the embedding";
}

TEST_F(EngineTest, ACudaEngineKeepsRowMajorWeightsAndRunsOnlyOnItsBackend) {
  BuildConfig b = limits();
  b.backend = "cuda";
  ASSERT_TRUE(build(b).ok());
  auto e = load_engine(engine());
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->build.backend, "cuda");
  const EngineTensor* t = e->file->find("layers.0.attn.qkv.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->layout, "plain");  // [out, in] as cuBLASLt reads it, not the CPU's panels
  EXPECT_EQ(t->nbytes, static_cast<size_t>(t->shape.numel()) * 4);
  CpuBackend cpu;
  auto m = LlamaModel::load(*e, cpu);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(m.status().message().find("kiln build --backend cpu"), std::string::npos) << m.status().to_string();
  // Without a GPU (CI), asking for the CUDA backend fails with what is missing; unknown names are refused.
  auto cuda = make_backend("cuda");
  if (!cuda.ok()) {
    const std::string& why = cuda.status().message();
    EXPECT_TRUE(why.find("CUDA") != std::string::npos || why.find("cuda") != std::string::npos) << why;
  }
  EXPECT_EQ(make_backend("tpu").status().code(), StatusCode::kInvalidArgument);
  b.backend = "tpu";
  EXPECT_EQ(build(b).code(), StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, RefusesLimitsBeyondTheModel) {
  BuildConfig b = limits();
  b.max_seq_len = 100000;
  Status s = build(b);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_position_embeddings=512"), std::string::npos) << s.message();
  b = limits();
  b.max_input_len = 300;
  s = build(b);
  EXPECT_NE(s.message().find("--max_input_len=300 exceeds --max_seq_len=256"), std::string::npos) << s.message();
  b = limits();
  b.max_batch_size = 0;
  EXPECT_EQ(build(b).code(), StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, RefusesAGemmPluginOfAnotherDtype) {
  BuildConfig b = limits();
  b.gemm_plugin = "float16";
  Status s = build(b);
  EXPECT_NE(s.message().find("does not match the checkpoint dtype float32"), std::string::npos) << s.message();
  b.gemm_plugin = "float32";
  EXPECT_TRUE(build(b).ok());
}

TEST_F(EngineTest, RefusesAnEngineOfAnotherFormatVersion) {
  ASSERT_TRUE(build(limits()).ok());
  std::ifstream in(engine() + "/config.json");
  json c = json::parse(in);
  c["kiln_engine_format_version"] = 99;
  std::ofstream(engine() + "/config.json") << c.dump();
  auto e = load_engine(engine());
  EXPECT_EQ(e.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(e.status().message().find("kiln build"), std::string::npos) << e.status().message();
}

TEST_F(EngineTest, RefusesATruncatedEngineFile) {
  ASSERT_TRUE(build(limits()).ok());
  fs::resize_file(rank0(), fs::file_size(rank0()) - 100);
  auto e = load_engine(engine());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find("truncated"), std::string::npos) << e.status().message();
}

TEST_F(EngineTest, RefusesACorruptedEngineFile) {
  ASSERT_TRUE(build(limits()).ok());
  {
    std::fstream f(rank0(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(rank0()) - 200));
    f.put('\x5a');
  }
  auto e = load_engine(engine());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find("checksum"), std::string::npos) << e.status().message();
}

TEST_F(EngineTest, RefusesAnEngineWithAMissingTensor) {
  ASSERT_TRUE(build(limits()).ok());
  auto file = EngineFile::open(rank0());
  ASSERT_TRUE(file.ok());
  EngineFileWriter w;
  for (const EngineTensor& t : (*file)->tensors())
    if (t.name != "layers.1.mlp.down.weight") w.add(t);
  ASSERT_TRUE(w.write(dir_.sub("partial.engine")).ok());
  file->reset();
  fs::rename(dir_.sub("partial.engine"), rank0());
  auto e = load_engine(engine());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find("'layers.1.mlp.down.weight' is missing"), std::string::npos) << e.status().message();
}

TEST_F(EngineTest, RefusesAShapeMismatch) {
  ASSERT_TRUE(build(limits()).ok());
  std::ifstream in(engine() + "/config.json");
  json c = json::parse(in);
  c["model"]["intermediate_size"] = 96;
  std::ofstream(engine() + "/config.json") << c.dump();
  auto e = load_engine(engine());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find("expected float32 [192, 64]"), std::string::npos) << e.status().message();
}

TEST_F(EngineTest, RefusesACheckpointDirAsEngine) {
  auto e = load_engine(ckpt());
  EXPECT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("kiln build"), std::string::npos) << e.status().message();
}

TEST(EngineFileTest, RefusesGarbage) {
  test::TempDir d;
  std::ofstream(d.sub("x.engine"), std::ios::binary) << "not an engine at all, just text";
  auto f = EngineFile::open(d.sub("x.engine"));
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(f.status().message().find("bad magic"), std::string::npos);
}

TEST(EngineFileTest, RoundTripsAlignedTensors) {
  test::TempDir d;
  std::vector<float> a(37, 1.5f);
  std::vector<uint16_t> b(5, 7);
  EngineFileWriter w;
  w.add({"a", DType::kF32, Shape{37}, "plain", a.data(), a.size() * 4});
  w.add({"b", DType::kBF16, Shape{5}, "plain", b.data(), b.size() * 2});
  ASSERT_TRUE(w.write(d.sub("t.engine")).ok());
  auto f = EngineFile::open(d.sub("t.engine"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const EngineTensor* t = (*f)->find("b");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % 64, 0u);
  EXPECT_EQ(std::memcmp(t->data, b.data(), 10), 0);
  EXPECT_EQ((*f)->find("a")->shape, Shape{37});
}

}  // namespace
}  // namespace kiln
