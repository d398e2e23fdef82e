// config.pbtxt loading: the seed tutorial's tensorrt_llm config as the user wrote it, and strict errors
// (line and column) for what is not a valid ModelConfig.
#include "server/model_config_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace kiln::server {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The text between the ``` fences that follow the "#### 4.4" heading (the seed's tensorrt_llm config.pbtxt).
std::string extract_section_4_4(const std::string& tutorial) {
  std::istringstream in(tutorial);
  std::string line, body;
  enum { kSeeking, kAfterHeading, kInFence, kDone } state = kSeeking;
  while (state != kDone && std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    switch (state) {
      case kSeeking:
        if (line.rfind("#### 4.4", 0) == 0) state = kAfterHeading;
        break;
      case kAfterHeading:
        if (line.rfind("```", 0) == 0) state = kInFence;
        break;
      case kInFence:
        if (line.rfind("```", 0) == 0) state = kDone;
        else body += line + "\n";
        break;
      case kDone: break;
    }
  }
  return state == kDone ? body : "";
}

std::vector<int64_t> dims(const google::protobuf::RepeatedField<int64_t>& d) { return {d.begin(), d.end()}; }

const inference::ModelInput* find_input(const inference::ModelConfig& c, const std::string& name) {
  for (const auto& in : c.input())
    if (in.name() == name) return &in;
  return nullptr;
}

