// The HTTP frontend end to end: a ServerCore on a small repository (the seed's tensorrt_llm config with the
// llama fixture engine), HttpFrontend on a free port, and a small Boost.Beast client speaking what
// tritonclient.http and curl send: every endpoint, JSON and binary tensors, generate / generate_stream, the
// limits, keep-alive, timeouts.
#include "server/http_frontend.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <zlib.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "executor/executor.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "server/http_json.h"
#include "server/server_core.h"
#include "server_test_repo.h"
#include "test_util.h"

namespace kiln::server {
namespace {

namespace fs = std::filesystem;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using kiln::test::TempDir;
using kiln::test::build_fp32_engine;
using kiln::test::write_seed_trtllm_model;
using namespace std::chrono_literals;

constexpr int kMaxOutputLen = 400;  // long enough for a call to be cancelled mid-generation
constexpr uint64_t kBodyCap = 1 << 20;

struct Fixture {
  TempDir dir;
  std::unique_ptr<ServerCore> core;
  std::unique_ptr<HttpFrontend> http, metrics;
  // The same engine in process, for the tokens a request must produce.
  Engine engine;
  CpuBackend backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Executor> executor;
};

Fixture* fx = nullptr;

// ---- a small HTTP/1.1 client
// ------------------------------------------------------------------------------------

struct Reply {
  unsigned status = 0;  // 0: no response (the connection failed or closed)
  std::string body, error;
  std::map<std::string, std::string> headers;  // lower-case names
  bool keep_alive = false;
  json body_json() const { return json::parse(body, nullptr, /*allow_exceptions=*/false); }
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

using Headers = std::vector<std::pair<std::string, std::string>>;

class Client {
 public:
  explicit Client(int port) : socket_(ioc_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    socket_.set_option(tcp::no_delay(true));
  }

  Reply get(const std::string& target) { return request(http::verb::get, target); }
  Reply post(const std::string& target, const std::string& body, const Headers& headers = {}) {
    return request(http::verb::post, target, body, headers);
  }
  Reply request(http::verb method, const std::string& target, const std::string& body = "",
                const Headers& headers = {}) {
    send(method, target, body, headers);
    return read();
  }
  void send(http::verb method, const std::string& target, const std::string& body = "",
            const Headers& headers = {}) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [k, v] : headers) req.set(k, v);
    req.body() = body;
    req.prepare_payload();
    beast::error_code ec;
    http::write(socket_, req, ec);
  }
  void write_raw(std::string_view data) {
    beast::error_code ec;
    asio::write(socket_, asio::buffer(data.data(), data.size()), ec);
  }
  Reply read() {
    http::response_parser<http::string_body> p;
    p.body_limit(boost::none);
    beast::error_code ec;
    http::read(socket_, buffer_, p, ec);
    Reply r;
    if (ec) {
      r.error = ec.message();
      return r;
    }
    const auto& res = p.get();
    r.status = res.result_int();
    r.body = res.body();
    r.keep_alive = res.keep_alive();
    for (const auto& f : res) {
      std::string name(f.name_string());
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.headers[name] = std::string(f.value());
    }
    return r;
  }
  // True when the server closes the connection within `timeout` (reads until EOF).
  bool closed_within(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{socket_.native_handle(), POLLIN, 0};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 1))) <= 0) continue;
      beast::error_code ec;
      socket_.read_some(asio::buffer(buf), ec);
      if (ec) return true;
    }
    return false;
  }
  tcp::socket& socket() { return socket_; }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

int port() { return fx->http->port(); }

Reply GET(const std::string& target) { return Client(port()).get(target); }
Reply POST(const std::string& target, const std::string& body, const Headers& headers = {}) {
  return Client(port()).post(target, body, headers);
}

// ---- request builders
// ---------------------------------------------------------------------------------------------

const std::vector<int32_t> kPrompt = {1, 17, 42, 99, 7, 300};

// What the seed's client sends, as JSON tensors: input_ids [1, n, 1] (nested data), input_lengths,
// request_output_len.
json infer_json(const std::vector<int32_t>& ids, int output_len, json extra_inputs = json::array()) {
  json nested = json::array();
  for (int32_t id : ids) nested.push_back(json::array({id}));
  json inputs = json::array({
      {{"name", "input_ids"},
       {"datatype", "INT32"},
       {"shape", {1, ids.size(), 1}},
       {"data", json::array({nested})}},
      {{"name", "input_lengths"}, {"datatype", "INT32"}, {"shape", {1, 1}}, {"data", {ids.size()}}},
      {{"name", "request_output_len"}, {"datatype", "INT32"}, {"shape", {1, 1}}, {"data", {{output_len}}}},
  });
  for (auto& e : extra_inputs) inputs.push_back(e);
  return {{"inputs", inputs}};
}

json scalar_input(const std::string& name, const std::string& type, json value) {
  return {{"name", name}, {"datatype", type}, {"shape", {1, 1}}, {"data", {value}}};
}

