// The tensorrt_llm model's tensor contract, independent of the transport: what the seed's client sends
// becomes the right executor request, bad inputs get errors that name them, outputs have the documented shapes.
#include <gtest/gtest.h>

#include "server/trtllm_tensors.h"

namespace kiln::server {
namespace {

TrtllmLimits seed_limits() {
  TrtllmLimits l;
  l.max_batch_size = 4;  // the seed's config.pbtxt
  l.vocab_size = 32064;
  l.max_input_len = 256;
  l.max_seq_len = 2048;
  l.max_beam_width = 1;
  return l;
}

InferTensor i32(const std::string& name, std::vector<int64_t> shape, std::vector<int32_t> v) {
  return InferTensor::make(name, TensorType::kInt32, std::move(shape), v);
}

// What section 4.5 of the seed tutorial sends: input_ids [1, len, 1], input_lengths [[1024]], ...
std::vector<InferTensor> seed_inputs(std::vector<int32_t> ids) {
  const int64_t n = static_cast<int64_t>(ids.size());
  return {i32("input_ids", {1, n, 1}, ids), i32("input_lengths", {1, 1}, {1024}),
          i32("request_output_len", {1, 1}, {1024}), i32("end_id", {1, 1}, {32007})};
}

std::string error_of(const std::vector<InferTensor>& in, TrtllmLimits l = seed_limits()) {
  auto r = parse_trtllm_inputs(in, l);
  return r.ok() ? "" : r.status().message();
}

TEST(TrtllmTensors, TheSeedClientsRequest) {
  auto r = parse_trtllm_inputs(seed_inputs({1, 32010, 1724, 338}), seed_limits());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->requests.size(), 1u);
  const Request& q = r->requests[0];
  EXPECT_EQ(q.input_ids, (std::vector<int32_t>{1, 32010, 1724, 338}));
  EXPECT_EQ(q.max_new_tokens, 1024);
  EXPECT_EQ(q.end_ids, std::vector<int32_t>{32007});
  EXPECT_FALSE(q.output.exclude_input_from_output);  // the seed's config echoes the prompt
  // end_id -1: no end id, the output runs to request_output_len (benchmarks force lengths so).
  std::vector<InferTensor> no_end = seed_inputs({1, 2, 3});
  no_end[3] = i32("end_id", {1, 1}, {-1});
  auto forced = parse_trtllm_inputs(no_end, seed_limits());
  ASSERT_TRUE(forced.ok()) << forced.status().to_string();
  ASSERT_TRUE(forced->requests[0].end_ids.has_value());
  EXPECT_TRUE(forced->requests[0].end_ids->empty());
  ASSERT_EQ(r->notes.size(), 1u);  // input_lengths 1024 > 4 ids: clamped, said once
  EXPECT_NE(r->notes[0].find("1024"), std::string::npos);
  // request_output_len past max_seq_len - prompt is cut to what is left (TensorRT-LLM does the same).
  TrtllmLimits tight = seed_limits();
  tight.max_seq_len = 1024;
  auto cut = parse_trtllm_inputs(seed_inputs({1, 2, 3, 4}), tight);
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->requests[0].max_new_tokens, 1020);
  EXPECT_EQ(cut->notes.size(), 2u);
}

TEST(TrtllmTensors, ShorterInputLengthsMarkPadding) {
  auto in = seed_inputs({5, 6, 7, 8, 9});
  in[1] = i32("input_lengths", {1, 1}, {3});
  auto r = parse_trtllm_inputs(in, seed_limits());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->requests[0].input_ids, (std::vector<int32_t>{5, 6, 7}));
}

TEST(TrtllmTensors, BatchRowsBecomeRequests) {
  std::vector<InferTensor> in = {i32("input_ids", {2, 3}, {1, 2, 3, 4, 5, 0}), i32("input_lengths", {2, 1}, {3, 2}),
                                 i32("request_output_len", {2, 1}, {4, 5}),
                                 InferTensor::make("temperature", TensorType::kFp32, {2, 1}, std::vector<float>{0.5f, 0.7f}),
                                 InferTensor::make("random_seed", TensorType::kUint64, {2, 1}, std::vector<uint64_t>{7, 8}),
                                 InferTensor::make("streaming", TensorType::kBool, {2, 1}, std::vector<uint8_t>{1, 0}),
                                 i32("stop_words_list", {2, 2, 3}, {10, 11, 12, 2, 3, -1, 20, 0, 0, 1, -1, -1})};
  auto r = parse_trtllm_inputs(in, seed_limits());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->requests.size(), 2u);
  EXPECT_EQ(r->requests[1].input_ids, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(r->requests[1].max_new_tokens, 5);
  EXPECT_FLOAT_EQ(r->requests[0].sampling.temperature, 0.5f);
  EXPECT_EQ(r->requests[1].sampling.random_seed, 8u);
  EXPECT_TRUE(r->requests[0].streaming);
  EXPECT_FALSE(r->requests[1].streaming);
  EXPECT_EQ(r->requests[0].stop_words, (std::vector<std::vector<int32_t>>{{10, 11}, {12}}));
  EXPECT_EQ(r->requests[1].stop_words, (std::vector<std::vector<int32_t>>{{20}}));
}

