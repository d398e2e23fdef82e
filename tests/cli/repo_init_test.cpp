// kiln repo init as a user runs it: it checks the engine and tokenizer first, never overwrites, and writes a
// repository whose five models (tensorrt_llm, preprocessing, postprocessing, ensemble, tensorrt_llm_bls) all
// load and answer (the loading part needs the server).
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "model/checkpoint.h"
#include "model/engine.h"
#include "cli/cli_run.h"
#include "test_util.h"

#ifdef KILN_HAVE_SERVER
#include "model_config.pb.h"
#include "server/server_core.h"
#endif

namespace kiln {
namespace {

namespace fs = std::filesystem;

using test::CliRun;
using test::kiln;

std::string build(const test::TempDir& dir, const std::string& model, int64_t max_batch_size) {
  ConvertOptions co{.model_dir = test::data_path("models/" + model),
                    .output_dir = dir.sub(model + "_ckpt"),
                    .dtype = DType::kF32};
  Status s = convert_hf_checkpoint(co);
  KILN_CHECK(s.ok(), s.to_string());
  BuildConfig bc;
  bc.max_batch_size = max_batch_size;
  bc.max_input_len = 32;
  bc.max_seq_len = 64;
  bc.tokens_per_block = 8;
  s = build_engine(dir.sub(model + "_ckpt"), dir.sub(model + "_engine"), bc, nullptr);
  KILN_CHECK(s.ok(), s.to_string());
  return dir.sub(model + "_engine");
}

class RepoInitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    engine_ = new std::string(build(*dir_, "phi3", 4));
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete dir_;
  }
  static std::string init_args(const std::string& out, const std::string& extra = "") {
    return "repo init --engine_dir " + *engine_ + " --tokenizer_dir " + test::data_path("tokenizers/phi3") +
           " --output " + out + " --max_tokens_in_paged_kv_cache 2048 " + extra;
  }
  static test::TempDir* dir_;
  static std::string* engine_;
};
test::TempDir* RepoInitTest::dir_ = nullptr;
std::string* RepoInitTest::engine_ = nullptr;

TEST_F(RepoInitTest, WritesEveryModelWithItsVersionFolder) {
  const std::string repo = dir_->sub("repo_plain");
  CliRun r = kiln(init_args(repo));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("kiln serve --model_repo"), std::string::npos) << r.output;
  for (const char* m : {"tensorrt_llm", "preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls"}) {
    EXPECT_TRUE(fs::is_regular_file(fs::path(repo) / m / "config.pbtxt")) << m;
    EXPECT_TRUE(fs::is_directory(fs::path(repo) / m / "1")) << m;
  }
  // The engine is linked (not copied) into tensorrt_llm/1.
  EXPECT_TRUE(fs::is_symlink(fs::path(repo) / "tensorrt_llm/1/rank0.engine"));
  EXPECT_TRUE(
      fs::equivalent(fs::path(repo) / "tensorrt_llm/1/config.json", fs::path(*engine_) / "config.json"));
  std::ifstream f(fs::path(repo) / "tensorrt_llm/config.pbtxt");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string config = ss.str();
  EXPECT_NE(config.find("key: \"exclude_input_in_output\"\n  value: { string_value: \"true\" }"),
            std::string::npos);
  EXPECT_NE(config.find("decoupled: false"), std::string::npos);
  EXPECT_NE(config.find("name: \"lora_config\""), std::string::npos) << "the whole input contract";
  EXPECT_NE(config.find("batch_scheduler_policy"), std::string::npos);
}

