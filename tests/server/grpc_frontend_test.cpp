// The gRPC frontend end to end: a ServerCore on a small repository (the seed's tensorrt_llm config with the
// llama fixture engine), GrpcFrontend on a free port, and the generated C++ stub as the client.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "grpc_service.grpc.pb.h"
#include "health.grpc.pb.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "server/grpc_frontend.h"
#include "server/server_core.h"
#include "server_test_repo.h"
#include "test_util.h"

namespace kiln::server {
namespace {

namespace fs = std::filesystem;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;
using kiln::test::TempDir;
using kiln::test::build_fp32_engine;
using kiln::test::write_seed_trtllm_model;

constexpr int kMaxOutputLen = 400;  // long enough for a stream to be cancelled mid-generation

struct Fixture {
  TempDir dir;
  std::unique_ptr<ServerCore> core;
  std::unique_ptr<GrpcFrontend> frontend;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
};

Fixture* fx = nullptr;

class GrpcFrontendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx = new Fixture();
    const std::string engine = build_fp32_engine(fx->dir, "llama", 4, 32, 32 + kMaxOutputLen);
    const std::string repo = fx->dir.sub("repo");
    write_seed_trtllm_model(repo, engine, "tensorrt_llm", false);
    write_seed_trtllm_model(repo, engine, "trtllm_stream", true);
    write_seed_trtllm_model(repo, engine, "spare", false);

    ServerOptions o;
    o.model_repository = repo;
    o.max_request_bytes = 1 << 20;
    o.control_mode = ModelControlMode::kExplicit;  // the repository API is exercised
    o.load_models = {"*"};
    o.shutdown_timeout = std::chrono::seconds(5);
    auto core = ServerCore::create(o);
    KILN_CHECK(core.ok(), core.status().to_string());
    fx->core = std::move(*core);
    auto frontend = GrpcFrontend::start(*fx->core, "127.0.0.1", 0);
    KILN_CHECK(frontend.ok(), frontend.status().to_string());
    fx->frontend = std::move(*frontend);
    fx->channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(fx->frontend->port()),
                                      grpc::InsecureChannelCredentials());
    fx->stub = inference::GRPCInferenceService::NewStub(fx->channel);
  }

  static void TearDownTestSuite() {
    fx->frontend->shutdown();
    fx->core->shutdown(std::chrono::seconds(0));
    delete fx;
    fx = nullptr;
  }

  inference::GRPCInferenceService::Stub& stub() { return *fx->stub; }
};

// ---- request builders and readers ----------------------------------------------------------------------------

ModelInferRequest::InferInputTensor* add_input(ModelInferRequest& r, const std::string& name, const std::string& type,
                                               std::vector<int64_t> shape) {
  auto* in = r.add_inputs();
  in->set_name(name);
  in->set_datatype(type);
  for (int64_t d : shape) in->add_shape(d);
  return in;
}

template <typename T>
void add_raw(ModelInferRequest& r, const std::string& name, const std::string& type, std::vector<int64_t> shape,
             const std::vector<T>& v) {
  add_input(r, name, type, std::move(shape));
  r.add_raw_input_contents(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)));
}

void add_typed_i32(ModelInferRequest& r, const std::string& name, std::vector<int64_t> shape,
                   const std::vector<int32_t>& v) {
  auto* in = add_input(r, name, "INT32", std::move(shape));
  for (int32_t x : v) in->mutable_contents()->add_int_contents(x);
}

// What the seed's client sends: input_ids [1, n, 1], input_lengths [1, 1], request_output_len [1, 1], end_id.
ModelInferRequest prompt_request(const std::string& model, const std::vector<int32_t>& ids, int32_t output_len,
                                 int32_t end_id, bool raw = true, bool streaming = false) {
  ModelInferRequest r;
  r.set_model_name(model);
  const int64_t n = static_cast<int64_t>(ids.size());
  if (raw) {
    add_raw<int32_t>(r, "input_ids", "INT32", {1, n, 1}, ids);
    add_raw<int32_t>(r, "input_lengths", "INT32", {1, 1}, {static_cast<int32_t>(n)});
    add_raw<int32_t>(r, "request_output_len", "INT32", {1, 1}, {output_len});
    add_raw<int32_t>(r, "end_id", "INT32", {1, 1}, {end_id});
    if (streaming) add_raw<uint8_t>(r, "streaming", "BOOL", {1, 1}, {1});
  } else {
    add_typed_i32(r, "input_ids", {1, n, 1}, ids);
    add_typed_i32(r, "input_lengths", {1, 1}, {static_cast<int32_t>(n)});
    add_typed_i32(r, "request_output_len", {1, 1}, {output_len});
    add_typed_i32(r, "end_id", {1, 1}, {end_id});
    if (streaming) add_input(r, "streaming", "BOOL", {1, 1})->mutable_contents()->add_bool_contents(true);
  }
  return r;
}