// Everything section 4.4's config says, checked field by field.
void expect_seed_config(const inference::ModelConfig& c) {
  EXPECT_EQ(c.name(), "tensorrt_llm");
  EXPECT_EQ(c.backend(), "tensorrtllm");
  EXPECT_EQ(c.platform(), "");
  EXPECT_EQ(c.max_batch_size(), 4);
  ASSERT_TRUE(c.has_model_transaction_policy());
  EXPECT_FALSE(c.model_transaction_policy().decoupled());
  ASSERT_TRUE(c.has_dynamic_batching());
  EXPECT_EQ(c.scheduling_choice_case(), inference::ModelConfig::kDynamicBatching);
  ASSERT_EQ(c.dynamic_batching().preferred_batch_size_size(), 1);
  EXPECT_EQ(c.dynamic_batching().preferred_batch_size(0), 1);
  EXPECT_EQ(c.dynamic_batching().max_queue_delay_microseconds(), 1000u);

  // The inputs, in the file's order.
  const std::vector<std::string> input_names = {
      "input_ids", "input_lengths", "request_output_len", "draft_input_ids", "draft_logits",
      "draft_acceptance_threshold", "end_id", "pad_id", "stop_words_list", "bad_words_list", "embedding_bias",
      "beam_width", "temperature", "runtime_top_k", "runtime_top_p", "runtime_top_p_min", "runtime_top_p_decay",
      "runtime_top_p_reset_ids", "len_penalty", "early_stopping", "repetition_penalty", "min_length",
      "beam_search_diversity_rate", "presence_penalty", "frequency_penalty", "random_seed", "return_log_probs",
      "return_context_logits", "return_generation_logits", "stop", "streaming", "prompt_embedding_table",
      "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config"};
  ASSERT_EQ(c.input_size(), static_cast<int>(input_names.size()));
  for (size_t i = 0; i < input_names.size(); ++i) EXPECT_EQ(c.input(static_cast<int>(i)).name(), input_names[i]);
  // The three required inputs come first, none optional.
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(c.input(i).optional()) << c.input(i).name();
  for (int i = 3; i < c.input_size(); ++i) EXPECT_TRUE(c.input(i).optional()) << c.input(i).name();

  const auto* ids = find_input(c, "input_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->data_type(), inference::TYPE_INT32);
  EXPECT_EQ(dims(ids->dims()), (std::vector<int64_t>{-1, 1}));
  EXPECT_FALSE(ids->allow_ragged_batch());
  EXPECT_FALSE(ids->has_reshape());
  EXPECT_EQ(ids->format(), inference::ModelInput::FORMAT_NONE);
  EXPECT_FALSE(ids->is_shape_tensor());

  const auto* lengths = find_input(c, "input_lengths");
  ASSERT_NE(lengths, nullptr);
  EXPECT_EQ(lengths->data_type(), inference::TYPE_INT32);
  EXPECT_EQ(dims(lengths->dims()), (std::vector<int64_t>{1}));
  ASSERT_TRUE(lengths->has_reshape());  // `reshape: { shape: [ ] }`: present, to a scalar
  EXPECT_EQ(lengths->reshape().shape_size(), 0);

  const auto* out_len = find_input(c, "request_output_len");
  ASSERT_NE(out_len, nullptr);
  EXPECT_EQ(out_len->data_type(), inference::TYPE_INT32);
  EXPECT_EQ(dims(out_len->dims()), (std::vector<int64_t>{1}));
  EXPECT_FALSE(out_len->has_reshape());

  const auto* stop_words = find_input(c, "stop_words_list");
  ASSERT_NE(stop_words, nullptr);
  EXPECT_EQ(dims(stop_words->dims()), (std::vector<int64_t>{2, -1}));
  EXPECT_TRUE(stop_words->allow_ragged_batch());

  struct Typed { const char* name; inference::DataType type; std::vector<int64_t> dims; bool reshaped; };
  const Typed typed[] = {
      {"draft_logits", inference::TYPE_FP32, {-1, -1}, false},
      {"embedding_bias", inference::TYPE_FP32, {-1}, false},
      {"temperature", inference::TYPE_FP32, {1}, true},
      {"runtime_top_k", inference::TYPE_INT32, {1}, true},
      {"early_stopping", inference::TYPE_BOOL, {1}, true},
      {"random_seed", inference::TYPE_UINT64, {1}, true},
      {"stop", inference::TYPE_BOOL, {1}, false},
      {"streaming", inference::TYPE_BOOL, {1}, false},
      {"prompt_embedding_table", inference::TYPE_FP16, {-1, -1}, false},
      {"lora_task_id", inference::TYPE_UINT64, {1}, true},  // the tab-indented entries
      {"lora_weights", inference::TYPE_FP16, {-1, -1}, false},
      {"lora_config", inference::TYPE_INT32, {-1, 3}, false},
  };
  for (const Typed& t : typed) {
    const auto* in = find_input(c, t.name);
    ASSERT_NE(in, nullptr) << t.name;
    EXPECT_EQ(in->data_type(), t.type) << t.name;
    EXPECT_EQ(dims(in->dims()), t.dims) << t.name;
    EXPECT_EQ(in->has_reshape(), t.reshaped) << t.name;
  }

  // Outputs.
  struct Out { const char* name; inference::DataType type; std::vector<int64_t> dims; };
  const Out outs[] = {
      {"output_ids", inference::TYPE_INT32, {-1, -1}},      {"sequence_length", inference::TYPE_INT32, {-1}},
      {"cum_log_probs", inference::TYPE_FP32, {-1}},        {"output_log_probs", inference::TYPE_FP32, {-1, -1}},
      {"context_logits", inference::TYPE_FP32, {-1, -1}},   {"generation_logits", inference::TYPE_FP32, {-1, -1, -1}},
  };
  ASSERT_EQ(c.output_size(), 6);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(c.output(i).name(), outs[i].name);
    EXPECT_EQ(c.output(i).data_type(), outs[i].type) << outs[i].name;
    EXPECT_EQ(dims(c.output(i).dims()), outs[i].dims) << outs[i].name;
  }

  ASSERT_EQ(c.instance_group_size(), 1);
  EXPECT_EQ(c.instance_group(0).count(), 1);
  EXPECT_EQ(c.instance_group(0).kind(), inference::ModelInstanceGroup::KIND_CPU);

  // Parameters: exactly the four the seed sets. It does not set batch_scheduler_policy (the backend's
  // default applies) nor exclude_input_in_output (so output_ids echo the prompt).
  EXPECT_EQ(c.parameters_size(), 4);
  EXPECT_EQ(model_parameter(c, "max_beam_width"), "1");
  EXPECT_EQ(model_parameter(c, "FORCE_CPU_ONLY_INPUT_TENSORS"), "no");
  EXPECT_EQ(model_parameter(c, "gpt_model_type"), "V1");
  EXPECT_EQ(model_parameter(c, "gpt_model_path"), "/tensorrtllm_backend/triton_model_repo/tensorrt_llm/1");
  EXPECT_EQ(model_parameter(c, "batch_scheduler_policy"), std::nullopt);
  EXPECT_EQ(model_parameter(c, "exclude_input_in_output"), std::nullopt);
}

