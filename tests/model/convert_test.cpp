// kiln convert: what it accepts and, above all, what it refuses (with messages that say what is wrong).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A copy of the llama fixture folder that a test may damage.
class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors"})
      fs::copy_file(test::data_path(std::string("models/llama/") + f), hf_.sub(f));
  }
  json config() {
    std::ifstream in(hf_.sub("config.json"));
    return json::parse(in);
  }
  void write_config(const json& j) { std::ofstream(hf_.sub("config.json")) << j.dump(); }
  Status convert(DType dtype = DType::kF32, int tp = 1) {
    return convert_hf_checkpoint({.model_dir = hf_.path(), .output_dir = out_.sub("ckpt"), .dtype = dtype, .tp_size = tp});
  }
  // Rewrites model.safetensors with `edit` applied to its tensors.
  void rewrite_weights(const std::function<void(std::vector<SafetensorsTensorToWrite>&, std::vector<std::vector<char>>&)>& edit) {
    auto st = SafetensorsFile::open(hf_.sub("model.safetensors"));
    ASSERT_TRUE(st.ok());
    std::vector<std::vector<char>> store;
    std::vector<SafetensorsTensorToWrite> ts;
    for (const auto& e : st->entries()) {
      store.emplace_back(static_cast<const char*>(e.data), static_cast<const char*>(e.data) + e.nbytes);
    }
    size_t i = 0;
    for (const auto& e : st->entries()) ts.push_back({e.name, e.dtype, e.shape, store[i++].data()});
    edit(ts, store);
    fs::remove(hf_.sub("model.safetensors"));
    ASSERT_TRUE(write_safetensors(hf_.sub("model.safetensors"), ts).ok());
  }
  test::TempDir hf_, out_;
};

TEST_F(ConvertTest, ConvertsAndRecordsTheModel) {
  ASSERT_TRUE(convert(DType::kBF16).ok());
  auto info = read_checkpoint_info(out_.sub("ckpt"));
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->dtype, DType::kBF16);
  EXPECT_EQ(info->model.architecture, "LlamaForCausalLM");
  EXPECT_EQ(info->model.num_kv_heads, 2);
  auto st = SafetensorsFile::open(checkpoint_rank_file(out_.sub("ckpt"), 0));
  ASSERT_TRUE(st.ok());
  const SafetensorsEntry* qkv = st->find("layers.0.attn.qkv.weight");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->dtype, DType::kBF16);
  EXPECT_EQ(qkv->shape, (Shape{64 + 2 * 32, 64}));
  EXPECT_EQ(st->find("layers.0.attn_norm.weight")->dtype, DType::kF32);  // norms stay f32
}

