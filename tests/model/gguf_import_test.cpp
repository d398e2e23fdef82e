// GGUF import: the fixture models written as GGUF files the way llama.cpp's converter lays them out
// (tests/data/gguf/make_fixture_ggufs.py) convert, build and run to the same outputs as their Hugging Face
// goldens (F32 files), and the quantized engines (Q8_0 / Q4_1 kept quantized, run by the quantized GEMM)
// agree with the same weights dequantized to float32.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backend/cpu/cpu_backend.h"
#include "golden_check.h"
#include "model/checkpoint.h"
#include "model/gguf_import.h"
#include "model/split_engines.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// GGUF -> checkpoint -> engine in `tmp`; returns the engine dir.
std::string gguf_engine(test::TempDir& tmp, const std::string& gguf, std::optional<DType> dtype, const std::string& tag) {
  GgufConvertOptions o{.gguf_path = test::data_path("gguf/" + gguf), .output_dir = tmp.sub(tag + "-ckpt"), .dtype = dtype};
  Status s = convert_gguf(o);
  EXPECT_TRUE(s.ok()) << s.to_string();
  s = build_engine(tmp.sub(tag + "-ckpt"), tmp.sub(tag + "-engine"), test::golden_build_config(), nullptr);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return tmp.sub(tag + "-engine");
}

TEST(GgufImport, LlamaArchitectureF32MatchesTransformers) {
  // Mistral's weights as a `llama` file: q/k rows permuted for llama.cpp's RoPE, the window in metadata.
  test::TempDir tmp;
  const std::string engine = gguf_engine(tmp, "mistral_llama_f32.gguf", std::nullopt, "m");
  test::check_engine_against_goldens(engine, test::data_path("models/mistral"), /*exact=*/true);
}

TEST(GgufImport, Qwen2F32MatchesTransformers) {
  test::TempDir tmp;
  const std::string engine = gguf_engine(tmp, "qwen2_f32.gguf", std::nullopt, "q");
  test::check_engine_against_goldens(engine, test::data_path("models/qwen2"), /*exact=*/true);
}

// A GGUF file split over ranks (2 x 2) runs as the single-rank engine does; kept block-quantized weights cannot
// be split (dequantize them with a dtype).
TEST(GgufImport, SplitsOverRanksWithFloatWeights) {
  test::TempDir tmp;
  const std::string one = gguf_engine(tmp, "qwen2_f32.gguf", std::nullopt, "one");
  GgufConvertOptions o{.gguf_path = test::data_path("gguf/qwen2_f32.gguf"), .output_dir = tmp.sub("four-ckpt"),
                       .tp_size = 2, .pp_size = 2};
  ASSERT_TRUE(convert_gguf(o).ok());
  BuildConfig b = test::golden_build_config();
  b.tp_size = 0;
  b.pp_size = 0;
  ASSERT_TRUE(build_engine(tmp.sub("four-ckpt"), tmp.sub("four-engine"), b, nullptr).ok());
  const std::vector<Request> reqs = test::split_test_prompts(512, 1);
  const std::vector<Response> want = test::run_all(one, reqs), got = test::run_all(tmp.sub("four-engine"), reqs);
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].output_ids, want[0].output_ids);
  for (size_t t = 0; t < want[0].output_log_probs[0].size(); ++t)
    EXPECT_NEAR(got[0].output_log_probs[0][t], want[0].output_log_probs[0][t], 1e-4);

  o = {.gguf_path = test::data_path("gguf/qwen3_q4_1.gguf"), .output_dir = tmp.sub("q-ckpt"), .tp_size = 2};
  Status s = convert_gguf(o);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("--dtype float16"), std::string::npos) << s.message();
  o.dtype = DType::kF32;
  EXPECT_TRUE(convert_gguf(o).ok());
}

TEST(GgufImport, QuantizedTensorsStayQuantized) {
  test::TempDir tmp;
  const std::string engine_dir = gguf_engine(tmp, "mistral_llama_q8_0.gguf", std::nullopt, "m");
  auto info = read_checkpoint_info(tmp.sub("m-ckpt"));
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  // Every matrix is Q8_0 in this file (rows of 64 and 160 values are whole blocks); norms stay float32,
  // and with no float matrix the float dtype (the KV cache's) is float32.
  for (const char* name : {"layers.0.attn.qkv.weight", "layers.1.mlp.down.weight", "embed.weight", "lm_head.weight"})
    EXPECT_EQ(info->quantized.at(name), GgmlType::kQ8_0) << name;
  EXPECT_EQ(info->quantized.count("layers.0.attn_norm.weight"), 0u);
  EXPECT_EQ(info->dtype, DType::kF32);
  auto engine = load_engine(engine_dir);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  EXPECT_EQ(engine->build.quantized.at("lm_head.weight"), GgmlType::kQ8_0);
  EXPECT_NE(engine->build.weight_format().find("q8_0"), std::string::npos) << engine->build.weight_format();
}

