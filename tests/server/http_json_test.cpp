// The JSON side of the HTTP frontend without a socket: request parsing with its limits, JSON and binary
// tensors, Triton's generate mapping, and the documents tritonclient.http reads.
#include "server/http_json.h"

#include <gtest/gtest.h>

#include "model_config.pb.h"
#include "server/model_config_loader.h"
#include "test_util.h"

namespace kiln::server {
namespace {

std::string deep_array(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(HttpJson, ParseRefusesDeepNestingWithoutRecursing) {
  EXPECT_TRUE(parse_request_json(deep_array(64), 64).ok());
  auto r = parse_request_json(deep_array(65), 64);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("deeper than 64"), std::string::npos);
  // 10^5 levels: refused at level 64, long before any stack could run out.
  r = parse_request_json(deep_array(100000), 64);
  ASSERT_FALSE(r.ok());
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100000, '}');
  EXPECT_FALSE(parse_request_json(objects, 64).ok());
}

TEST(HttpJson, ParseRefusesMalformedAndDuplicateKeys) {
  auto r = parse_request_json("{\"inputs\": [1, 2", 64);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("malformed JSON"), std::string::npos);
  r = parse_request_json("{\"id\": \"a\", \"id\": \"b\"}", 64);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'id' twice"), std::string::npos);
  EXPECT_FALSE(parse_request_json("{\"s\": \"\xff\xfe\"}", 64).ok());  // invalid UTF-8 in a string
}

TEST(HttpJson, InferRequestWithNestedAndFlatData) {
  const std::string body = R"({"id": "r1",
    "inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 3, 1], "data": [[[5], [6], [7]]]},
               {"name": "temperature", "datatype": "FP32", "shape": [1, 1], "data": [0.5]},
               {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["ab", ""]},
               {"name": "flag", "datatype": "BOOL", "shape": [1], "data": [true]}],
    "outputs": [{"name": "output_ids", "parameters": {"binary_data": true}}, {"name": "sequence_length"}],
    "parameters": {"binary_data_output": false, "priority": 0}})";
  auto r = parse_infer_request(body, std::nullopt, 64);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->call.id, "r1");
  ASSERT_EQ(r->call.inputs.size(), 4u);
  EXPECT_EQ(r->call.inputs[0].values<int32_t>(), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(r->call.inputs[0].shape, (std::vector<int64_t>{1, 3, 1}));
  EXPECT_EQ(r->call.inputs[1].values<float>(), std::vector<float>{0.5f});
  EXPECT_EQ(*r->call.inputs[2].strings(), (std::vector<std::string>{"ab", ""}));
  EXPECT_EQ(r->call.inputs[3].data, std::string(1, '\1'));
  EXPECT_EQ(r->call.requested_outputs, (std::set<std::string>{"output_ids", "sequence_length"}));
  EXPECT_TRUE(r->binary_output.at("output_ids"));
  EXPECT_FALSE(r->binary_output.count("sequence_length"));
}

