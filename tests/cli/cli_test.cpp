// The kiln program as a user runs it: convert -> build -> run, flags, and error messages.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/cli_run.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::CliRun;
using test::kiln;

class CliTest : public ::testing::Test {
 protected:
  // convert + build the qwen3 fixture (bf16 weights, per-head q/k norm) once for the suite
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    CliRun c = kiln("convert --model_dir " + test::data_path("models/qwen3") + " --output_dir " + dir_->sub("ckpt") +
                 " --dtype float32");
    ASSERT_EQ(c.code, 0) << c.output;
    CliRun b = kiln("build --checkpoint_dir " + dir_->sub("ckpt") + " --output_dir " + dir_->sub("engine") +
                 " --max_batch_size 4 --max_beam_width 2 --max_input_len 128 --max_output_len 32 --gemm_plugin float32");
    ASSERT_EQ(b.code, 0) << b.output;
    ASSERT_NE(b.output.find("KV cache per token"), std::string::npos) << "build prints its plan:\n" << b.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static test::TempDir* dir_;
};
test::TempDir* CliTest::dir_ = nullptr;

TEST_F(CliTest, RunPrintsJsonWithLogProbsMatchingTransformers) {
  std::ifstream in(test::data_path("models/qwen3/golden.json"));
  auto golden = nlohmann::json::parse(in)["cases"][1];
  std::ofstream(dir_->sub("prompts.jsonl")) << golden["prompt"].dump() << "\n\n" << "[5, 6, 7]\n";
  CliRun r = kiln("run --engine_dir " + dir_->sub("engine") + " --input_file " + dir_->sub("prompts.jsonl") +
               " --max_output_len 24 --json --ignore_eos");
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  std::vector<nlohmann::json> outs;
  while (std::getline(lines, line)) outs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_EQ(outs[0]["output_ids"], golden["greedy_24"]);
  ASSERT_EQ(outs[0]["log_probs"].size(), 24u);
  for (int i = 0; i < 24; ++i)
    EXPECT_NEAR(outs[0]["log_probs"][i].get<double>(), golden["greedy_logprobs"][i].get<double>(), 1e-3);
  EXPECT_EQ(outs[1]["output_ids"].size(), 24u);
  EXPECT_EQ(outs[1]["finish_reason"], "length");
}