TEST(ModelConfigLoader, SeedTensorrtLlmConfigLoadsAsWritten) {
  auto config = load_model_config(test::data_path("server/seed_tensorrt_llm_config.pbtxt"));
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  expect_seed_config(*config);
}

TEST(ModelConfigLoader, SeedConfigExtractedFromTheTutorialAtTestTime) {
  const std::string seed =
      std::string(KILN_TEST_DATA_DIR) + "/../../../shared/seed/000_0e4f6b03ed3d4422.txt";
  if (!std::filesystem::exists(seed)) GTEST_SKIP() << "../shared/seed is not beside this checkout";
  const std::string body = extract_section_4_4(read_file(seed));
  ASSERT_FALSE(body.empty()) << "no fenced block after \"#### 4.4\" in the seed tutorial";
  // The committed copy is that block, verbatim.
  EXPECT_EQ(body, read_file(test::data_path("server/seed_tensorrt_llm_config.pbtxt")));
  test::TempDir dir;
  std::filesystem::create_directories(dir.sub("tensorrt_llm"));
  write_file(dir.sub("tensorrt_llm/config.pbtxt"), body);
  auto config = load_model_config(dir.sub("tensorrt_llm/config.pbtxt"));
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  expect_seed_config(*config);
}

TEST(ModelConfigLoader, UnknownFieldNamesLineColumnAndMessage) {
  test::TempDir dir;
  write_file(dir.sub("config.pbtxt"),
             "name: \"m\"\n"
             "backend: \"tensorrtllm\"\n"
             "input [\n"
             "  {\n"
             "    name: \"input_ids\"\n"
             "    data_type: TYPE_INT32\n"
             "    dims: [ -1 ]\n"
             "    foo: 1\n"
             "  }\n"
             "]\n");
  auto config = load_model_config(dir.sub("config.pbtxt"));
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(), "config.pbtxt:8:5: unknown field \"foo\" in inference.ModelInput");
  // Nothing of the directory it lives in.
  EXPECT_EQ(config.status().message().find(dir.path()), std::string::npos);
}

TEST(ModelConfigLoader, UnknownTopLevelFieldAndDisplayName) {
  auto config = parse_model_config("name: \"m\"\n\nmax_batch_sise: 4\n", "tensorrt_llm/config.pbtxt");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "tensorrt_llm/config.pbtxt:3:1: unknown field \"max_batch_sise\" in inference.ModelConfig");
}

TEST(ModelConfigLoader, ColumnsCountCharactersAcrossTabs) {
  // The seed's LoRA entries are tab-indented; a column is a character count (a tab is one).
  auto config = parse_model_config("input [\n  {\n\tname: \"x\"\n\tdata_typ: TYPE_INT32\n  }\n]\n", "c");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(), "c:4:2: unknown field \"data_typ\" in inference.ModelInput");
  auto value = parse_model_config("input [ {\n\t\tdims: [ x ] } ]\n", "c");
  ASSERT_FALSE(value.ok());
  EXPECT_EQ(value.status().message().rfind("c:2:11: ", 0), 0u) << value.status().message();
}

TEST(ModelConfigLoader, SyntaxErrorNamesLineAndColumn) {
  // A missing closing bracket / a stray token.
  auto config = parse_model_config("name: \"m\"\nmax_batch_size: 4\ninput [ { name: \"x\" dims: [ 1, ] } ]\n",
                                   "config.pbtxt");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message().rfind("config.pbtxt:3:", 0), 0u) << config.status().message();

  auto unterminated = parse_model_config("name: \"m\n", "config.pbtxt");
  ASSERT_FALSE(unterminated.ok());
  EXPECT_EQ(unterminated.status().message().rfind("config.pbtxt:1:", 0), 0u) << unterminated.status().message();

  auto unclosed = parse_model_config("model_transaction_policy {\n  decoupled: true\n", "config.pbtxt");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_EQ(unclosed.status().message(), "config.pbtxt:3:1: Expected identifier, got: end of file");

  // Column: the 1-based position of the offending token.
  auto bad_value = parse_model_config("max_batch_size: four\n", "config.pbtxt");
  ASSERT_FALSE(bad_value.ok());
  EXPECT_EQ(bad_value.status().message().rfind("config.pbtxt:1:17: ", 0), 0u) << bad_value.status().message();
}

TEST(ModelConfigLoader, WrongEnumValueIsAnError) {
  auto config = parse_model_config("input [ { name: \"x\" data_type: TYPE_INT33 dims: [ 1 ] } ]\n", "config.pbtxt");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("TYPE_INT33"), std::string::npos) << config.status().message();
  EXPECT_EQ(config.status().message().rfind("config.pbtxt:1:", 0), 0u) << config.status().message();

  auto kind = parse_model_config("instance_group [ { count: 1 kind: KIND_TPU } ]\n", "config.pbtxt");
  ASSERT_FALSE(kind.ok());
  EXPECT_NE(kind.status().message().find("KIND_TPU"), std::string::npos) << kind.status().message();
}

TEST(ModelConfigLoader, OtherMistakesAreErrors) {
  // A singular field given twice.
  EXPECT_FALSE(parse_model_config("max_batch_size: 4\nmax_batch_size: 8\n", "c").ok());
  // Out of range for int32.
  EXPECT_FALSE(parse_model_config("max_batch_size: 4294967296\n", "c").ok());
  // Two choices of the scheduling oneof.
  EXPECT_FALSE(parse_model_config("dynamic_batching {}\nsequence_batching {}\n", "c").ok());
  // A parameter value must be a ModelParameter, not a bare string.
  EXPECT_FALSE(parse_model_config("parameters { key: \"a\" value: \"b\" }\n", "c").ok());
}

TEST(ModelConfigLoader, MissingFileIsNotFoundWithoutItsPath) {
  test::TempDir dir;
  auto config = load_model_config(dir.sub("config.pbtxt"));
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(config.status().message(), "config.pbtxt: not found");
  auto named = load_model_config(dir.sub("config.pbtxt"), "ensemble/config.pbtxt");
  EXPECT_EQ(named.status().message(), "ensemble/config.pbtxt: not found");
  auto is_dir = load_model_config(dir.path());
  EXPECT_EQ(is_dir.status().code(), StatusCode::kInvalidArgument);
}