TEST(HttpJson, InferRequestErrorsNameWhatIsWrong) {
  auto error = [](const std::string& body) {
    auto r = parse_infer_request(body, std::nullopt, 64);
    return r.ok() ? std::string() : r.status().message();
  };
  const std::string ids = R"({"name": "input_ids", "datatype": "INT32", "shape": [3], "data": )";
  EXPECT_NE(error("{\"inputs\": [" + ids + "[1, 2]}]}").find("holds 2 elements; shape [3] needs 3"),
            std::string::npos);
  EXPECT_NE(error("{\"inputs\": [" + ids + "[1, 2, 3, 4]}]}").find("more than 3"), std::string::npos);
  EXPECT_NE(error("{\"inputs\": [" + ids + "[1, 2, 1e10]}]}").find("INT32 takes integers"),
            std::string::npos);
  EXPECT_NE(error("{\"inputs\": [" + ids + "[1, 2, 3.5]}]}").find("integers"), std::string::npos);
  EXPECT_NE(error("{\"inputs\": [" + ids + "[1, 2, \"x\"]}]}").find("integers"), std::string::npos);
  EXPECT_NE(
      error(R"({"inputs": [{"name": "a", "datatype": "INT33", "shape": [1], "data": [1]}]})").find("INT33"),
      std::string::npos);
  EXPECT_NE(error(R"({"inputs": [{"name": "a", "datatype": "INT32", "shape": [-1], "data": [1]}]})")
                .find("non-negative"),
            std::string::npos);
  EXPECT_NE(
      error(
          R"({"inputs": [{"name": "a", "datatype": "INT32", "shape": [4294967296, 4294967296, 4], "data": []}]})")
          .find("overflows"),
      std::string::npos);
  EXPECT_NE(error(R"({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]},
                                 {"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}]})")
                .find("given twice"),
            std::string::npos);
  EXPECT_NE(error(R"({"inputs": [], "extra": 1})").find("unknown field 'extra'"), std::string::npos);
  EXPECT_NE(error(R"({"outputs": []})").find("no 'inputs'"), std::string::npos);
  EXPECT_NE(error(R"({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1e300]}]})")
                .find("range"),
            std::string::npos);
  EXPECT_NE(error(R"({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1],
                                  "parameters": {"shared_memory_region": "r"}}]})")
                .find("shared memory"),
            std::string::npos);
  EXPECT_NE(error(R"({"inputs": [], "outputs": [{"name": "o", "parameters": {"classification": 3}}]})")
                .find("classification"),
            std::string::npos);
  EXPECT_NE(error("[1]").find("JSON object"), std::string::npos);
}

TEST(HttpJson, BinaryTensorExtension) {
  const std::string head = R"({"inputs": [
      {"name": "a", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
      {"name": "b", "datatype": "FP32", "shape": [1], "data": [2.5]},
      {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}]})";
  std::string binary;
  const int32_t a[2] = {-3, 400};
  binary.append(reinterpret_cast<const char*>(a), 8);
  const uint32_t len = 3;
  binary.append(reinterpret_cast<const char*>(&len), 4);
  binary += "xyz";
  auto r = parse_infer_request(head + binary, head.size(), 64);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->call.inputs[0].values<int32_t>(), (std::vector<int32_t>{-3, 400}));
  EXPECT_EQ(r->call.inputs[1].values<float>(), std::vector<float>{2.5f});
  EXPECT_EQ(*r->call.inputs[2].strings(), std::vector<std::string>{"xyz"});

  EXPECT_FALSE(parse_infer_request(head + binary + "!", head.size(), 64).ok());      // bytes left over
  EXPECT_FALSE(parse_infer_request(head + binary.substr(1), head.size(), 64).ok());  // bytes missing
  EXPECT_FALSE(
      parse_infer_request(head + binary, head.size() + binary.size() + 1, 64).ok());  // header too long
  EXPECT_FALSE(parse_infer_request(head, std::nullopt, 64).ok());  // binary_data_size without the header
}

TEST(HttpJson, InferResponseJsonAndBinaryOutputs) {
  InferReply reply;
  reply.model = "m";
  reply.version = "1";
  reply.id = "x";
  reply.outputs.push_back(
      InferTensor::make("output_ids", TensorType::kInt32, {1, 1, 3}, std::vector<int32_t>{4, 5, 6}));
  reply.outputs.push_back(
      InferTensor::make("sequence_length", TensorType::kInt32, {1, 1}, std::vector<int32_t>{3}));
  reply.outputs.push_back(InferTensor::make_strings("text", {1}, {"hi"}));

  HttpInferRequest plain;
  HttpBody b = infer_response_body(reply, plain);
  EXPECT_FALSE(b.json_length);
  json j = json::parse(b.body);
  EXPECT_EQ(j["model_name"], "m");
  EXPECT_EQ(j["id"], "x");
  EXPECT_EQ(j["outputs"][0]["shape"], json({1, 1, 3}));
  EXPECT_EQ(j["outputs"][0]["data"], json({4, 5, 6}));
  EXPECT_EQ(j["outputs"][2]["datatype"], "BYTES");
  EXPECT_EQ(j["outputs"][2]["data"], json({"hi"}));

  HttpInferRequest binary;
  binary.binary_output_default = true;
  binary.binary_output["sequence_length"] = false;
  b = infer_response_body(reply, binary);
  ASSERT_TRUE(b.json_length);
  j = json::parse(b.body.substr(0, *b.json_length));
  EXPECT_EQ(j["outputs"][0]["parameters"]["binary_data_size"], 12);
  EXPECT_FALSE(j["outputs"][0].contains("data"));
  EXPECT_EQ(j["outputs"][1]["data"], json({3}));
  EXPECT_EQ(j["outputs"][2]["parameters"]["binary_data_size"], 6);
  const std::string tail = b.body.substr(*b.json_length);
  ASSERT_EQ(tail.size(), 18u);
  int32_t ids[3];
  std::memcpy(ids, tail.data(), 12);
  EXPECT_EQ(ids[2], 6);
  EXPECT_EQ(tail.substr(16), "hi");
}