// A tensor- and pipeline-parallel engine (2 x 2 ranks as threads on the CPU) answers as Hugging Face does.
TEST_F(CliTest, RunsATensorAndPipelineParallelEngine) {
  std::ifstream in(test::data_path("models/qwen3/golden.json"));
  auto golden = nlohmann::json::parse(in)["cases"][1];
  CliRun c = kiln("convert --model_dir " + test::data_path("models/qwen3") + " --output_dir " + dir_->sub("ckpt22") +
                  " --dtype float32 --tp_size 2 --pp_size 2");
  ASSERT_EQ(c.code, 0) << c.output;
  CliRun b = kiln("build --checkpoint_dir " + dir_->sub("ckpt22") + " --output_dir " + dir_->sub("engine22") +
                  " --max_batch_size 4 --max_input_len 128 --max_output_len 32");
  ASSERT_EQ(b.code, 0) << b.output;
  for (int r = 0; r < 4; ++r)
    EXPECT_TRUE(std::ifstream(dir_->sub("engine22") + "/rank" + std::to_string(r) + ".engine").good()) << "rank " << r;
  std::string ids;
  for (const auto& t : golden["prompt"]) ids += (ids.empty() ? "" : ",") + std::to_string(t.get<int>());
  CliRun r = kiln("run --engine_dir " + dir_->sub("engine22") + " --input_ids " + ids +
                  " --max_output_len 24 --json --ignore_eos");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto out = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  EXPECT_EQ(out["output_ids"], golden["greedy_24"]);
  for (int i = 0; i < 24; ++i)
    EXPECT_NEAR(out["log_probs"][i].get<double>(), golden["greedy_logprobs"][i].get<double>(), 1e-3);
  CliRun bad = kiln("build --checkpoint_dir " + dir_->sub("ckpt22") + " --output_dir " + dir_->sub("engine_bad") +
                    " --max_input_len 128 --max_output_len 32 --tp_size 1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("converted for tp_size 2"), std::string::npos) << bad.output;
}

// Several prompts run concurrently through the executor; sampling flags mirror the tensor names and a
// seed makes a run reproducible.
TEST_F(CliTest, RunSamplesWithSeedsAndBeams) {
  const std::string e = "run --engine_dir " + dir_->sub("engine") + " --input_ids 1,2,3 --input_ids 7,8,9,10 --input_ids 4" +
                        " --max_output_len 12 --json --ignore_eos";
  auto lines = [](const std::string& out) {
    std::vector<nlohmann::json> v;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
    return v;
  };
  const std::string sampling = " --temperature 0.8 --top_k 40 --top_p 0.9 --repetition_penalty 1.2"
                               " --presence_penalty 0.1 --frequency_penalty 0.1";
  CliRun a = kiln(e + sampling + " --random_seed 7");
  ASSERT_EQ(a.code, 0) << a.output;
  CliRun b = kiln(e + sampling + " --random_seed 7 --enable_kv_cache_reuse --batch_scheduler_policy max_utilization");
  ASSERT_EQ(b.code, 0) << b.output;
  CliRun c = kiln(e + sampling + " --random_seed 8");
  ASSERT_EQ(c.code, 0) << c.output;
  auto ja = lines(a.output), jb = lines(b.output), jc = lines(c.output);
  ASSERT_EQ(ja.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ja[i]["output_ids"], jb[i]["output_ids"]) << "prompt " << i;
    EXPECT_EQ(ja[i]["output_ids"].size(), 12u);
  }
  EXPECT_NE(ja[0]["output_ids"], jc[0]["output_ids"]);

  CliRun beams = kiln(e + " --beam_width 2 --length_penalty 1.0");
  ASSERT_EQ(beams.code, 0) << beams.output;
  auto jbeams = lines(beams.output);
  ASSERT_EQ(jbeams.size(), 3u);
  EXPECT_EQ(jbeams[0]["beams"].size(), 2u);
  CliRun wide = kiln(e + " --beam_width 3");
  EXPECT_EQ(wide.code, 2) << wide.output;
  EXPECT_NE(wide.output.find("beam_width=3"), std::string::npos) << wide.output;
  CliRun policy = kiln(e + " --batch_scheduler_policy fastest");
  EXPECT_EQ(policy.code, 2);
  EXPECT_NE(policy.output.find("guaranteed_no_evict"), std::string::npos) << policy.output;
}

TEST_F(CliTest, RunStreamsTokens) {
  CliRun r = kiln("run --engine_dir " + dir_->sub("engine") + " --input_ids 1,2,3 --max_output_len 5 --streaming --ignore_eos");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(5 tokens, length)"), std::string::npos) << r.output;
}