// The tokens the engine generates for `ids` (greedy, the model's EOS), computed in process.
std::vector<int32_t> expected_tokens(const std::vector<int32_t>& ids, int n) {
  Request r;
  r.input_ids = ids;
  r.max_new_tokens = n;
  auto id = fx->executor->enqueue(r);
  KILN_CHECK(id.ok(), id.status().to_string());
  auto resp = fx->executor->await_final(*id);
  KILN_CHECK(resp.ok(), resp.status().to_string());
  return resp->output_ids[0];
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const json* find_output(const json& reply, const std::string& name) {
  for (const json& o : reply["outputs"])
    if (o["name"] == name) return &o;
  return nullptr;
}

std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> events;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos) break;
    events.push_back(body.substr(at + 6, end - at - 6));
    at = end + 2;
  }
  return events;
}

class HttpFrontendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fx = new Fixture();
    const std::string engine_dir = build_fp32_engine(fx->dir, "llama", 4, 32, 32 + kMaxOutputLen);
    const std::string repo = fx->dir.sub("repo");
    write_seed_trtllm_model(repo, engine_dir, "tensorrt_llm", false);
    write_seed_trtllm_model(repo, engine_dir, "trtllm_stream", true);
    write_seed_trtllm_model(repo, engine_dir, "spare", false);

    auto engine = load_engine(engine_dir);
    KILN_CHECK(engine.ok(), engine.status().to_string());
    fx->engine = std::move(*engine);
    auto model = LlamaModel::load(fx->engine, fx->backend);
    KILN_CHECK(model.ok(), model.status().to_string());
    fx->model = std::move(*model);
    ExecutorConfig ec;
    ec.kv_cache.max_tokens = 4096;
    auto ex = Executor::create(*fx->model, fx->backend, ec);
    KILN_CHECK(ex.ok(), ex.status().to_string());
    fx->executor = std::move(*ex);

    ServerOptions o;
    o.model_repository = repo;
    o.max_request_bytes = kBodyCap;
    o.control_mode = ModelControlMode::kExplicit;  // the repository API is exercised
    o.load_models = {"*"};
    o.shutdown_timeout = std::chrono::seconds(5);
    auto core = ServerCore::create(o);
    KILN_CHECK(core.ok(), core.status().to_string());
    fx->core = std::move(*core);
    auto http = HttpFrontend::start(*fx->core, "127.0.0.1", 0);
    KILN_CHECK(http.ok(), http.status().to_string());
    fx->http = std::move(*http);
    auto metrics = HttpFrontend::start(*fx->core, "127.0.0.1", 0, /*metrics_only=*/true);
    KILN_CHECK(metrics.ok(), metrics.status().to_string());
    fx->metrics = std::move(*metrics);
  }

  static void TearDownTestSuite() {
    fx->http->shutdown();
    fx->metrics->shutdown();
    fx->core->shutdown(std::chrono::seconds(0));
    fx->executor->shutdown(false);
    delete fx;
    fx = nullptr;
  }
};

// ---- health, metadata, config
// -------------------------------------------------------------------------------------

TEST_F(HttpFrontendTest, HealthAndServerMetadata) {
  EXPECT_EQ(GET("/v2/health/live").status, 200u);
  EXPECT_EQ(GET("/v2/health/ready").status, 200u);
  Reply r = GET("/v2");
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.header("content-type"), "application/json");
  json j = r.body_json();
  EXPECT_EQ(j["name"], "kiln");
  EXPECT_EQ(j["version"], fx->core->version());
  EXPECT_NE(std::find(j["extensions"].begin(), j["extensions"].end(), "binary_tensor_data"),
            j["extensions"].end());
  EXPECT_EQ(Client(port()).request(http::verb::post, "/v2/health/live").status, 405u);
}

TEST_F(HttpFrontendTest, ModelMetadataReadyAndConfig) {
  for (const std::string base : {"/v2/models/tensorrt_llm", "/v2/models/tensorrt_llm/versions/1"}) {
    Reply r = GET(base);
    ASSERT_EQ(r.status, 200u) << base << ": " << r.body;
    json j = r.body_json();
    EXPECT_EQ(j["name"], "tensorrt_llm");
    EXPECT_EQ(j["versions"], json({"1"}));
    EXPECT_EQ(j["platform"], "tensorrtllm");  // the backend, as Triton reports it
    ASSERT_FALSE(j["inputs"].empty());
    EXPECT_EQ(j["inputs"][0]["name"], "input_ids");
    EXPECT_EQ(j["inputs"][0]["datatype"], "INT32");
    EXPECT_EQ(j["inputs"][0]["shape"],
              json({-1, -1, 1}));  // the batch dimension of max_batch_size 4, then [-1, 1]
    EXPECT_EQ(GET(base + "/ready").status, 200u);
  }
  Reply c = GET("/v2/models/tensorrt_llm/config");
  ASSERT_EQ(c.status, 200u) << c.body;
  json config = c.body_json();
  EXPECT_EQ(config["name"], "tensorrt_llm");
  EXPECT_EQ(config["max_batch_size"], 4);
  EXPECT_EQ(config["input"][0]["dims"], json({-1, 1}));
  EXPECT_EQ(config["parameters"]["gpt_model_type"]["string_value"], "V1");
  EXPECT_EQ(GET("/v2/models/trtllm_stream/config").body_json()["model_transaction_policy"]["decoupled"],
            true);

  EXPECT_EQ(GET("/v2/models/tensorrt_llm/versions/2").status, 404u);
  EXPECT_EQ(GET("/v2/models/tensorrt_llm/versions/one").status, 400u);
  Reply unknown = GET("/v2/models/nope");
  EXPECT_EQ(unknown.status, 404u);
  EXPECT_NE(unknown.body_json()["error"].get<std::string>().find("nope"), std::string::npos);
  EXPECT_EQ(GET("/v2/models/nope/ready").status, 404u);
  EXPECT_EQ(GET("/v2/models/nope/config").status, 404u);
}