const ModelInferResponse::InferOutputTensor* find_output(const ModelInferResponse& r, const std::string& name,
                                                         int* index = nullptr) {
  for (int i = 0; i < r.outputs_size(); ++i)
    if (r.outputs(i).name() == name) {
      if (index) *index = i;
      return &r.outputs(i);
    }
  return nullptr;
}

std::vector<int32_t> ints(const ModelInferResponse& r, const std::string& name) {
  int i = -1;
  if (!find_output(r, name, &i) || i >= r.raw_output_contents_size()) return {};
  const std::string& raw = r.raw_output_contents(i);
  std::vector<int32_t> v(raw.size() / 4);
  std::memcpy(v.data(), raw.data(), v.size() * 4);
  return v;
}

bool final_flag(const ModelStreamInferResponse& m) {
  const auto& p = m.infer_response().parameters();
  auto it = p.find("triton_final_response");
  return it != p.end() && it->second.bool_param();
}

grpc::Status infer(const ModelInferRequest& req, ModelInferResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return fx->stub->ModelInfer(&ctx, req, resp);
}

const std::vector<int32_t> kPrompt = {1, 17, 42, 99, 7, 300};

// An end id the greedy continuation of kPrompt never produces within kMaxOutputLen tokens, so generation runs
// to the full length (greedy tokens do not depend on the end id until it stops them).
int32_t never_generated_end_id() {
  static int32_t end_id = -1;
  if (end_id >= 0) return end_id;
  int32_t candidate = 511;
  for (int attempt = 0; attempt < 20; ++attempt) {
    ModelInferResponse resp;
    grpc::Status s = infer(prompt_request("tensorrt_llm", kPrompt, kMaxOutputLen, candidate), &resp);
    KILN_CHECK(s.ok(), s.error_message());
    std::vector<int32_t> out = ints(resp, "output_ids");
    if (out.size() == kPrompt.size() + kMaxOutputLen) return end_id = candidate;
    std::set<int32_t> seen(out.begin(), out.end());
    candidate = 0;
    while (seen.count(candidate)) ++candidate;
  }
  KILN_CHECK(false, "no end id that the fixture never generates");
  return -1;
}

// ---- health and metadata ---------------------------------------------------------------------------------------