ModelMetadata trtllm_like_metadata() {
  ModelMetadata md;
  md.name = "tensorrt_llm";
  md.inputs = {
      {"input_ids", "INT32", {-1, -1, 1}, false},      {"input_lengths", "INT32", {-1, 1}, false},
      {"request_output_len", "INT32", {-1, 1}, false}, {"text_input", "BYTES", {-1, 1}, false},
      {"temperature", "FP32", {-1, 1}, true},          {"streaming", "BOOL", {-1, 1}, true},
      {"random_seed", "UINT64", {-1, 1}, true},        {"stop_words_list", "INT32", {-1, 2, -1}, true}};
  return md;
}

TEST(HttpJson, GenerateMapsFieldsToInputsAsTritonDoes) {
  auto r =
      parse_generate_request(R"({"id": "g", "input_ids": [1, 2, 3], "input_lengths": 3, "text_input": "hi",
      "parameters": {"request_output_len": 5, "temperature": 0.5, "streaming": true, "random_seed": 7,
                     "stop_words_list": [4, 1]}})",
                             trtllm_like_metadata(), 64);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->id, "g");
  std::map<std::string, InferTensor> in;
  for (auto& t : r->inputs) in[t.name] = t;
  EXPECT_EQ(in["input_ids"].shape, (std::vector<int64_t>{1, 3, 1}));
  EXPECT_EQ(in["input_ids"].values<int32_t>(), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(in["input_lengths"].shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(in["request_output_len"].values<int32_t>(), std::vector<int32_t>{5});
  EXPECT_EQ(in["text_input"].type, TensorType::kBytes);
  EXPECT_EQ(*in["text_input"].strings(), std::vector<std::string>{"hi"});
  EXPECT_EQ(in["temperature"].values<float>(), std::vector<float>{0.5f});
  EXPECT_EQ(in["streaming"].type, TensorType::kBool);
  EXPECT_EQ(in["random_seed"].values<uint64_t>(), std::vector<uint64_t>{7});
  EXPECT_EQ(in["stop_words_list"].shape, (std::vector<int64_t>{1, 2, 1}));

  auto error = [](const std::string& body) {
    auto g = parse_generate_request(body, trtllm_like_metadata(), 64);
    return g.ok() ? std::string() : g.status().message();
  };
  EXPECT_NE(error(R"({"max_tokens": 3})")
                .find("'max_tokens' is not an input of model 'tensorrt_llm' (its inputs: "),
            std::string::npos);
  EXPECT_NE(error(R"({"input_lengths": 3, "parameters": {"input_lengths": 3}})").find("given twice"),
            std::string::npos);
  EXPECT_NE(error(R"({"input_lengths": "3"})").find("INT32 takes integers"), std::string::npos);
  EXPECT_NE(error(R"({"text_input": 3})").find("BYTES takes strings"), std::string::npos);
  EXPECT_NE(error(R"({"input_ids": [[1]]})").find("flat array"), std::string::npos);
  EXPECT_NE(error(R"({"stop_words_list": [1, 2, 3]})").find("do not fit"), std::string::npos);
  EXPECT_NE(error(R"({"random_seed": -1})").find("UINT64"), std::string::npos);
  EXPECT_TRUE(parse_generate_request("", trtllm_like_metadata(), 64)
                  .ok());  // empty: no inputs (the model says what is missing)
}

TEST(HttpJson, GenerateResponseUnwrapsScalars) {
  InferReply reply;
  reply.model = "ensemble";
  reply.version = "1";
  reply.outputs.push_back(InferTensor::make_strings("text_output", {1, 1}, {"hello"}));
  reply.outputs.push_back(
      InferTensor::make("output_ids", TensorType::kInt32, {1, 1, 2}, std::vector<int32_t>{8, 9}));
  json j = json::parse(generate_response_json(reply));
  EXPECT_EQ(j, json({{"model_name", "ensemble"},
                     {"model_version", "1"},
                     {"text_output", "hello"},
                     {"output_ids", {8, 9}}}));
}

TEST(HttpJson, ModelConfigJsonHasNumbersAndProtoNames) {
  auto config = load_model_config(kiln::test::data_path("server/seed_tensorrt_llm_config.pbtxt"));
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  auto text = model_config_json(*config);
  ASSERT_TRUE(text.ok());
  json j = json::parse(*text);
  EXPECT_EQ(j["name"], "tensorrt_llm");
  EXPECT_EQ(j["max_batch_size"], 4);
  EXPECT_EQ(j["model_transaction_policy"]["decoupled"], false);  // defaults are printed
  EXPECT_EQ(j["input"][0]["name"], "input_ids");
  EXPECT_EQ(j["input"][0]["data_type"], "TYPE_INT32");
  EXPECT_EQ(j["input"][0]["dims"], json({-1, 1}));  // int64 as numbers, as Triton writes them
  EXPECT_EQ(j["dynamic_batching"]["max_queue_delay_microseconds"], 1000);
  EXPECT_EQ(j["parameters"]["gpt_model_type"]["string_value"], "V1");
}

TEST(HttpJson, LogSettingsOnlyTheVerboseLevelChanges) {
  json doc = json::parse(log_settings_json(0));
  EXPECT_EQ(doc["log_verbose_level"], 0);
  EXPECT_EQ(doc["log_file"], "");
  doc["log_verbose_level"] = 2;
  auto level = apply_log_settings(doc, 0);  // what GET returned, with one change
  ASSERT_TRUE(level.ok()) << level.status().to_string();
  EXPECT_EQ(*level, 2);
  EXPECT_FALSE(apply_log_settings(json{{"log_file", "/tmp/x.log"}}, 0).ok());
  EXPECT_FALSE(apply_log_settings(json{{"log_info", false}}, 0).ok());
  EXPECT_FALSE(apply_log_settings(json{{"log_format", "ISO8601"}}, 0).ok());
  EXPECT_FALSE(apply_log_settings(json{{"log_verbose_level", -1}}, 0).ok());
  EXPECT_FALSE(apply_log_settings(json{{"colour", true}}, 0).ok());
  EXPECT_EQ(*apply_log_settings(json{{"log_file", nullptr}}, 3), 3);
}

TEST(HttpJson, ElementRanges) {
  std::string out;
  EXPECT_TRUE(append_json_element(json(255), TensorType::kUint8, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(256), TensorType::kUint8, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(-1), TensorType::kUint32, "x", out).ok());
  EXPECT_TRUE(append_json_element(json(-128), TensorType::kInt8, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(-129), TensorType::kInt8, "x", out).ok());
  EXPECT_TRUE(append_json_element(json(18446744073709551615ull), TensorType::kUint64, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(18446744073709551615ull), TensorType::kInt64, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(70000.0), TensorType::kFp16, "x", out).ok());
  EXPECT_TRUE(append_json_element(json(1.5), TensorType::kFp16, "x", out).ok());
  EXPECT_FALSE(append_json_element(json(1), TensorType::kBool, "x", out).ok());
  InferTensor h{"h", TensorType::kFp16, {1}, out.substr(out.size() - 2)};
  EXPECT_EQ(tensor_data_json(h), json({1.5}));
}

}  // namespace
}  // namespace kiln::server