// The quantized engine against the same weights dequantized exactly to float32: the only difference is the
// quantized GEMM's 8-bit activations.
void check_quantized_against_dequantized(const std::string& gguf, double max_rel_error) {
  test::TempDir tmp;
  const std::string quant_dir = gguf_engine(tmp, gguf, std::nullopt, "quant");
  const std::string float_dir = gguf_engine(tmp, gguf, DType::kF32, "float");
  auto qe = load_engine(quant_dir), fe = load_engine(float_dir);
  ASSERT_TRUE(qe.ok() && fe.ok());
  ASSERT_FALSE(qe->build.quantized.empty());
  ASSERT_TRUE(fe->build.quantized.empty());
  CpuBackend backend;
  auto qm = LlamaModel::load(*qe, backend), fm = LlamaModel::load(*fe, backend);
  ASSERT_TRUE(qm.ok() && fm.ok());
  auto qr = SequenceRunner::create(**qm, backend), fr = SequenceRunner::create(**fm, backend);
  ASSERT_TRUE(qr.ok() && fr.ok());
  const int64_t V = qe->model.vocab_size;
  size_t positions = 0, argmax_equal = 0;
  double worst = 0;
  for (int len : {5, 17, 64}) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < len; ++i) prompt.push_back(static_cast<int32_t>((i * 37 + 11) % V));
    GreedyOptions opt;
    opt.max_new_tokens = 1;
    opt.stop_at_eos = false;
    opt.return_prompt_logits = true;
    auto a = (*qr)->generate(prompt, opt), b = (*fr)->generate(prompt, opt);
    ASSERT_TRUE(a.ok() && b.ok());
    for (int p = 0; p < len; ++p) {
      const float* x = &a->prompt_logits[p * V];
      const float* y = &b->prompt_logits[p * V];
      double max_abs = 0, max_ref = 0;
      for (int64_t i = 0; i < V; ++i) {
        max_abs = std::max(max_abs, std::abs(double(x[i]) - y[i]));
        max_ref = std::max(max_ref, std::abs(double(y[i])));
      }
      worst = std::max(worst, max_abs / max_ref);
      argmax_equal += argmax(x, V) == argmax(y, V);
      ++positions;
    }
  }
  EXPECT_LT(worst, max_rel_error) << "logits of the quantized engine vs the dequantized one";
  EXPECT_GE(argmax_equal, positions * 95 / 100) << argmax_equal << "/" << positions << " argmax equal";
}

TEST(GgufImport, Q8_0EngineMatchesDequantizedWeights) { check_quantized_against_dequantized("mistral_llama_q8_0.gguf", 2e-2); }

TEST(GgufImport, Q4_1EngineMatchesDequantizedWeights) { check_quantized_against_dequantized("qwen3_q4_1.gguf", 2e-2); }

TEST(GgufImport, RefusesWhatItCannotRead) {
  test::TempDir tmp;
  GgufConvertOptions o{.gguf_path = tmp.sub("missing.gguf"), .output_dir = tmp.sub("ckpt")};
  EXPECT_FALSE(convert_gguf(o).ok());
  // A safetensors file is not a GGUF file.
  o.gguf_path = test::data_path("models/qwen2/model.safetensors");
  Status s = convert_gguf(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("GGUF"), std::string::npos) << s.to_string();
}

TEST(GgufImport, QuantizedEnginesForCudaAreRefusedAtBuild) {
  // Building a GGUF-quantized checkpoint for the GPU fails with what to do instead (no GPU needed).
  test::TempDir tmp;
  GgufConvertOptions o{.gguf_path = test::data_path("gguf/mistral_llama_q8_0.gguf"), .output_dir = tmp.sub("ckpt")};
  ASSERT_TRUE(convert_gguf(o).ok());
  BuildConfig bc = test::golden_build_config(0, "cuda");
  Status s = build_engine(tmp.sub("ckpt"), tmp.sub("engine"), bc, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.to_string();
  EXPECT_NE(s.message().find("--dtype float16"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace kiln