TEST(ModelConfigLoader, EnsembleAndOtherSectionsParse) {
  // What a Triton ensemble / preprocessing config carries beyond the tensorrt_llm one.
  auto config = parse_model_config(R"pb(
    name: "ensemble"
    platform: "ensemble"
    max_batch_size: 64
    version_policy: { latest: { num_versions: 1 } }
    input [ { name: "text_input" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]
    ensemble_scheduling {
      step [
        {
          model_name: "preprocessing"
          model_version: -1
          input_map { key: "QUERY" value: "text_input" }
          output_map { key: "INPUT_ID" value: "_INPUT_ID" }
        },
        {
          model_name: "tensorrt_llm"
          model_version: -1
          input_map { key: "input_ids" value: "_INPUT_ID" }
          output_map { key: "output_ids" value: "_TOKENS_BATCH" }
        }
      ]
    }
    parameters { key: "tokenizer_dir" value { string_value: "/models/tok" } }
    response_cache { enable: false }
    model_warmup [ { name: "w" batch_size: 1 inputs { key: "text_input" value { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } } ]
    optimization { input_pinned_memory { enable: true } }
    metric_tags { key: "team" value: "llm" }
    default_model_filename: "model.py"
    cc_model_filenames { key: "8.0" value: "model.plan" }
    batch_input [ { kind: BATCH_ITEM_SHAPE target_name: "shape" data_type: TYPE_INT32 source_input: "text_input" } ]
    batch_output [ { target_name: "text_output" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "text_input" } ]
    model_repository_agents { agents [ { name: "checksum" parameters { key: "a" value: "b" } } ] }
    model_transaction_policy { decoupled: True }
    instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]
  )pb", "ensemble/config.pbtxt");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->platform(), "ensemble");
  ASSERT_TRUE(config->has_ensemble_scheduling());
  ASSERT_EQ(config->ensemble_scheduling().step_size(), 2);
  const auto& step = config->ensemble_scheduling().step(0);
  EXPECT_EQ(step.model_name(), "preprocessing");
  EXPECT_EQ(step.model_version(), -1);
  EXPECT_EQ(step.input_map().at("QUERY"), "text_input");
  EXPECT_EQ(step.output_map().at("INPUT_ID"), "_INPUT_ID");
  EXPECT_EQ(config->input(0).data_type(), inference::TYPE_STRING);
  EXPECT_EQ(config->version_policy().latest().num_versions(), 1u);
  EXPECT_TRUE(config->model_transaction_policy().decoupled());
  EXPECT_EQ(config->cc_model_filenames().at("8.0"), "model.plan");
  EXPECT_EQ(config->instance_group(0).gpus_size(), 2);
  EXPECT_EQ(model_parameter(*config, "tokenizer_dir"), "/models/tok");
}

TEST(ModelConfigLoader, ParametersAndUnusedOnes) {
  auto config = parse_model_config(R"pb(
    parameters { key: "gpt_model_path" value { string_value: "1" } }
    parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value { string_value: "no" } }
    parameters { key: "max_beam_width" value { string_value: "1" } }
    parameters { key: "empty" value { } }
  )pb", "c");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(model_parameter(*config, "gpt_model_path"), "1");
  EXPECT_EQ(model_parameter(*config, "empty"), "");
  EXPECT_EQ(model_parameter(*config, "absent"), std::nullopt);
  EXPECT_EQ(unused_parameters(*config, {"gpt_model_path", "max_beam_width", "not_set"}),
            (std::vector<std::string>{"FORCE_CPU_ONLY_INPUT_TENSORS", "empty"}));
  EXPECT_TRUE(unused_parameters(*config, {"gpt_model_path", "max_beam_width", "FORCE_CPU_ONLY_INPUT_TENSORS", "empty"})
                  .empty());
}

TEST(ModelName, SafeNamesOnly) {
  for (const char* good : {"tensorrt_llm", "ensemble", "model-1.v2", "preprocessing", "tensorrt_llm_bls", "A", "x.."})
    EXPECT_TRUE(check_model_name(good).ok()) << good;
  const std::string longest(128, 'a');
  EXPECT_TRUE(check_model_name(longest).ok());

  for (const std::string& bad : {std::string("../x"), std::string("a/b"), std::string(""), std::string(129, 'a'),
                                std::string("."), std::string(".."), std::string(".hidden"), std::string("a b"),
                                std::string("a\\b"), std::string("a%2fb"), std::string("caf\xc3\xa9"),
                                std::string("a\0b", 3), std::string("a\nb")}) {
    Status s = check_model_name(bad);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    // The message never echoes a raw control byte.
    EXPECT_EQ(s.message().find('\n'), std::string::npos);
    EXPECT_EQ(s.message().find('\0'), std::string::npos);
  }
  EXPECT_NE(check_model_name("a/b").message().find("\"a/b\""), std::string::npos);
}

}  // namespace
}  // namespace kiln::server