TEST_F(CliTest, RunWithInputIdsPrintsText) {
  CliRun r = kiln("run --engine_dir " + dir_->sub("engine") + " --input_ids 1,2,3 --max_output_len 4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("Input [0]: 1,2,3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Output [0]: "), std::string::npos) << r.output;
}

TEST_F(CliTest, RunRefusesBadInput) {
  const std::string e = "run --engine_dir " + dir_->sub("engine");
  CliRun r = kiln(e + " --input_ids 1,x,3 --max_output_len 4");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("'x' is not a token id"), std::string::npos) << r.output;
  r = kiln(e + " --input_ids 1,2,99999 --max_output_len 4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("input_ids[2]=99999 is outside the vocabulary [0, 512)"), std::string::npos) << r.output;
  r = kiln(e + " --input_ids 1,2 --max_output_len 200");
  EXPECT_NE(r.output.find("exceeds max_seq_len=160"), std::string::npos) << r.output;
  std::ofstream(dir_->sub("bad.jsonl")) << "[1, 2]\n{\"ids\": [1]}\n";
  r = kiln(e + " --input_file " + dir_->sub("bad.jsonl") + " --max_output_len 4");
  EXPECT_NE(r.output.find("bad.jsonl:2: expected a JSON list"), std::string::npos) << r.output;
  r = kiln(e + " --max_output_len 4");
  EXPECT_NE(r.output.find("give --input_ids, --input_file or --input_text"), std::string::npos) << r.output;
}

TEST_F(CliTest, FlagsAreChecked) {
  CliRun r = kiln("build --checkpoint_dir x --output_dir y --max_batch_size 1 --max_input_len 8 --max_seqlen 9");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown flag --max_seqlen"), std::string::npos) << r.output;
  r = kiln("build --checkpoint_dir " + dir_->sub("ckpt") + " --output_dir " + dir_->sub("e2") + " --max_input_len 8");
  EXPECT_NE(r.output.find("give --max_seq_len or --max_output_len"), std::string::npos) << r.output;
  r = kiln("convert --model_dir /nonexistent --output_dir " + dir_->sub("c2") + " --dtype float64");
  EXPECT_NE(r.output.find("--dtype 'float64'"), std::string::npos) << r.output;
  r = kiln("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
  r = kiln("run --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("--max_output_len"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(CliTokenizeTest, EncodesDecodesAndRendersTemplates) {
  test::TempDir d;
  const std::string tok = test::data_path("tokenizers/llama3");
  std::ofstream(d.sub("texts.jsonl")) << "\"안녕하세요 world\"\n{\"text\": \"Hello!\"}\n";
  CliRun r = kiln("tokenize --tokenizer_dir " + tok + " --input " + d.sub("texts.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  std::ofstream(d.sub("ids.jsonl")) << r.output;
  r = kiln("tokenize --decode --tokenizer_dir " + tok + " --input " + d.sub("ids.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "{\"text\":\"안녕하세요 world\"}\n{\"text\":\"Hello!\"}\n");
  std::ofstream(d.sub("bad.jsonl")) << "\"ok\"\n\"\\ud800\"\n";
  r = kiln("tokenize --tokenizer_dir " + tok + " --input " + d.sub("bad.jsonl"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("bad.jsonl:2"), std::string::npos) << r.output;

  std::ofstream(d.sub("messages.json")) << R"([{"role": "user", "content": "Hi"}])";
  r = kiln("chat-template --tokenizer_dir " + test::data_path("tokenizers/phi3") + " --messages " + d.sub("messages.json") +
           " --add_generation_prompt");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "<|user|>\nHi<|end|>\n<|assistant|>\n");
}

TEST(CliTokenizeTest, RunTakesText) {
  test::TempDir d;
  CliRun c = kiln("convert --model_dir " + test::data_path("models/phi3") + " --output_dir " + d.sub("ckpt") + " --dtype float32");
  ASSERT_EQ(c.code, 0) << c.output;
  c = kiln("build --checkpoint_dir " + d.sub("ckpt") + " --output_dir " + d.sub("engine") +
           " --max_batch_size 1 --max_input_len 64 --max_output_len 8");
  ASSERT_EQ(c.code, 0) << c.output;
  CliRun r = kiln("run --engine_dir " + d.sub("engine") + " --tokenizer_dir " + test::data_path("tokenizers/phi3") +
                  " --input_text 'What is the color of the sky?' --max_output_len 4 --json");
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  // <s> then the Phi-3 tokenizer's ids for the text
  EXPECT_EQ(j["input_ids"][0], 1);
  EXPECT_TRUE(j.contains("output_text"));
  r = kiln("run --engine_dir " + d.sub("engine") + " --input_text hi --max_output_len 4");
  EXPECT_NE(r.output.find("--input_text needs --tokenizer_dir"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln
