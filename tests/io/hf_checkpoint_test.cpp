#include "io/hf_checkpoint.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.h"
#include <string>
#include <vector>

namespace kiln {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

struct Weights {
  std::vector<float> embed = {0.5f, -1.0f, 2.0f, 3.5f, -0.25f, 8.0f};  // [3, 2]
  std::vector<float> norm = {1.0f, 1.5f};                              // [2]
  std::vector<uint16_t> head_bf16 = {0x3f80, 0xc000, 0x4040, 0x3f00};  // 1, -2, 3, 0.5 as bf16, [2, 2]
  std::vector<int64_t> ids = {7, 8, 9};                                // [3]

  SafetensorsTensorToWrite t_embed() const { return {"model.embed_tokens.weight", DType::kF32, Shape{3, 2}, embed.data()}; }
  SafetensorsTensorToWrite t_norm() const { return {"model.norm.weight", DType::kF32, Shape{2}, norm.data()}; }
  SafetensorsTensorToWrite t_head() const { return {"lm_head.weight", DType::kBF16, Shape{2, 2}, head_bf16.data()}; }
  SafetensorsTensorToWrite t_ids() const { return {"ids", DType::kI64, Shape{3}, ids.data()}; }
};

// Index with the two-shard layout used below.
std::string index_json(const std::string& shard1, const std::string& shard2) {
  nlohmann::json index = {{"metadata", {{"total_size", 64}}},
                          {"weight_map",
                           {{"model.embed_tokens.weight", shard1}, {"model.norm.weight", shard1}, {"lm_head.weight", shard2}}}};
  return index.dump(2);
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

void write_two_shards(const TempDir& dir, const Weights& w) {
  ASSERT_TRUE(write_safetensors(dir.sub(kShard1), {w.t_embed(), w.t_norm()}, {{"format", "pt"}}).ok());
  ASSERT_TRUE(write_safetensors(dir.sub(kShard2), {w.t_head()}, {{"format", "pt"}}).ok());
}

TEST(HfCheckpointTest, SingleFile) {
  TempDir dir;
  Weights w;
  ASSERT_TRUE(write_safetensors(dir.sub("model.safetensors"), {w.t_embed(), w.t_norm(), w.t_head(), w.t_ids()}).ok());
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const HfCheckpoint& ck = r.value();
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"ids", "lm_head.weight", "model.embed_tokens.weight",
                                                  "model.norm.weight"}));
  EXPECT_EQ(ck.size(), 4u);
  EXPECT_EQ(ck.shard_paths(), (std::vector<std::string>{dir.sub("model.safetensors")}));
  const SafetensorsEntry* e = ck.find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (Shape{3, 2}));
  EXPECT_EQ(ck.find("nope"), nullptr);

  auto f32 = ck.read_as("model.embed_tokens.weight", DType::kF32);
  ASSERT_TRUE(f32.ok()) << f32.status().to_string();
  ASSERT_EQ(f32->size(), 6 * sizeof(float));
  EXPECT_EQ(std::memcmp(f32->data(), w.embed.data(), 6 * sizeof(float)), 0);

  auto widened = ck.read_as("lm_head.weight", DType::kF32);
  ASSERT_TRUE(widened.ok()) << widened.status().to_string();
  const float* h = static_cast<const float*>(widened->data());
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], 3.0f);
  EXPECT_EQ(h[3], 0.5f);

  auto halves = ck.read_as("model.embed_tokens.weight", DType::kF16);
  ASSERT_TRUE(halves.ok()) << halves.status().to_string();
  ASSERT_EQ(halves->size(), 6 * sizeof(uint16_t));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f16_to_f32(static_cast<const uint16_t*>(halves->data())[i]), w.embed[i]);

  auto missing = ck.read_as("model.layers.99.weight", DType::kF32);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("model.layers.99.weight"), std::string::npos);

  auto ints = ck.read_as("ids", DType::kF32);
  ASSERT_FALSE(ints.ok());
  EXPECT_EQ(ints.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ints.status().message().find("'ids'"), std::string::npos) << ints.status().message();

  auto to_int = ck.read_as("model.norm.weight", DType::kI32);
  ASSERT_FALSE(to_int.ok());
  EXPECT_EQ(to_int.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(to_int.status().message().find("'model.norm.weight'"), std::string::npos);
}

TEST(HfCheckpointTest, ReadAsHandlesUnalignedData) {
  TempDir dir;
  uint8_t a = 1;
  std::vector<float> b = {1.0f, -3.0f, 0.125f};
  // "a" (1 byte) comes first, so "b" starts at an odd address in the mapping.
  ASSERT_TRUE(write_safetensors(dir.sub("model.safetensors"),
                                {{"a", DType::kU8, Shape{1}, &a}, {"b", DType::kF32, Shape{3}, b.data()}})
                  .ok());
  auto ck = HfCheckpoint::open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  EXPECT_NE(reinterpret_cast<uintptr_t>(ck->find("b")->data) % 4, 0u);
  auto f16 = ck->read_as("b", DType::kF16);
  ASSERT_TRUE(f16.ok()) << f16.status().to_string();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(f16_to_f32(static_cast<const uint16_t*>(f16->data())[i]), b[i]);
  auto f64 = ck->read_as("b", DType::kF64);
  ASSERT_TRUE(f64.ok());
  EXPECT_EQ(static_cast<const double*>(f64->data())[1], -3.0);
}

TEST(HfCheckpointTest, SingleFileOfAnyName) {
  TempDir dir;
  Weights w;
  ASSERT_TRUE(write_safetensors(dir.sub("weights.safetensors"), {w.t_norm()}).ok());
  write_text(dir.sub("config.json"), "{}");
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->names(), (std::vector<std::string>{"model.norm.weight"}));
}

TEST(HfCheckpointTest, SeveralFilesWithoutIndexAreAmbiguous) {
  TempDir dir;
  Weights w;
  write_two_shards(dir, w);
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("index"), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, TwoShardIndex) {
  TempDir dir;
  Weights w;
  write_two_shards(dir, w);
  write_text(dir.sub("model.safetensors.index.json"), index_json(kShard1, kShard2));
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const HfCheckpoint& ck = r.value();
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}));
  EXPECT_EQ(ck.shard_paths(), (std::vector<std::string>{dir.sub(kShard1), dir.sub(kShard2)}));
  ASSERT_NE(ck.find("lm_head.weight"), nullptr);
  EXPECT_EQ(ck.find("lm_head.weight")->dtype, DType::kBF16);
  auto norm = ck.read_as("model.norm.weight", DType::kF32);
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(static_cast<const float*>(norm->data())[1], 1.5f);
  auto head = ck.read_as("lm_head.weight", DType::kBF16);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(std::memcmp(head->data(), w.head_bf16.data(), 8), 0);

  // The checkpoint stays valid when moved.
  HfCheckpoint moved = std::move(r.value());
  auto again = moved.read_as("model.embed_tokens.weight", DType::kF32);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(static_cast<const float*>(again->data())[5], 8.0f);
}

TEST(HfCheckpointTest, IndexNamingMissingShard) {
  TempDir dir;
  Weights w;
  ASSERT_TRUE(write_safetensors(dir.sub(kShard1), {w.t_embed(), w.t_norm()}).ok());
  write_text(dir.sub("model.safetensors.index.json"), index_json(kShard1, kShard2));
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(kShard2), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("missing"), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, IndexWhoseShardLacksTensor) {
  TempDir dir;
  Weights w;
  ASSERT_TRUE(write_safetensors(dir.sub(kShard1), {w.t_embed()}).ok());  // no model.norm.weight
  ASSERT_TRUE(write_safetensors(dir.sub(kShard2), {w.t_head()}).ok());
  write_text(dir.sub("model.safetensors.index.json"), index_json(kShard1, kShard2));
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("'model.norm.weight'"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find(kShard1), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, IndexWithShardOutsideFolder) {
  TempDir root;
  Weights w;
  fs::create_directory(root.sub("model"));
  // The file exists one level up: it must still be refused.
  ASSERT_TRUE(write_safetensors(root.sub("x.safetensors"), {w.t_head()}).ok());
  ASSERT_TRUE(write_safetensors(root.sub("model/" + std::string(kShard1)), {w.t_embed(), w.t_norm()}).ok());
  for (std::string bad : {"../x.safetensors", "..", "sub/x.safetensors", "/tmp/x.safetensors", "..\\x.safetensors"}) {
    write_text(root.sub("model/model.safetensors.index.json"), index_json(kShard1, bad));
    auto r = HfCheckpoint::open(root.sub("model"));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << bad;
    EXPECT_NE(r.status().message().find("not a plain file name"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("'" + bad + "'"), std::string::npos) << r.status().message();
  }
}

TEST(HfCheckpointTest, BadIndexFiles) {
  TempDir dir;
  Weights w;
  write_two_shards(dir, w);
  for (std::string text : {"not json", "[]", "{}", R"({"weight_map": []})", R"({"weight_map": {}})",
                           R"({"weight_map": {"a": 3}})"}) {
    write_text(dir.sub("model.safetensors.index.json"), text);
    auto r = HfCheckpoint::open(dir.path());
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << text;
    EXPECT_NE(r.status().message().find("model.safetensors.index.json"), std::string::npos) << r.status().message();
  }
}

TEST(HfCheckpointTest, CorruptShardIsReportedByName) {
  TempDir dir;
  Weights w;
  write_two_shards(dir, w);
  write_text(dir.sub(kShard2), "garbage!garbage!");
  write_text(dir.sub("model.safetensors.index.json"), index_json(kShard1, kShard2));
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find(kShard2), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, EmptyFolder) {
  TempDir dir;
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("no safetensors weights"), std::string::npos) << r.status().message();
  EXPECT_EQ(r.status().message().find("pytorch_model.bin"), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, PytorchBinIsNamedAsUnsupported) {
  TempDir dir;
  write_text(dir.sub("pytorch_model.bin"), "PK");
  write_text(dir.sub("config.json"), "{}");
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("no safetensors weights"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("pytorch_model.bin"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("not supported"), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, DanglingSymlinkIsReported) {
  TempDir dir;  // as in a Hugging Face cache whose blob was deleted
  fs::create_symlink(dir.sub("blobs/gone"), dir.sub("model.safetensors"));
  auto r = HfCheckpoint::open(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("model.safetensors"), std::string::npos) << r.status().message();
}

TEST(HfCheckpointTest, MissingFolderOrAFile) {
  TempDir dir;
  auto missing = HfCheckpoint::open(dir.sub("nope"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  write_text(dir.sub("f"), "x");
  auto file = HfCheckpoint::open(dir.sub("f"));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument);
}

TEST(HfCheckpointTest, OpensRealFixtureFolder) {
  const std::string dir = std::string(KILN_TEST_DATA_DIR) + "/models/llama";
  auto r = HfCheckpoint::open(dir);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const SafetensorsEntry* e = r->find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, DType::kF32);
  EXPECT_EQ(e->shape, (Shape{512, 64}));
  auto bf16 = r->read_as("model.embed_tokens.weight", DType::kBF16);
  ASSERT_TRUE(bf16.ok()) << bf16.status().to_string();
  EXPECT_EQ(bf16->size(), 512u * 64u * 2u);
}

}  // namespace
}  // namespace kiln