TEST(TrtllmTensors, BadInputsAreNamed) {
  auto base = seed_inputs({1, 2, 3});
  auto with = [&](size_t i, InferTensor t) {
    auto v = base;
    v[i] = std::move(t);
    return v;
  };
  EXPECT_NE(error_of(with(0, InferTensor::make("input_ids", TensorType::kInt64, {1, 3, 1}, std::vector<int64_t>{1, 2, 3})))
                .find("'input_ids' must be INT32, got INT64"),
            std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {1, 3, 2}, {1, 2, 3, 4, 5, 6}))).find("shape [1,3,2]"), std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {1, 4, 1}, {1, 2, 3}))).find("bytes of data"), std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {1, INT64_MAX, 4}, {1}))).find("overflows"), std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {5, 3, 1}, std::vector<int32_t>(15, 1)))).find("max_batch_size=4"),
            std::string::npos);
  EXPECT_NE(error_of(with(1, i32("input_lengths", {1, 1}, {0}))).find("input_lengths=0 must be positive"),
            std::string::npos);
  EXPECT_NE(error_of(with(1, i32("input_lengths", {1, 1}, {-3}))).find("input_lengths=-3"), std::string::npos);
  EXPECT_NE(error_of(with(2, i32("request_output_len", {1, 1}, {0}))).find("request_output_len=0"), std::string::npos);
  EXPECT_NE(error_of(with(2, i32("request_output_len", {1, 1}, {-2}))).find("request_output_len=-2"), std::string::npos);
  EXPECT_NE(error_of(with(2, i32("request_output_len", {1, 1}, {5000}))).find("exceeds max_seq_len=2048"),
            std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {1, 0, 1}, {}))).find("empty"), std::string::npos);
  EXPECT_NE(error_of(with(0, i32("input_ids", {1, 300, 1}, std::vector<int32_t>(300, 1)))).find("max_input_len=256"),
            std::string::npos);
  auto missing = base;
  missing.erase(missing.begin() + 2);
  EXPECT_NE(error_of(missing).find("missing required input 'request_output_len'"), std::string::npos);
  auto unknown = base;
  unknown.push_back(i32("input_idz", {1, 1}, {1}));
  EXPECT_NE(error_of(unknown).find("unknown input 'input_idz'"), std::string::npos);
  auto dup = base;
  dup.push_back(base[3]);
  EXPECT_NE(error_of(dup).find("'end_id' is given twice"), std::string::npos);
  auto lora = base;
  lora.push_back(InferTensor::make("lora_task_id", TensorType::kUint64, {1, 1}, std::vector<uint64_t>{3}));
  auto r = parse_trtllm_inputs(lora, seed_limits());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(r.status().message().find("lora_task_id"), std::string::npos);
  auto words = base;
  words.push_back(i32("bad_words_list", {1, 2, 2}, {5, 6, 3, -1}));
  EXPECT_NE(error_of(words).find("bad_words_list"), std::string::npos);
}

TEST(TrtllmTensors, OutputsHaveTheDocumentedShapes) {
  Request q;
  q.input_ids = {1, 2};
  q.end_ids = std::vector<int32_t>{9};
  q.output.return_log_probs = true;
  Response a;
  a.output_ids = {{1, 2, 5, 6, 7}};
  a.sequence_lengths = {5};
  a.cum_log_probs = {-1.5f};
  a.output_log_probs = {{-0.5f, -1.0f, 0, 0, 0}};
  Response b = a;
  b.output_ids = {{1, 2, 8}};
  b.sequence_lengths = {3};
  auto out = trtllm_outputs(std::vector<Response>{a, b}, std::vector<Request>{q, q}, seed_limits(), {});
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].name, "output_ids");
  EXPECT_EQ(out[0].shape, (std::vector<int64_t>{2, 1, 5}));
  EXPECT_EQ(out[0].values<int32_t>(), (std::vector<int32_t>{1, 2, 5, 6, 7, 1, 2, 8, 9, 9}));  // padded with end_id
  EXPECT_EQ(out[1].name, "sequence_length");
  EXPECT_EQ(out[1].values<int32_t>(), (std::vector<int32_t>{5, 3}));
  EXPECT_EQ(out[2].name, "cum_log_probs");
  EXPECT_EQ(out[2].shape, (std::vector<int64_t>{2, 1}));
  auto only = trtllm_outputs(std::vector<Response>{a}, std::vector<Request>{q}, seed_limits(), {"output_ids"});
  ASSERT_EQ(only.size(), 1u);
}

TEST(InferTensor, BytesRoundTripAndValidation) {
  auto t = InferTensor::make_strings("text_input", {2}, {"hello", "안녕"});
  ASSERT_TRUE(t.validate().ok());
  auto s = t.strings();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)[1], "안녕");
  t.shape = {3};
  EXPECT_FALSE(t.validate().ok());
  t.shape = {2};
  t.data.pop_back();
  EXPECT_FALSE(t.validate().ok());
  EXPECT_EQ(tensor_type_from_name("FP32"), TensorType::kFp32);
  EXPECT_FALSE(tensor_type_from_name("FLOAT"));
}

}  // namespace
}  // namespace kiln::server