TEST_F(ConvertTest, ReadsShardedCheckpoints) {
  // Split the weights over two shards with an index, as the hub does for large models.
  auto st = SafetensorsFile::open(hf_.sub("model.safetensors"));
  ASSERT_TRUE(st.ok());
  std::vector<SafetensorsTensorToWrite> a, b;
  json weight_map;
  int i = 0;
  for (const auto& e : st->entries()) {
    bool first = i++ % 2 == 0;
    (first ? a : b).push_back({e.name, e.dtype, e.shape, e.data});
    weight_map[e.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(write_safetensors(hf_.sub("model-00001-of-00002.safetensors"), a).ok());
  ASSERT_TRUE(write_safetensors(hf_.sub("model-00002-of-00002.safetensors"), b).ok());
  std::ofstream(hf_.sub("model.safetensors.index.json")) << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump();
  fs::remove(hf_.sub("model.safetensors"));
  Status s = convert();
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST_F(ConvertTest, RefusesMissingConfig) {
  fs::remove(hf_.sub("config.json"));
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("no config.json"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesMalformedConfig) {
  std::ofstream(hf_.sub("config.json")) << "{\"architectures\": [\"LlamaForCausalLM\"";
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not valid JSON"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesUnknownArchitectureByName) {
  json c = config();
  c["architectures"] = {"GPT2LMHeadModel"};
  write_config(c);
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("GPT2LMHeadModel"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("Phi3ForCausalLM"), std::string::npos) << "should list what is supported: " << s.message();
}

TEST_F(ConvertTest, RefusesMissingRequiredField) {
  json c = config();
  c.erase("num_hidden_layers");
  write_config(c);
  Status s = convert();
  EXPECT_NE(s.message().find("num_hidden_layers"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesHeadsThatDoNotDivide) {
  json c = config();
  c["num_key_value_heads"] = 3;
  write_config(c);
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_key_value_heads"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesAConfigDtypeKilnCannotRun) {
  json c = config();
  c.erase("dtype");
  c["torch_dtype"] = "float8_e4m3fn";
  write_config(c);
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("float8_e4m3fn"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesWeightsStoredInANonFloatDtype) {
  rewrite_weights([](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.norm.weight") t.dtype = DType::kI32;  // same bytes, claimed as int32
  });
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.norm.weight"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("int32"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesAMissingTensorByName) {
  rewrite_weights([](auto& ts, auto&) {
    std::erase_if(ts, [](const auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  });
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesAShapeThatDoesNotMatchTheConfig) {
  json c = config();
  c["intermediate_size"] = 200;
  write_config(c);
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("gate_up"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesUnexpectedTensors) {
  static const float extra[4] = {1, 2, 3, 4};
  rewrite_weights([](auto& ts, auto&) { ts.push_back({"model.layers.0.self_attn.rotary_bias", DType::kF32, Shape{4}, extra}); });
  Status s = convert();
  EXPECT_NE(s.message().find("unexpected tensor 'model.layers.0.self_attn.rotary_bias'"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesASafetensorsHeaderThatLiesAboutOffsets) {
  // Patch the first entry's end offset in the header to claim more bytes than the shape needs.
  std::string bytes;
  {
    std::ifstream in(hf_.sub("model.safetensors"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  json h = json::parse(bytes.substr(8, hlen));
  for (auto& [name, e] : h.items())
    if (name != "__metadata__") {
      e["data_offsets"][1] = e["data_offsets"][1].get<uint64_t>() + 4096;
      break;
    }
  std::string nh = h.dump();
  nh.resize((nh.size() + 7) / 8 * 8, ' ');
  uint64_t nlen = nh.size();
  std::string out(reinterpret_cast<const char*>(&nlen), 8);
  out += nh + bytes.substr(8 + hlen);
  std::ofstream(hf_.sub("model.safetensors"), std::ios::binary | std::ios::trunc) << out;
  Status s = convert();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("data_offsets"), std::string::npos) << s.message();
}

TEST_F(ConvertTest, RefusesValuesOutsideFloat16Range) {
  rewrite_weights([](auto& ts, auto& store) {
    for (size_t i = 0; i < ts.size(); ++i)
      if (ts[i].name == "model.embed_tokens.weight") reinterpret_cast<float*>(store[i].data())[7] = 1e6f;
  });
  Status s = convert(DType::kF16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("embed.weight"), std::string::npos) << s.message();
  EXPECT_TRUE(convert(DType::kBF16).ok()) << "bf16 has the range";
}

// Each rank's file holds its part of each tensor: llama fixture, 4 heads / 2 KV heads of 16, intermediate 176.
TEST_F(ConvertTest, SplitsTensorsPerRank) {
  ASSERT_TRUE(convert(DType::kF32, 1).ok());
  ASSERT_TRUE(convert_hf_checkpoint({.model_dir = hf_.path(), .output_dir = out_.sub("tp2"), .tp_size = 2}).ok());
  auto whole = SafetensorsFile::open(out_.sub("ckpt/rank0.safetensors"));
  auto r1 = SafetensorsFile::open(out_.sub("tp2/rank1.safetensors"));
  ASSERT_TRUE(whole.ok() && r1.ok());
  auto f32 = [](const SafetensorsEntry* e) { return static_cast<const float*>(e->data); };
  const int64_t hidden = 64, D = 16, q = 4 * D, kv = 2 * D, inter = 176;
  // qkv: rank 1 has q heads 2-3, then KV head 1 of k, then KV head 1 of v.
  const SafetensorsEntry* wq = whole->find("layers.1.attn.qkv.weight");
  const SafetensorsEntry* rq = r1->find("layers.1.attn.qkv.weight");
  ASSERT_EQ(rq->shape, (Shape{(q + 2 * kv) / 2, hidden}));
  EXPECT_EQ(f32(rq)[0], f32(wq)[(2 * D) * hidden]);
  EXPECT_EQ(f32(rq)[(2 * D) * hidden + 5], f32(wq)[(q + D) * hidden + 5]);          // its k rows
  EXPECT_EQ(f32(rq)[(3 * D) * hidden + 7], f32(wq)[(q + kv + D) * hidden + 7]);     // its v rows
  // o: [hidden, q / 2] columns of its heads; down: [hidden, inter / 2] columns of its slice.
  const SafetensorsEntry* wo = whole->find("layers.0.attn.o.weight");
  const SafetensorsEntry* ro = r1->find("layers.0.attn.o.weight");
  ASSERT_EQ(ro->shape, (Shape{hidden, q / 2}));
  EXPECT_EQ(f32(ro)[3 * (q / 2) + 1], f32(wo)[3 * q + q / 2 + 1]);
  const SafetensorsEntry* wd = whole->find("layers.0.mlp.down.weight");
  const SafetensorsEntry* rd = r1->find("layers.0.mlp.down.weight");
  ASSERT_EQ(rd->shape, (Shape{hidden, inter / 2}));
  EXPECT_EQ(f32(rd)[2 * (inter / 2)], f32(wd)[2 * inter + inter / 2]);
  // gate_up: its gate rows, then its up rows.
  const SafetensorsEntry* wg = whole->find("layers.0.mlp.gate_up.weight");
  const SafetensorsEntry* rg = r1->find("layers.0.mlp.gate_up.weight");
  EXPECT_EQ(f32(rg)[0], f32(wg)[(inter / 2) * hidden]);
  EXPECT_EQ(f32(rg)[(inter / 2) * hidden], f32(wg)[(inter + inter / 2) * hidden]);
  // The vocabulary: rows 256-511 of 512; norms whole.
  EXPECT_EQ(r1->find("embed.weight")->shape, (Shape{256, hidden}));
  EXPECT_EQ(f32(r1->find("embed.weight"))[3], f32(whole->find("embed.weight"))[256 * hidden + 3]);
  EXPECT_EQ(f32(r1->find("final_norm.weight"))[9], f32(whole->find("final_norm.weight"))[9]);
  auto info = read_checkpoint_info(out_.sub("tp2"));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tp_size, 2);
}

TEST_F(ConvertTest, RefusesSplitsThatDoNotDivide) {
  Status s = convert(DType::kF32, 3);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--tp_size 3 does not divide num_attention_heads=4"), std::string::npos) << s.message();
}

TEST(ModelConfigTest, ReadsEosFromGenerationConfigAsIntOrList) {
  std::ifstream in(test::data_path("models/llama/config.json"));
  json c = json::parse(in);
  json gen = {{"eos_token_id", json::array({2, 5})}};
  auto m = ModelConfig::from_hf(c, &gen);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->eos_token_ids, (std::vector<int64_t>{2, 5}));
  gen["eos_token_id"] = 7;
  m = ModelConfig::from_hf(c, &gen);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->eos_token_ids, (std::vector<int64_t>{7}));
  auto round = ModelConfig::from_json(m->to_json());
  ASSERT_TRUE(round.ok()) << round.status().to_string();
  EXPECT_EQ(round->to_json(), m->to_json());
}

TEST(ModelConfigTest, SlidingWindowsPerArchitecture) {
  std::ifstream in(test::data_path("models/mistral/config.json"));
  auto m = ModelConfig::from_hf(json::parse(in), nullptr);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->layer_window, (std::vector<int64_t>{24, 24}));
  std::ifstream in2(test::data_path("models/qwen2/config.json"));
  json q = json::parse(in2);
  q["sliding_window"] = 16;
  q.erase("layer_types");
  q["use_sliding_window"] = true;
  q["max_window_layers"] = 1;
  m = ModelConfig::from_hf(q, nullptr);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->layer_window, (std::vector<int64_t>{0, 16}));
}

}  // namespace
}  // namespace kiln