// ---- infer
// ---------------------------------------------------------------------------------------------------------

TEST_F(HttpFrontendTest, InferJsonTensors) {
  const std::vector<int32_t> want =
      concat(kPrompt, expected_tokens(kPrompt, 5));  // the seed's config echoes the prompt
  json req = infer_json(kPrompt, 5);
  req["id"] = "req-7";
  Reply r = POST("/v2/models/tensorrt_llm/infer", req.dump());
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("inference-header-content-length"), "");
  json j = r.body_json();
  EXPECT_EQ(j["model_name"], "tensorrt_llm");
  EXPECT_EQ(j["model_version"], "1");
  EXPECT_EQ(j["id"], "req-7");
  const json* ids = find_output(j, "output_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ((*ids)["datatype"], "INT32");
  EXPECT_EQ((*ids)["shape"], json({1, 1, want.size()}));
  EXPECT_EQ((*ids)["data"], json(want));
  const json* len = find_output(j, "sequence_length");
  ASSERT_NE(len, nullptr);
  EXPECT_EQ((*len)["data"], json({want.size()}));

  // Only what is asked for; flat data is as good as nested.
  json flat = infer_json(kPrompt, 5);
  flat["inputs"][0]["data"] = kPrompt;
  flat["outputs"] = json::array({{{"name", "sequence_length"}}});
  j = POST("/v2/models/tensorrt_llm/versions/1/infer", flat.dump()).body_json();
  ASSERT_EQ(j["outputs"].size(), 1u) << j.dump();
  EXPECT_EQ(j["outputs"][0]["data"], json({want.size()}));
}