TEST_F(GrpcFrontendTest, ServerLiveReadyAndMetadata) {
  {
    grpc::ClientContext ctx;
    inference::ServerLiveResponse r;
    ASSERT_TRUE(stub().ServerLive(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.live());
  }
  {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse r;
    ASSERT_TRUE(stub().ServerReady(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.ready());
  }
  grpc::ClientContext ctx;
  inference::ServerMetadataResponse r;
  ASSERT_TRUE(stub().ServerMetadata(&ctx, {}, &r).ok());
  EXPECT_EQ(r.name(), "kiln");
  EXPECT_EQ(r.version(), fx->core->version());
  EXPECT_NE(std::find(r.extensions().begin(), r.extensions().end(), "model_repository"), r.extensions().end());
}

TEST_F(GrpcFrontendTest, HealthService) {
  auto health = grpc::health::v1::Health::NewStub(fx->channel);
  for (const std::string service : {"", "inference.GRPCInferenceService"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse r;
    ASSERT_TRUE(health->Check(&ctx, req, &r).ok()) << service;
    EXPECT_EQ(r.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse r;
  EXPECT_EQ(health->Check(&ctx, req, &r).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext wctx;
  auto watch = health->Watch(&wctx, {});
  EXPECT_FALSE(watch->Read(&r));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(GrpcFrontendTest, ModelMetadataReadyAndConfig) {
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest req;
    req.set_name("tensorrt_llm");
    inference::ModelMetadataResponse r;
    ASSERT_TRUE(stub().ModelMetadata(&ctx, req, &r).ok());
    EXPECT_EQ(r.name(), "tensorrt_llm");
    EXPECT_EQ(r.platform(), "tensorrtllm");  // the backend, as Triton reports it
    ASSERT_EQ(r.versions_size(), 1);
    EXPECT_EQ(r.versions(0), "1");
    auto in = std::find_if(r.inputs().begin(), r.inputs().end(), [](const auto& t) { return t.name() == "input_ids"; });
    ASSERT_NE(in, r.inputs().end());
    EXPECT_EQ(in->datatype(), "INT32");
    EXPECT_EQ(std::vector<int64_t>(in->shape().begin(), in->shape().end()), (std::vector<int64_t>{-1, -1, 1}));
    auto out = std::find_if(r.outputs().begin(), r.outputs().end(),
                            [](const auto& t) { return t.name() == "output_ids"; });
    ASSERT_NE(out, r.outputs().end());
    EXPECT_EQ(out->datatype(), "INT32");
  }
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name("tensorrt_llm");
    inference::ModelReadyResponse r;
    ASSERT_TRUE(stub().ModelReady(&ctx, req, &r).ok());
    EXPECT_TRUE(r.ready());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name("no_such_model");
    inference::ModelReadyResponse r;
    ASSERT_TRUE(stub().ModelReady(&ctx, req, &r).ok());  // Triton: unknown models are simply not ready
    EXPECT_FALSE(r.ready());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelConfigRequest req;
    req.set_name("trtllm_stream");
    inference::ModelConfigResponse r;
    ASSERT_TRUE(stub().ModelConfig(&ctx, req, &r).ok());
    EXPECT_EQ(r.config().name(), "trtllm_stream");
    EXPECT_EQ(r.config().max_batch_size(), 4);
    EXPECT_TRUE(r.config().model_transaction_policy().decoupled());
    EXPECT_EQ(r.config().input(0).name(), "input_ids");
  }
  grpc::ClientContext ctx;
  inference::ModelMetadataRequest req;
  req.set_name("no_such_model");
  inference::ModelMetadataResponse r;
  EXPECT_EQ(stub().ModelMetadata(&ctx, req, &r).error_code(), grpc::StatusCode::NOT_FOUND);
}

// ---- infer -----------------------------------------------------------------------------------------------------

TEST_F(GrpcFrontendTest, InferWithRawContents) {
  ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 8, never_generated_end_id());
  req.set_id("req-raw-1");
  req.add_outputs()->set_name("output_ids");
  req.add_outputs()->set_name("sequence_length");
  ModelInferResponse resp;
  grpc::Status s = infer(req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.id(), "req-raw-1");
  EXPECT_EQ(resp.model_name(), "tensorrt_llm");
  EXPECT_EQ(resp.model_version(), "1");
  ASSERT_EQ(resp.outputs_size(), 2);  // only what was asked for
  ASSERT_EQ(resp.raw_output_contents_size(), 2);
  const auto* ids = find_output(resp, "output_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->datatype(), "INT32");
  const int64_t len = static_cast<int64_t>(kPrompt.size()) + 8;
  EXPECT_EQ(std::vector<int64_t>(ids->shape().begin(), ids->shape().end()), (std::vector<int64_t>{1, 1, len}));
  std::vector<int32_t> out = ints(resp, "output_ids");
  ASSERT_EQ(out.size(), static_cast<size_t>(len));
  EXPECT_TRUE(std::equal(kPrompt.begin(), kPrompt.end(), out.begin()));  // the seed's config echoes the prompt
  EXPECT_EQ(ints(resp, "sequence_length"), std::vector<int32_t>{static_cast<int32_t>(len)});
}

TEST_F(GrpcFrontendTest, InferWithTypedContentsMatchesRaw) {
  ModelInferResponse raw, typed;
  ASSERT_TRUE(infer(prompt_request("tensorrt_llm", kPrompt, 6, never_generated_end_id(), true), &raw).ok());
  grpc::Status s = infer(prompt_request("tensorrt_llm", kPrompt, 6, never_generated_end_id(), false), &typed);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(ints(typed, "output_ids"), ints(raw, "output_ids"));
  EXPECT_EQ(ints(typed, "output_ids").size(), kPrompt.size() + 6);
  EXPECT_GE(typed.outputs_size(), 2);  // no outputs asked for: all that apply
}

TEST_F(GrpcFrontendTest, InferErrors) {
  auto code_and_message = [](const ModelInferRequest& req) {
    ModelInferResponse resp;
    grpc::Status s = infer(req, &resp);
    return std::make_pair(s.error_code(), s.error_message());
  };
  {
    auto [code, msg] = code_and_message(prompt_request("no_such_model", kPrompt, 4, 2));
    EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(msg.find("no_such_model"), std::string::npos);
    EXPECT_EQ(msg.find(fx->dir.path()), std::string::npos);  // never a path
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(0)->set_datatype("INT33");
    auto [code, msg] = code_and_message(req);
    EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(msg.find("INT33"), std::string::npos);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(0)->set_datatype("FP32");  // a known datatype the model does not take
    EXPECT_EQ(code_and_message(req).first, grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_raw_input_contents()->RemoveLast();  // 4 inputs, 3 raw contents
    auto [code, msg] = code_and_message(req);
    EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(msg.find("raw_input_contents"), std::string::npos);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(1)->mutable_contents()->add_int_contents(6);  // raw and typed mixed
    EXPECT_EQ(code_and_message(req).first, grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2, /*raw=*/false);
    req.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.f);  // the wrong typed field
    auto [code, msg] = code_and_message(req);
    EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(msg.find("int_contents"), std::string::npos);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(0)->set_shape(1, 7);  // 7 ids announced, 6 sent
    EXPECT_EQ(code_and_message(req).first, grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(0)->set_shape(1, int64_t{1} << 62);  // overflowing element count
    req.mutable_inputs(0)->set_shape(2, 16);
    EXPECT_EQ(code_and_message(req).first, grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 4, 2);
    req.mutable_inputs(0)->set_shape(1, -6);
    EXPECT_EQ(code_and_message(req).first, grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    // A decoupled model over plain ModelInfer is refused with a clear error.
    auto [code, msg] = code_and_message(prompt_request("trtllm_stream", kPrompt, 4, 2));
    EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(msg.find("decoupled"), std::string::npos);
  }
  // The server keeps serving.
  ModelInferResponse resp;
  EXPECT_TRUE(infer(prompt_request("tensorrt_llm", kPrompt, 2, 2), &resp).ok());
}

TEST_F(GrpcFrontendTest, RequestOverTheSizeCapIsRefused) {
  ModelInferRequest req;
  req.set_model_name("tensorrt_llm");
  std::vector<int32_t> ids(300000, 5);  // 1.2 MB > the 1 MiB cap
  add_raw<int32_t>(req, "input_ids", "INT32", {1, static_cast<int64_t>(ids.size()), 1}, ids);
  ModelInferResponse resp;
  EXPECT_EQ(infer(req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(infer(prompt_request("tensorrt_llm", kPrompt, 2, 2), &resp).ok());
}

// A metric line's value (`name{labels} value`), or -1.
double metric(const std::string& text, const std::string& series) {
  const size_t at = text.find(series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 1));
}

// Waits until the model's output-token histogram counts one more finished call; returns the tokens it generated.
double tokens_of_next_finished_call(const std::string& model, double count0, double sum0) {
  const std::string labels = "{model=\"" + model + "\",version=\"1\"}";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  double count = count0;
  while (count == count0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    count = metric(fx->core->metrics_text(), "nv_llm_output_token_len_count" + labels);
  }
  EXPECT_EQ(count, count0 + 1);
  return metric(fx->core->metrics_text(), "nv_llm_output_token_len_sum" + labels) - sum0;
}

TEST_F(GrpcFrontendTest, ClientCancelOfAPlainInferCancelsTheCall) {
  const std::string labels = "{model=\"tensorrt_llm\",version=\"1\"}";
  const int32_t end_id = never_generated_end_id();
  const double count0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_count" + labels);
  const double sum0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_sum" + labels);
  ASSERT_GE(count0, 0);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(3));
  ModelInferResponse resp;
  grpc::Status s = stub().ModelInfer(&ctx, prompt_request("tensorrt_llm", kPrompt, kMaxOutputLen, end_id), &resp);
  if (s.ok()) GTEST_SKIP() << "the call finished within the deadline";
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  // The server may never have seen a call that timed out on the way; then no call ends (and there is nothing to
  // cancel). When it did start one, it ends short of kMaxOutputLen tokens.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double count = metric(fx->core->metrics_text(), "nv_llm_output_token_len_count" + labels);
  if (count > count0) EXPECT_LT(tokens_of_next_finished_call("tensorrt_llm", count0, sum0), kMaxOutputLen);
  EXPECT_TRUE(infer(prompt_request("tensorrt_llm", kPrompt, 2, 2), &resp).ok());
}

// ---- the other calls -------------------------------------------------------------------------------------------

TEST_F(GrpcFrontendTest, UnsupportedCallsAnswerUnimplemented) {
  {
    grpc::ClientContext ctx;
    inference::SystemSharedMemoryStatusResponse r;
    grpc::Status s = stub().SystemSharedMemoryStatus(&ctx, {}, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_NE(s.error_message().find("not supported by kiln"), std::string::npos);
  }
  {
    grpc::ClientContext ctx;
    inference::CudaSharedMemoryRegisterResponse r;
    EXPECT_EQ(stub().CudaSharedMemoryRegister(&ctx, {}, &r).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  {
    grpc::ClientContext ctx;
    inference::TraceSettingResponse r;
    EXPECT_EQ(stub().TraceSetting(&ctx, {}, &r).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  ModelInferRequest req = prompt_request("tensorrt_llm", kPrompt, 2, 2);
  (*req.mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_string_param("region0");
  ModelInferResponse resp;
  EXPECT_EQ(infer(req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcFrontendTest, LogSettingsChangeOnlyTheLevel) {
  {
    grpc::ClientContext ctx;
    inference::LogSettingsRequest req;
    (*req.mutable_settings())["log_verbose_level"].set_uint32_param(2);
    inference::LogSettingsResponse r;
    ASSERT_TRUE(stub().LogSettings(&ctx, req, &r).ok());
    EXPECT_EQ(r.settings().at("log_verbose_level").uint32_param(), 2u);
    EXPECT_EQ(fx->core->log_verbose(), 2);
  }
  {
    grpc::ClientContext ctx;
    inference::LogSettingsRequest req;
    (*req.mutable_settings())["log_file"].set_string_param("/tmp/owned");
    inference::LogSettingsResponse r;
    EXPECT_EQ(stub().LogSettings(&ctx, req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    inference::LogSettingsRequest req;
    (*req.mutable_settings())["log_verbose_level"].set_string_param("3");
    inference::LogSettingsResponse r;
    EXPECT_EQ(stub().LogSettings(&ctx, req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  grpc::ClientContext ctx;
  inference::LogSettingsResponse r;
  ASSERT_TRUE(stub().LogSettings(&ctx, {}, &r).ok());  // an empty request reads the settings
  EXPECT_EQ(r.settings().at("log_verbose_level").uint32_param(), 2u);
  EXPECT_EQ(r.settings().at("log_file").string_param(), "");
  fx->core->set_log_verbose(0);
}

TEST_F(GrpcFrontendTest, RepositoryAndStatistics) {
  {
    grpc::ClientContext ctx;
    inference::RepositoryIndexResponse r;
    ASSERT_TRUE(stub().RepositoryIndex(&ctx, {}, &r).ok());
    std::set<std::string> names;
    for (const auto& m : r.models()) {
      names.insert(m.name());
      EXPECT_EQ(m.state(), "READY") << m.name();
    }
    EXPECT_EQ(names, (std::set<std::string>{"spare", "tensorrt_llm", "trtllm_stream"}));
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelUnloadRequest req;
    req.set_model_name("spare");
    (*req.mutable_parameters())["unload_dependents"].set_bool_param(false);  // what tritonclient sends
    inference::RepositoryModelUnloadResponse r;
    ASSERT_TRUE(stub().RepositoryModelUnload(&ctx, req, &r).ok());
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryIndexRequest req;
    req.set_ready(true);
    inference::RepositoryIndexResponse r;
    ASSERT_TRUE(stub().RepositoryIndex(&ctx, req, &r).ok());
    for (const auto& m : r.models()) EXPECT_NE(m.name(), "spare");
  }
  {
    ModelInferResponse resp;
    EXPECT_EQ(infer(prompt_request("spare", kPrompt, 2, 2), &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelLoadRequest req;
    req.set_model_name("spare");
    (*req.mutable_parameters())["config"].set_string_param("{}");
    inference::RepositoryModelLoadResponse r;
    EXPECT_EQ(stub().RepositoryModelLoad(&ctx, req, &r).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelLoadRequest req;
    req.set_model_name("spare");
    inference::RepositoryModelLoadResponse r;
    ASSERT_TRUE(stub().RepositoryModelLoad(&ctx, req, &r).ok());
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelLoadRequest req;
    req.set_model_name("no_such_model");
    inference::RepositoryModelLoadResponse r;
    EXPECT_EQ(stub().RepositoryModelLoad(&ctx, req, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  ModelInferResponse resp;
  ASSERT_TRUE(infer(prompt_request("spare", kPrompt, 2, 2), &resp).ok());
  grpc::ClientContext ctx;
  inference::ModelStatisticsRequest req;
  req.set_name("spare");
  inference::ModelStatisticsResponse r;
  ASSERT_TRUE(stub().ModelStatistics(&ctx, req, &r).ok());
  ASSERT_EQ(r.model_stats_size(), 1);
  const auto& st = r.model_stats(0);
  EXPECT_EQ(st.name(), "spare");
  EXPECT_EQ(st.version(), "1");
  EXPECT_EQ(st.inference_stats().success().count(), 1u);
  EXPECT_GT(st.inference_stats().success().ns(), 0u);
  EXPECT_GT(st.last_inference(), 0u);
}

// ---- streaming -------------------------------------------------------------------------------------------------

using Stream = grpc::ClientReaderWriter<ModelInferRequest, ModelStreamInferResponse>;

ModelInferRequest stream_request(const std::string& id, int32_t output_len, bool empty_final = true) {
  ModelInferRequest r = prompt_request("trtllm_stream", kPrompt, output_len, never_generated_end_id(), true, true);
  r.set_id(id);
  if (empty_final) (*r.mutable_parameters())["triton_enable_empty_final_response"].set_bool_param(true);
  return r;
}

// Reads until request `id` has its final response; returns its generated tokens in order.
std::vector<int32_t> read_until_final(Stream& stream, const std::string& id, int* responses = nullptr) {
  std::vector<int32_t> tokens;
  ModelStreamInferResponse m;
  while (stream.Read(&m)) {
    EXPECT_EQ(m.error_message(), "");
    EXPECT_EQ(m.infer_response().id(), id);
    EXPECT_TRUE(m.infer_response().parameters().count("triton_final_response"));
    if (responses) ++*responses;
    std::vector<int32_t> t = ints(m.infer_response(), "output_ids");
    tokens.insert(tokens.end(), t.begin(), t.end());
    if (final_flag(m)) return tokens;
  }
  ADD_FAILURE() << "the stream ended before the final response of " << id;
  return tokens;
}

TEST_F(GrpcFrontendTest, StreamSendsTokensThenTheFinalFlag) {
  ModelInferResponse plain;
  ASSERT_TRUE(infer(prompt_request("tensorrt_llm", kPrompt, 10, never_generated_end_id()), &plain).ok());
  std::vector<int32_t> expected = ints(plain, "output_ids");
  expected.erase(expected.begin(), expected.begin() + static_cast<long>(kPrompt.size()));

  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub().ModelStreamInfer(&ctx);
  ASSERT_TRUE(stream->Write(stream_request("s-1", 10)));
  int responses = 0;
  EXPECT_EQ(read_until_final(*stream, "s-1", &responses), expected);  // a response per token, then final
  EXPECT_GE(responses, 2);
  // Without the empty-final opt-in the same stream still ends each call with a flagged response.
  ASSERT_TRUE(stream->Write(stream_request("s-2", 3, /*empty_final=*/false)));
  EXPECT_EQ(read_until_final(*stream, "s-2"), std::vector<int32_t>(expected.begin(), expected.begin() + 3));
  ASSERT_TRUE(stream->WritesDone());
  ModelStreamInferResponse m;
  EXPECT_FALSE(stream->Read(&m));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(GrpcFrontendTest, StreamErrorsKeepTheStreamOpen) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub().ModelStreamInfer(&ctx);
  ModelInferRequest bad = stream_request("bad-1", 4);
  bad.set_model_name("no_such_model");
  ASSERT_TRUE(stream->Write(bad));
  ModelStreamInferResponse m;
  ASSERT_TRUE(stream->Read(&m));
  EXPECT_NE(m.error_message().find("no_such_model"), std::string::npos);
  EXPECT_EQ(m.infer_response().id(), "bad-1");

  ModelInferRequest bad_type = stream_request("bad-2", 4);
  bad_type.mutable_inputs(0)->set_datatype("NOPE");
  ASSERT_TRUE(stream->Write(bad_type));
  ASSERT_TRUE(stream->Read(&m));
  EXPECT_NE(m.error_message().find("NOPE"), std::string::npos);
  EXPECT_EQ(m.infer_response().id(), "bad-2");

  ASSERT_TRUE(stream->Write(stream_request("good", 4)));
  EXPECT_EQ(read_until_final(*stream, "good").size(), 4u);
  // Half-close with a call in flight: its responses still arrive, then the stream ends OK.
  ASSERT_TRUE(stream->Write(stream_request("last", 5)));
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_EQ(read_until_final(*stream, "last").size(), 5u);
  EXPECT_FALSE(stream->Read(&m));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(GrpcFrontendTest, StreamCarriesConcurrentCalls) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub().ModelStreamInfer(&ctx);
  const std::vector<std::string> ids = {"a", "b", "c"};
  for (const std::string& id : ids) ASSERT_TRUE(stream->Write(stream_request(id, 12)));
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, std::vector<int32_t>> tokens;
  std::set<std::string> finished;
  ModelStreamInferResponse m;
  while (stream->Read(&m)) {
    ASSERT_EQ(m.error_message(), "");
    const std::string& id = m.infer_response().id();
    EXPECT_FALSE(finished.count(id)) << "a response after the final one of " << id;
    std::vector<int32_t> t = ints(m.infer_response(), "output_ids");
    tokens[id].insert(tokens[id].end(), t.begin(), t.end());
    if (final_flag(m)) finished.insert(id);
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(finished, std::set<std::string>(ids.begin(), ids.end()));
  ASSERT_EQ(tokens["a"].size(), 12u);
  EXPECT_EQ(tokens["b"], tokens["a"]);  // greedy: the same prompt gives the same tokens
  EXPECT_EQ(tokens["c"], tokens["a"]);
}

TEST_F(GrpcFrontendTest, ClientGoneCancelsTheStreamsCalls) {
  const std::string labels = "{model=\"trtllm_stream\",version=\"1\"}";
  const double count0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_count" + labels);
  const double sum0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_sum" + labels);
  ASSERT_GE(count0, 0) << fx->core->metrics_text();
  {
    grpc::ClientContext ctx;
    std::unique_ptr<Stream> stream = stub().ModelStreamInfer(&ctx);
    ASSERT_TRUE(stream->Write(stream_request("long", kMaxOutputLen)));
    ModelStreamInferResponse m;
    ASSERT_TRUE(stream->Read(&m));  // generation is under way
    EXPECT_FALSE(final_flag(m));
    ctx.TryCancel();  // the client goes away
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The call ends (its final chunk is counted) well short of its kMaxOutputLen tokens.
  EXPECT_LT(tokens_of_next_finished_call("trtllm_stream", count0, sum0), kMaxOutputLen);
  EXPECT_EQ(metric(fx->core->metrics_text(), "nv_trt_llm_request_metrics{model=\"trtllm_stream\",version=\"1\","
                                             "request_type=\"active\"}"),
            0);
}

TEST_F(GrpcFrontendTest, ShutdownEndsIdleStreamsAndRefusesNewCalls) {
  auto second = GrpcFrontend::start(*fx->core, "127.0.0.1", 0);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*second)->port()), grpc::InsecureChannelCredentials());
  auto stub2 = inference::GRPCInferenceService::NewStub(channel);
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub2->ModelStreamInfer(&ctx);
  ASSERT_TRUE(stream->Write(stream_request("before", 3)));
  EXPECT_EQ(read_until_final(*stream, "before").size(), 3u);

  const auto t0 = std::chrono::steady_clock::now();
  (*second)->shutdown(std::chrono::seconds(20));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));  // idle streams do not wait
  ModelStreamInferResponse m;
  EXPECT_FALSE(stream->Read(&m));
  EXPECT_TRUE(stream->Finish().ok());

  grpc::ClientContext live_ctx;
  live_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  inference::ServerLiveResponse live;
  EXPECT_FALSE(stub2->ServerLive(&live_ctx, {}, &live).ok());
}

TEST_F(GrpcFrontendTest, ShutdownCancelsCallsStillRunningAfterTheGrace) {
  const std::string labels = "{model=\"trtllm_stream\",version=\"1\"}";
  const double count0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_count" + labels);
  const double sum0 = metric(fx->core->metrics_text(), "nv_llm_output_token_len_sum" + labels);
  auto second = GrpcFrontend::start(*fx->core, "127.0.0.1", 0);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*second)->port()), grpc::InsecureChannelCredentials());
  auto stub2 = inference::GRPCInferenceService::NewStub(channel);
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub2->ModelStreamInfer(&ctx);
  ASSERT_TRUE(stream->Write(stream_request("long", kMaxOutputLen)));
  ModelStreamInferResponse m;
  ASSERT_TRUE(stream->Read(&m));
  (*second)->shutdown(std::chrono::milliseconds(0));
  while (stream->Read(&m)) {
  }
  EXPECT_FALSE(stream->Finish().ok());
  EXPECT_LT(tokens_of_next_finished_call("trtllm_stream", count0, sum0), kMaxOutputLen);
}

TEST_F(GrpcFrontendTest, APortInUseIsAnError) {
  auto again = GrpcFrontend::start(*fx->core, "127.0.0.1", fx->frontend->port());
  EXPECT_FALSE(again.ok());
}

// ---- the conversions alone -------------------------------------------------------------------------------------

TEST(GrpcConvert, TypedContentsOfEveryType) {
  ModelInferRequest req;
  req.set_model_name("m");
  req.set_id("x");
  auto* b = add_input(req, "b", "BOOL", {2});
  b->mutable_contents()->add_bool_contents(true);
  b->mutable_contents()->add_bool_contents(false);
  add_input(req, "i8", "INT8", {1})->mutable_contents()->add_int_contents(-5);
  add_input(req, "u16", "UINT16", {1})->mutable_contents()->add_uint_contents(65535);
  add_input(req, "i64", "INT64", {1})->mutable_contents()->add_int64_contents(int64_t{1} << 40);
  add_input(req, "u64", "UINT64", {1})->mutable_contents()->add_uint64_contents(~uint64_t{0});
  add_input(req, "f32", "FP32", {1})->mutable_contents()->add_fp32_contents(1.5f);
  add_input(req, "f64", "FP64", {1})->mutable_contents()->add_fp64_contents(-2.25);
  auto* s = add_input(req, "s", "BYTES", {2});
  s->mutable_contents()->add_bytes_contents("hi");
  s->mutable_contents()->add_bytes_contents("");
  req.add_outputs()->set_name("out");
  auto call = infer_call_from_grpc(req);
  ASSERT_TRUE(call.ok()) << call.status().to_string();
  EXPECT_EQ(call->model, "m");
  EXPECT_EQ(call->id, "x");
  EXPECT_EQ(call->requested_outputs, std::set<std::string>{"out"});
  ASSERT_EQ(call->inputs.size(), 8u);
  EXPECT_EQ(call->inputs[0].data, std::string("\x01\x00", 2));
  EXPECT_EQ(call->inputs[1].values<int8_t>(), std::vector<int8_t>{-5});
  EXPECT_EQ(call->inputs[2].values<uint16_t>(), std::vector<uint16_t>{65535});
  EXPECT_EQ(call->inputs[3].values<int64_t>(), std::vector<int64_t>{int64_t{1} << 40});
  EXPECT_EQ(call->inputs[4].values<uint64_t>(), std::vector<uint64_t>{~uint64_t{0}});
  EXPECT_EQ(call->inputs[5].values<float>(), std::vector<float>{1.5f});
  EXPECT_EQ(call->inputs[6].values<double>(), std::vector<double>{-2.25});
  EXPECT_EQ(*call->inputs[7].strings(), (std::vector<std::string>{"hi", ""}));
  EXPECT_EQ(call->inputs[7].type, TensorType::kBytes);
}

TEST(GrpcConvert, RefusesWhatDoesNotFit) {
  auto error = [](ModelInferRequest req) {
    auto call = infer_call_from_grpc(req);
    EXPECT_FALSE(call.ok());
    return call.ok() ? std::string() : call.status().message();
  };
  ModelInferRequest narrow;
  add_input(narrow, "i8", "INT8", {1})->mutable_contents()->add_int_contents(300);
  EXPECT_NE(error(narrow).find("300"), std::string::npos);

  ModelInferRequest fp16;
  add_input(fp16, "h", "FP16", {1})->mutable_contents()->add_fp32_contents(1.f);
  EXPECT_NE(error(fp16).find("raw_input_contents"), std::string::npos);

  ModelInferRequest fp16_missing;
  add_input(fp16_missing, "h", "FP16", {2});
  error(fp16_missing);

  ModelInferRequest count;  // typed count differs from the shape
  auto* in = add_input(count, "x", "INT32", {3});
  in->mutable_contents()->add_int_contents(1);
  error(count);

  ModelInferRequest classification;
  classification.add_outputs()->set_name("y");
  (*classification.mutable_outputs(0)->mutable_parameters())["classification"].set_int64_param(3);
  EXPECT_NE(error(classification).find("classification"), std::string::npos);

  ModelInferRequest raw_bytes;  // a BYTES element running past the data
  add_input(raw_bytes, "s", "BYTES", {1});
  raw_bytes.add_raw_input_contents(std::string("\x09\x00\x00\x00hi", 6));
  error(raw_bytes);
}

TEST(GrpcConvert, ReplyAndStatus) {
  InferReply reply{
      "m", "1", "id7", {}, {InferTensor::make("o", TensorType::kInt32, {1, 2}, std::vector<int32_t>{3, 4})}, true};
  ModelInferResponse r;
  infer_reply_to_grpc(reply, &r);
  EXPECT_EQ(r.model_name(), "m");
  EXPECT_EQ(r.model_version(), "1");
  EXPECT_EQ(r.id(), "id7");
  ASSERT_EQ(r.outputs_size(), 1);
  EXPECT_EQ(r.outputs(0).datatype(), "INT32");
  EXPECT_EQ(std::vector<int64_t>(r.outputs(0).shape().begin(), r.outputs(0).shape().end()),
            (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(ints(r, "o"), (std::vector<int32_t>{3, 4}));

  EXPECT_EQ(grpc_status(invalid_argument("x")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(grpc_status(not_found("x")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(grpc_status(unavailable("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(grpc_status(resource_exhausted("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(grpc_status(unimplemented("x")).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(grpc_status(cancelled("x")).error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(grpc_status(data_loss("x")).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(grpc_status(invalid_argument("why")).error_message(), "why");
  EXPECT_TRUE(grpc_status(Status()).ok());
}

}  // namespace
}  // namespace kiln::server