TEST_F(RepoInitTest, CopiesTheEngineWhenAsked) {
  const std::string repo = dir_->sub("repo_copy");
  CliRun r = kiln(init_args(repo, "--copy_engine --max_batch_size 2"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::is_symlink(fs::path(repo) / "tensorrt_llm/1/rank0.engine"));
  EXPECT_EQ(fs::file_size(fs::path(repo) / "tensorrt_llm/1/rank0.engine"),
            fs::file_size(*engine_ + "/rank0.engine"));
}

TEST_F(RepoInitTest, NeverOverwritesAndChecksFirst) {
  const std::string repo = dir_->sub("repo_taken");
  fs::create_directories(repo);
  std::ofstream(repo + "/keep.txt") << "mine";
  CliRun r = kiln(init_args(repo));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("not empty"), std::string::npos) << r.output;
  EXPECT_EQ(std::distance(fs::directory_iterator(repo), fs::directory_iterator()), 1);

  const std::string fresh = dir_->sub("repo_never");
  r = kiln("repo init --engine_dir " + dir_->sub("no_engine") + " --tokenizer_dir " +
           test::data_path("tokenizers/phi3") + " --output " + fresh);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--engine_dir"), std::string::npos) << r.output;
  r = kiln("repo init --engine_dir " + *engine_ + " --tokenizer_dir " + dir_->sub("no_tokenizer") +
           " --output " + fresh);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--tokenizer_dir"), std::string::npos) << r.output;
  r = kiln(init_args(fresh, "--max_batch_size 9"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("max_batch_size"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(fresh)) << "nothing is written when a check fails";
  // Without a tokenizer: the token-level model only.
  const std::string tokens_only = dir_->sub("repo_tokens_only");
  r = kiln("repo init --engine_dir " + *engine_ + " --output " + tokens_only);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("token-level tensorrt_llm model only"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_regular_file(fs::path(tokens_only) / "tensorrt_llm/config.pbtxt"));
  EXPECT_FALSE(fs::exists(fs::path(tokens_only) / "preprocessing"));
  EXPECT_FALSE(fs::exists(fs::path(tokens_only) / "ensemble"));
  r = kiln("repo frobnicate");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("unknown subcommand"), std::string::npos) << r.output;
}

TEST_F(RepoInitTest, RefusesATokenizerOfAnotherModel) {
  const std::string llama = build(*dir_, "llama", 4);  // a 512-token vocabulary
  CliRun r = kiln("repo init --engine_dir " + llama + " --tokenizer_dir " +
                  test::data_path("tokenizers/phi3") + " --output " + dir_->sub("repo_mismatch"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("do not belong together"), std::string::npos) << r.output;
}

#ifdef KILN_HAVE_SERVER
// Runs one call to its final reply.
std::vector<server::InferReply> run_call(server::ServerCore& core, server::InferCall c) {
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<server::InferReply> replies;
    bool done = false;
  };
  auto w = std::make_shared<Wait>();
  auto started = core.infer(std::move(c), [w](server::InferReply r) {
    std::lock_guard<std::mutex> lock(w->mu);
    w->done |= r.final;
    w->replies.push_back(std::move(r));
    w->cv.notify_all();
  });
  KILN_CHECK(started.ok(), started.status().to_string());
  std::unique_lock<std::mutex> lock(w->mu);
  KILN_CHECK(w->cv.wait_for(lock, std::chrono::seconds(120), [&] { return w->done; }), "no final reply");
  return std::move(w->replies);
}

TEST_F(RepoInitTest, TheRepositoryLoadsAndAnswers) {
  const std::string repo = dir_->sub("repo_decoupled");
  CliRun r = kiln(init_args(repo, "--decoupled"));
  ASSERT_EQ(r.code, 0) << r.output;
  server::ServerOptions o;
  o.model_repository = repo;
  auto core = server::ServerCore::create(o);
  ASSERT_TRUE(core.ok()) << core.status().to_string();
  auto index = (*core)->repository_index(false);
  ASSERT_EQ(index.size(), 5u);
  for (const server::ModelStatus& m : index) EXPECT_EQ(m.state, "READY") << m.name << ": " << m.reason;
  EXPECT_TRUE((*core)->ready());

  // The ensemble, through the generate path's shapes: text_input [1, 1], max_tokens [1, 1].
  server::InferCall c;
  c.model = "ensemble";
  c.stream = false;  // a plain call, although the tensorrt_llm model behind it is decoupled
  c.inputs = {
      server::InferTensor::make_strings("text_input", {1, 1}, {"Hello there"}),
      server::InferTensor::make("max_tokens", server::TensorType::kInt32, {1, 1}, std::vector<int32_t>{8})};
  auto replies = run_call(**core, c);
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_TRUE(replies[0].error.ok()) << replies[0].error.to_string();
  ASSERT_EQ(replies[0].outputs.size(), 1u);
  const std::string whole = (*replies[0].outputs[0].strings())[0];
  EXPECT_FALSE(whole.empty());
  EXPECT_EQ(whole.find("Hello there"), std::string::npos) << "the prompt is not echoed";

  // The BLS model streams the same text.
  c.model = "tensorrt_llm_bls";
  c.stream = true;
  c.inputs.push_back(
      server::InferTensor::make("stream", server::TensorType::kBool, {1, 1}, std::vector<uint8_t>{1}));
  std::string streamed;
  for (const server::InferReply& rep : run_call(**core, c)) {
    ASSERT_TRUE(rep.error.ok()) << rep.error.to_string();
    for (const server::InferTensor& t : rep.outputs)
      if (t.name == "text_output") streamed += (*t.strings())[0];
  }
  EXPECT_EQ(streamed, whole);

  // tensorrt_llm itself answers with the generated ids only (exclude_input_in_output true).
  server::InferCall ids;
  ids.model = "tensorrt_llm";
  ids.stream = true;
  ids.inputs = {
      server::InferTensor::make("input_ids", server::TensorType::kInt32, {1, 3},
                                std::vector<int32_t>{1, 15043, 727}),
      server::InferTensor::make("input_lengths", server::TensorType::kInt32, {1, 1}, std::vector<int32_t>{3}),
      server::InferTensor::make("request_output_len", server::TensorType::kInt32, {1, 1},
                                std::vector<int32_t>{5})};
  replies = run_call(**core, ids);
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_TRUE(replies[0].error.ok()) << replies[0].error.to_string();
  for (const server::InferTensor& t : replies[0].outputs) {
    if (t.name == "sequence_length") {
      EXPECT_LE(t.values<int32_t>()[0], 5);
    }
  }
}
#endif

}  // namespace
}  // namespace kiln