TEST_F(HttpFrontendTest, InferBinaryTensorsAsTritonclientSendsThem) {
  const std::vector<int32_t> want = concat(kPrompt, expected_tokens(kPrompt, 4));
  const int32_t n = static_cast<int32_t>(kPrompt.size());
  json head = {{"inputs",
                {{{"name", "input_ids"},
                  {"datatype", "INT32"},
                  {"shape", {1, n, 1}},
                  {"parameters", {{"binary_data_size", 4 * n}}}},
                 {{"name", "input_lengths"},
                  {"datatype", "INT32"},
                  {"shape", {1, 1}},
                  {"parameters", {{"binary_data_size", 4}}}},
                 {{"name", "request_output_len"}, {"datatype", "INT32"}, {"shape", {1, 1}}, {"data", {4}}}}},
               {"outputs",
                {{{"name", "output_ids"}, {"parameters", {{"binary_data", true}}}},
                 {{"name", "sequence_length"}, {"parameters", {{"binary_data", false}}}}}}};
  const std::string json_part = head.dump();
  std::string body = json_part;
  body.append(reinterpret_cast<const char*>(kPrompt.data()), kPrompt.size() * 4);
  body.append(reinterpret_cast<const char*>(&n), 4);
  Reply r = POST("/v2/models/tensorrt_llm/infer", body,
                 {{"Inference-Header-Content-Length", std::to_string(json_part.size())},
                  {"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(r.status, 200u) << r.body;
  const std::string hl = r.header("inference-header-content-length");
  ASSERT_FALSE(hl.empty());
  const size_t json_len = std::stoul(hl);
  json j = json::parse(r.body.substr(0, json_len));
  const json* ids = find_output(j, "output_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_FALSE(ids->contains("data"));
  ASSERT_EQ((*ids)["parameters"]["binary_data_size"], want.size() * 4);
  std::vector<int32_t> got(want.size());
  ASSERT_EQ(r.body.size(), json_len + want.size() * 4);
  std::memcpy(got.data(), r.body.data() + json_len, want.size() * 4);
  EXPECT_EQ(got, want);
  EXPECT_EQ((*find_output(j, "sequence_length"))["data"], json({want.size()}));

  // binary_data_output: every output binary when none is listed (what tritonclient asks when outputs=None).
  json all = infer_json(kPrompt, 4);
  all["parameters"] = {{"binary_data_output", true}};
  r = POST("/v2/models/tensorrt_llm/infer", all.dump());
  ASSERT_EQ(r.status, 200u);
  j = json::parse(r.body.substr(0, std::stoul(r.header("inference-header-content-length"))));
  for (const json& o : j["outputs"]) EXPECT_TRUE(o["parameters"].contains("binary_data_size")) << o.dump();

  // The binary part must match the sizes the JSON declares.
  r = POST("/v2/models/tensorrt_llm/infer", body + "xx",
           {{"Inference-Header-Content-Length", std::to_string(json_part.size())}});
  EXPECT_EQ(r.status, 400u);
  r = POST("/v2/models/tensorrt_llm/infer", body, {{"Inference-Header-Content-Length", "99999"}});
  EXPECT_EQ(r.status, 400u);
  r = POST("/v2/models/tensorrt_llm/infer", body, {{"Inference-Header-Content-Length", "12abc"}});
  EXPECT_EQ(r.status, 400u);
}

TEST_F(HttpFrontendTest, InferCompressedRequest) {
  const std::string text = infer_json(kPrompt, 2).dump();
  for (int window : {15 + 16, 15}) {  // gzip, then zlib ("deflate")
    z_stream zs{};
    ASSERT_EQ(deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string out(deflateBound(&zs, text.size()), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
    zs.avail_in = static_cast<uInt>(text.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    Reply r =
        POST("/v2/models/tensorrt_llm/infer", out, {{"Content-Encoding", window > 15 ? "gzip" : "deflate"}});
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_NE(find_output(r.body_json(), "output_ids"), nullptr);
  }
  EXPECT_EQ(POST("/v2/models/tensorrt_llm/infer", "not gzip", {{"Content-Encoding", "gzip"}}).status, 400u);
  EXPECT_EQ(POST("/v2/models/tensorrt_llm/infer", text, {{"Content-Encoding", "br"}}).status, 400u);
}

// Each bad request gets a clear 4xx with {"error": ...}; the server keeps serving.
TEST_F(HttpFrontendTest, BadRequests) {
  auto expect_error = [](const Reply& r, unsigned status, const std::string& fragment) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = r.body_json();
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_string()) << r.body;
    EXPECT_NE(j["error"].get<std::string>().find(fragment), std::string::npos) << j["error"];
  };
  const std::string infer = "/v2/models/tensorrt_llm/infer";
  expect_error(POST(infer, "{\"inputs\": [ {"), 400, "malformed JSON");
  expect_error(POST(infer, ""), 400, "no JSON body");
  expect_error(POST("/v2/models/nope/infer", infer_json(kPrompt, 2).dump()), 404, "nope");
  json missing = infer_json(kPrompt, 2);
  missing["inputs"].erase(2);
  expect_error(POST(infer, missing.dump()), 400, "request_output_len");
  json wrong_type = infer_json(kPrompt, 2);
  wrong_type["inputs"][1]["datatype"] = "FP32";
  expect_error(POST(infer, wrong_type.dump()), 400, "input_lengths");
  json unknown = infer_json(kPrompt, 2, json::array({scalar_input("no_such_input", "INT32", 1)}));
  expect_error(POST(infer, unknown.dump()), 400, "no_such_input");
  json zero_len = infer_json(kPrompt, 2);
  zero_len["inputs"][1]["data"] = {0};
  expect_error(POST(infer, zero_len.dump()), 400, "input_lengths");
  json too_long = infer_json(kPrompt, kMaxOutputLen + 1000);
  EXPECT_EQ(POST(infer, too_long.dump()).status, 400u);
  json count = infer_json(kPrompt, 2);
  count["inputs"][0]["data"] = {1, 2};
  expect_error(POST(infer, count.dump()), 400, "needs 6");
  expect_error(POST(infer, "{\"inputs\": [], \"inputs\": []}"), 400, "twice");

  // Model names are checked before anything else: no "../" reaches the core or the file system.
  Client c(port());
  expect_error(c.post("/v2/models/../infer", infer_json(kPrompt, 2).dump()), 400, "");
  expect_error(c.post("/v2/models/..%2F..%2Fetc/infer", "{}"), 400, "");
  expect_error(c.get("/v2/models/a%00b/config"), 400, "");
  expect_error(c.post("/v2/repository/models/..%2Fspare/load", ""), 400, "");
  expect_error(c.post("/v2/repository/models/../unload", ""), 400, "");
  expect_error(c.get("/v2/models/%zz"), 400, "escape");

  expect_error(GET("/v3/health/live"), 404, "not found");
  expect_error(GET("/v2/models/tensorrt_llm/nonsense"), 404, "not found");
  expect_error(Client(port()).request(http::verb::get, infer), 405, "method");
  expect_error(GET("/v2/systemsharedmemory/status"), 400, "shared memory");
  expect_error(POST("/v2/cudasharedmemory/region/r/register", "{}"), 400, "shared memory");
  EXPECT_EQ(GET("/v2/health/ready").status, 200u);
}

TEST_F(HttpFrontendTest, LimitsOnBodyHeaderAndNesting) {
  // A body over the cap: 413 as soon as Content-Length says so.
  {
    Client c(port());
    std::string big = infer_json(kPrompt, 2).dump();
    big.resize(kBodyCap + 1, ' ');
    Reply r = c.post("/v2/models/tensorrt_llm/infer", big);
    EXPECT_EQ(r.status, 413u) << r.error;
    EXPECT_NE(r.body_json()["error"].get<std::string>().find("larger than"), std::string::npos);
    EXPECT_FALSE(r.keep_alive);
  }
  // The same over the cap in chunked encoding, where only the running total shows it.
  {
    Client c(port());
    c.write_raw(
        "POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    const std::string piece(64 << 10, ' ');
    char size[16];
    std::snprintf(size, sizeof(size), "%zx\r\n", piece.size());
    for (uint64_t sent = 0; sent <= kBodyCap; sent += piece.size()) c.write_raw(size + piece + "\r\n");
    Reply r = c.read();
    EXPECT_EQ(r.status, 413u) << r.error;
  }
  // A header over the cap: 431.
  {
    Client c(port());
    Reply r = c.request(http::verb::get, "/v2/health/live", "", {{"X-Padding", std::string(20000, 'a')}});
    EXPECT_EQ(r.status, 431u) << r.error;
  }
  // 10^5-deep JSON: 400, without the stack ever seeing that depth; the server keeps serving.
  for (const std::string target : {"/v2/models/tensorrt_llm/infer", "/v2/models/tensorrt_llm/generate",
                                   "/v2/repository/index", "/v2/logging"}) {
    Reply r = POST(target, std::string(100000, '[') + std::string(100000, ']'));
    EXPECT_EQ(r.status, 400u) << target;
    EXPECT_NE(r.body.find("deeper than"), std::string::npos) << r.body;
  }
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100000, '}');
  EXPECT_EQ(POST("/v2/models/tensorrt_llm/infer", objects).status, 400u);
  // Malformed HTTP: 400 and the connection closes.
  Client c(port());
  c.write_raw("GET /v2 HTTP/1.1\r\nHost x\r\n\r\n");
  EXPECT_EQ(c.read().status, 400u);
  EXPECT_EQ(GET("/v2/health/live").status, 200u);
}

TEST_F(HttpFrontendTest, BodyInTinyChunks) {
  std::string body = infer_json(kPrompt, 2).dump();
  body.resize(100000, ' ');  // JSON allows trailing whitespace: 10^5 bytes
  // 10^5 chunks of chunked transfer encoding, one byte each.
  {
    std::string wire =
        "POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (char ch : body) {
      wire += "1\r\n";
      wire += ch;
      wire += "\r\n";
    }
    wire += "0\r\n\r\n";
    Client c(port());
    c.write_raw(wire);
    Reply r = c.read();
    ASSERT_EQ(r.status, 200u) << r.body << r.error;
    EXPECT_NE(find_output(r.body_json(), "output_ids"), nullptr);
  }
  // 10^5 separate one-byte writes of a Content-Length body.
  {
    Client c(port());
    c.write_raw("POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n");
    for (char ch : body) c.write_raw(std::string_view(&ch, 1));
    Reply r = c.read();
    ASSERT_EQ(r.status, 200u) << r.body << r.error;
    EXPECT_NE(find_output(r.body_json(), "output_ids"), nullptr);
  }
}

// ---- generate
// ------------------------------------------------------------------------------------------------------

TEST_F(HttpFrontendTest, Generate) {
  const std::vector<int32_t> want = concat(kPrompt, expected_tokens(kPrompt, 5));
  json body = {{"input_ids", kPrompt},
               {"input_lengths", kPrompt.size()},
               {"parameters", {{"request_output_len", 5}}},
               {"id", "g1"}};
  Reply r = POST("/v2/models/tensorrt_llm/generate", body.dump());
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  json j = r.body_json();
  EXPECT_EQ(j["model_name"], "tensorrt_llm");
  EXPECT_EQ(j["model_version"], "1");
  EXPECT_EQ(j["id"], "g1");
  EXPECT_EQ(j["output_ids"], json(want));
  EXPECT_EQ(j["sequence_length"], want.size());  // one element: a scalar

  Reply bad = POST("/v2/models/tensorrt_llm/generate", R"({"text_input": "hi", "max_tokens": 3})");
  EXPECT_EQ(bad.status, 400u);
  EXPECT_NE(bad.body.find("is not an input of model 'tensorrt_llm'"), std::string::npos) << bad.body;
  EXPECT_EQ(POST("/v2/models/tensorrt_llm/generate", R"({"input_ids": [1, 2]})").status,
            400u);  // missing inputs
  EXPECT_EQ(POST("/v2/models/nope/generate", "{}").status, 404u);
  // A decoupled model streams: plain generate is refused, clearly.
  EXPECT_EQ(POST("/v2/models/trtllm_stream/generate", body.dump()).status, 400u);
}

TEST_F(HttpFrontendTest, GenerateStreamEvents) {
  const std::vector<int32_t> generated = expected_tokens(kPrompt, 6);
  json body = {{"input_ids", kPrompt},
               {"input_lengths", kPrompt.size()},
               {"request_output_len", 6},
               {"streaming", true}};
  Reply r = POST("/v2/models/trtllm_stream/generate_stream", body.dump());
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.header("content-type"), "text/event-stream; charset=utf-8");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  const auto events = sse_events(r.body);
  ASSERT_GE(events.size(), 2u) << r.body;
  std::vector<int32_t> tokens;
  for (const std::string& e : events) {
    json j = json::parse(e);
    EXPECT_EQ(j["model_name"], "trtllm_stream");
    ASSERT_FALSE(j.contains("error")) << e;
    const json& ids = j["output_ids"];
    if (ids.is_array())
      for (const json& t : ids) tokens.push_back(t.get<int32_t>());
    else
      tokens.push_back(ids.get<int32_t>());
  }
  EXPECT_EQ(tokens, generated);  // a stream carries the new tokens, step by step

  // A model that is not decoupled answers generate_stream with one event holding everything.
  Reply one = POST("/v2/models/tensorrt_llm/generate_stream",
                   json({{"input_ids", kPrompt}, {"input_lengths", 6}, {"request_output_len", 6}}).dump());
  ASSERT_EQ(one.status, 200u);
  const auto single = sse_events(one.body);
  ASSERT_EQ(single.size(), 1u) << one.body;
  EXPECT_EQ(json::parse(single[0])["output_ids"], json(concat(kPrompt, generated)));

  // Refused before it starts: a plain JSON error, not an event stream.
  Reply bad = POST("/v2/models/trtllm_stream/generate_stream", R"({"input_ids": [1], "bogus": 1})");
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.header("content-type"), "application/json");
  bad = POST("/v2/models/trtllm_stream/generate_stream",
             json({{"input_ids", kPrompt}, {"input_lengths", 0}, {"request_output_len", 6}}).dump());
  EXPECT_EQ(bad.status, 400u);
}

// ---- disconnects
// ---------------------------------------------------------------------------------------------------

bool wait_for(const std::function<bool()>& f, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

// A metric line's value (`name{labels} value`), or -1.
double metric(const std::string& series) {
  const std::string text = fx->core->metrics_text();
  const size_t at = text.find(series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 1));
}

// After the client hung up: the call ends (its final chunk is counted in the output-length histogram) well
// short of the kMaxOutputLen tokens that min_length forces, and nothing is left running.
void expect_cancelled(const std::string& model, double count0, double sum0) {
  const std::string labels = "{model=\"" + model + "\",version=\"1\"}";
  EXPECT_TRUE(wait_for([&] { return metric("nv_llm_output_token_len_count" + labels) == count0 + 1; }, 30s));
  EXPECT_LT(metric("nv_llm_output_token_len_sum" + labels) - sum0, kMaxOutputLen);
  EXPECT_TRUE(wait_for([&] { return metric("nv_inference_pending_request_count" + labels) == 0; }, 5s));
  EXPECT_EQ(
      metric("nv_trt_llm_request_metrics{model=\"" + model + "\",version=\"1\",request_type=\"active\"}"), 0);
}

TEST_F(HttpFrontendTest, ClientLeavingMidStreamCancelsTheCall) {
  const std::string labels = "{model=\"trtllm_stream\",version=\"1\"}";
  const double count0 = metric("nv_llm_output_token_len_count" + labels);
  const double sum0 = metric("nv_llm_output_token_len_sum" + labels);
  ASSERT_GE(count0, 0) << fx->core->metrics_text();
  {
    json body = {{"input_ids", kPrompt},
                 {"input_lengths", kPrompt.size()},
                 {"request_output_len", kMaxOutputLen},
                 {"min_length", kMaxOutputLen},
                 {"streaming", true}};
    Client c(port());
    c.send(http::verb::post, "/v2/models/trtllm_stream/generate_stream", body.dump());
    // Read until the first event has arrived (generation is under way), then hang up.
    std::string got;
    char buf[4096];
    while (got.find("data: ") == std::string::npos) {
      beast::error_code ec;
      const size_t n = c.socket().read_some(asio::buffer(buf), ec);
      ASSERT_FALSE(ec) << ec.message();
      got.append(buf, n);
    }
  }
  expect_cancelled("trtllm_stream", count0, sum0);
}

TEST_F(HttpFrontendTest, ClientLeavingMidInferCancelsTheCall) {
  const std::string labels = "{model=\"tensorrt_llm\",version=\"1\"}";
  const double count0 = metric("nv_llm_output_token_len_count" + labels);
  const double sum0 = metric("nv_llm_output_token_len_sum" + labels);
  ASSERT_GE(count0, 0) << fx->core->metrics_text();
  {
    json req =
        infer_json(kPrompt, kMaxOutputLen, json::array({scalar_input("min_length", "INT32", kMaxOutputLen)}));
    Client c(port());
    c.send(http::verb::post, "/v2/models/tensorrt_llm/infer", req.dump());
    ASSERT_TRUE(wait_for([&] { return metric("nv_inference_pending_request_count" + labels) == 1; }, 10s));
  }
  expect_cancelled("tensorrt_llm", count0, sum0);
}

// ---- connections
// ---------------------------------------------------------------------------------------------------

TEST_F(HttpFrontendTest, KeepAliveAndPipelining) {
  Client c(port());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(c.get("/v2/health/live").status, 200u);
    Reply r = c.post("/v2/models/tensorrt_llm/infer", infer_json(kPrompt, 2).dump());
    EXPECT_EQ(r.status, 200u);
    EXPECT_TRUE(r.keep_alive);
    EXPECT_EQ(c.post("/v2/models/tensorrt_llm/generate",
                     json({{"input_ids", kPrompt}, {"input_lengths", 6}, {"request_output_len", 2}}).dump())
                  .status,
              200u);
    EXPECT_EQ(c.get("/v2/models/nope").status, 404u);  // an error keeps the connection too
  }
  // Three requests in one write: three responses, in order.
  const std::string infer_body = infer_json(kPrompt, 2).dump();
  c.write_raw(
      "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " +
      std::to_string(infer_body.size()) + "\r\n\r\n" + infer_body + "GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(c.read().status, 200u);
  Reply r = c.read();
  EXPECT_EQ(r.status, 200u);
  EXPECT_NE(find_output(r.body_json(), "output_ids"), nullptr);
  EXPECT_EQ(c.read().body_json()["name"], "kiln");

  // Expect: 100-continue (curl sends it for large bodies).
  Client e(port());
  e.write_raw(
      "POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
      std::to_string(infer_body.size()) + "\r\n\r\n");
  Reply cont = e.read();
  EXPECT_EQ(cont.status, 100u);
  e.write_raw(infer_body);
  EXPECT_EQ(e.read().status, 200u);

  // HTTP/1.0 without keep-alive: answered, then closed.
  Client old(port());
  old.write_raw("GET /v2/health/live HTTP/1.0\r\n\r\n");
  Reply r10 = old.read();
  EXPECT_EQ(r10.status, 200u);
  EXPECT_TRUE(old.closed_within(2s));
}

TEST_F(HttpFrontendTest, ManyConcurrentConnections) {
  constexpr int kClients = 48;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      Client c(port());
      const std::vector<int32_t> prompt = {1, 5 + i, 9};
      if (c.get("/v2/health/ready").status != 200) return;
      Reply r = c.post(i % 2 ? "/v2/models/tensorrt_llm/infer" : "/v2/models/trtllm_stream/generate_stream",
                       i % 2 ? infer_json(prompt, 3).dump()
                             : json({{"input_ids", prompt},
                                     {"input_lengths", 3},
                                     {"request_output_len", 3},
                                     {"streaming", true}})
                                   .dump());
      if (r.status == 200) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients);
}

TEST_F(HttpFrontendTest, IdleAndSlowClientsTimeOut) {
  HttpOptions o;
  o.idle_timeout = 300ms;
  o.header_timeout = 300ms;
  o.body_timeout = 300ms;
  auto fe = HttpFrontend::start(*fx->core, "127.0.0.1", 0, false, o);
  ASSERT_TRUE(fe.ok()) << fe.status().to_string();
  const int p = (*fe)->port();
  {
    Client idle(p);
    EXPECT_TRUE(idle.closed_within(3s));
  }
  {
    Client slow_header(p);
    slow_header.write_raw("GET /v2 HTTP/1.1\r\nHost");
    EXPECT_TRUE(slow_header.closed_within(3s));
  }
  {
    Client slow_body(p);
    slow_body.write_raw("POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{");
    EXPECT_TRUE(slow_body.closed_within(3s));
  }
  {
    Client kept(p);  // after a response, the keep-alive wait is the idle timeout
    EXPECT_EQ(kept.get("/v2/health/live").status, 200u);
    EXPECT_TRUE(kept.closed_within(3s));
  }
  (*fe)->shutdown();
}

TEST_F(HttpFrontendTest, ShutdownClosesConnectionsAndStopsListening) {
  auto fe = HttpFrontend::start(*fx->core, "127.0.0.1", 0);
  ASSERT_TRUE(fe.ok());
  const int p = (*fe)->port();
  Client c(p);
  EXPECT_EQ(c.get("/v2/health/live").status, 200u);
  (*fe)->shutdown(std::chrono::seconds(1));
  EXPECT_TRUE(c.closed_within(2s));
  EXPECT_THROW(Client{p}, boost::system::system_error);
}

// ---- statistics, repository, logging, metrics
// ----------------------------------------------------------------------

TEST_F(HttpFrontendTest, Statistics) {
  ASSERT_EQ(POST("/v2/models/tensorrt_llm/infer", infer_json(kPrompt, 2).dump()).status, 200u);
  Reply r = GET("/v2/models/tensorrt_llm/stats");
  ASSERT_EQ(r.status, 200u);
  json j = r.body_json();
  ASSERT_EQ(j["model_stats"].size(), 1u);
  const json& s = j["model_stats"][0];
  EXPECT_EQ(s["name"], "tensorrt_llm");
  EXPECT_EQ(s["version"], "1");
  EXPECT_GE(s["inference_stats"]["success"]["count"].get<uint64_t>(), 1u);
  EXPECT_GT(s["inference_stats"]["success"]["ns"].get<uint64_t>(), 0u);
  EXPECT_GE(s["inference_count"].get<uint64_t>(), 1u);
  EXPECT_EQ(GET("/v2/models/tensorrt_llm/versions/1/stats").status, 200u);
  json all = GET("/v2/models/stats").body_json();
  EXPECT_GE(all["model_stats"].size(), 2u);
  EXPECT_EQ(GET("/v2/models/nope/stats").status, 404u);
}

TEST_F(HttpFrontendTest, RepositoryIndexLoadUnload) {
  Reply r = POST("/v2/repository/index", "");
  ASSERT_EQ(r.status, 200u) << r.body;
  json index = r.body_json();
  ASSERT_TRUE(index.is_array());
  std::map<std::string, std::string> state;
  for (const json& m : index) state[m["name"]] = m["state"];
  EXPECT_EQ(state["tensorrt_llm"], "READY");
  EXPECT_EQ(state["spare"], "READY");

  ASSERT_EQ(POST("/v2/repository/models/spare/unload", "").status, 200u);
  EXPECT_EQ(GET("/v2/models/spare/ready").status, 404u);
  json ready_only = POST("/v2/repository/index", R"({"ready": true})").body_json();
  for (const json& m : ready_only) EXPECT_NE(m["name"], "spare");
  json everything = POST("/v2/repository/index", R"({"ready": false})").body_json();
  bool listed = false;
  for (const json& m : everything)
    if (m["name"] == "spare") {
      listed = true;
      EXPECT_EQ(m["state"], "UNAVAILABLE");
    }
  EXPECT_TRUE(listed);

  ASSERT_EQ(POST("/v2/repository/models/spare/load", "{}").status, 200u);
  EXPECT_EQ(GET("/v2/models/spare/ready").status, 200u);
  EXPECT_EQ(POST("/v2/models/spare/infer", infer_json(kPrompt, 2).dump()).status, 200u);

  EXPECT_EQ(POST("/v2/repository/models/spare/load", R"({"parameters": {"config": "{}"}})").status, 400u);
  EXPECT_EQ(
      POST("/v2/repository/models/spare/unload", R"({"parameters": {"unload_dependents": "x"}})").status,
      400u);
  EXPECT_EQ(POST("/v2/repository/models/not_there/load", "").status, 404u);
  EXPECT_EQ(POST("/v2/repository/index", R"({"ready": 1})").status, 400u);
  EXPECT_EQ(GET("/v2/repository/index").status, 405u);
}

TEST_F(HttpFrontendTest, LoggingSettings) {
  Reply r = GET("/v2/logging");
  ASSERT_EQ(r.status, 200u);
  json settings = r.body_json();
  EXPECT_EQ(settings["log_verbose_level"], 0);
  settings["log_verbose_level"] = 1;
  r = POST("/v2/logging",
           settings.dump());  // tritonclient's update_log_settings sends back the whole document
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.body_json()["log_verbose_level"], 1);
  EXPECT_EQ(fx->core->log_verbose(), 1);
  Reply file = POST("/v2/logging", R"({"log_file": "/tmp/kiln.log"})");
  EXPECT_EQ(file.status, 400u);
  EXPECT_NE(file.body.find("log file"), std::string::npos);
  EXPECT_EQ(POST("/v2/logging", R"({"log_info": false})").status, 400u);
  EXPECT_EQ(POST("/v2/logging", R"({"log_verbose_level": 0})").body_json()["log_verbose_level"], 0);
  EXPECT_EQ(fx->core->log_verbose(), 0);
}

TEST_F(HttpFrontendTest, MetricsPort) {
  Client c(fx->metrics->port());
  Reply r = c.get("/metrics");
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4");
  EXPECT_NE(r.body.find("nv_inference_request_success"), std::string::npos);
  EXPECT_NE(r.body.find("model=\"tensorrt_llm\""), std::string::npos);
  EXPECT_EQ(c.get("/v2/health/live").status, 404u);  // this port serves only the metrics
  EXPECT_EQ(GET("/metrics").status, 404u);           // and the main port does not serve them
}

}  // namespace
}  // namespace kiln::server
