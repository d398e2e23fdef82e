#include "server/http_frontend.h"

#include <zlib.h>

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "server/http_json.h"
#include "server/model_config_loader.h"  // check_model_name
#include "server/openai_api.h"

namespace kiln::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxPipelinedBytes = 64
                                      << 10;  // read ahead while a call runs, then stop watching the socket
constexpr size_t kMaxDrainBytes = 8 << 20;    // discarded after a final response, so the client sees it
constexpr std::chrono::seconds kLinger{2};

http::status http_status(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return http::status::ok;
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnimplemented:
    case StatusCode::kFailedPrecondition:  // e.g. a plain infer on a decoupled model: the client's to change
      return http::status::bad_request;
    case StatusCode::kNotFound:
      return http::status::not_found;
    case StatusCode::kUnavailable:
    case StatusCode::kResourceExhausted:
    case StatusCode::kDeadlineExceeded:  // queued past the request's timeout: retryable, as an overload
      return http::status::service_unavailable;
    default:
      return http::status::internal_server_error;
  }
}

// One path segment, %XX-decoded; nullopt for a malformed escape.
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int v = 0;
    auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (ec != std::errc() || p != s.data() + i + 3) return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// A gzip or zlib ("deflate") request body, inflated up to `cap` bytes (tritonclient's request compression).
Result<std::string> inflate_body(std::string_view in, uint64_t cap, bool* too_large) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return internal_error("zlib initialisation failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    const size_t old = out.size();
    if (old >= cap) {
      *too_large = true;
      break;
    }
    const size_t grow = std::min<uint64_t>(cap - old, 1 << 20);
    out.resize(old + grow);
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + old);
    zs.avail_out = static_cast<uInt>(grow);
    rc = inflate(&zs, Z_NO_FLUSH);
    out.resize(old + grow - zs.avail_out);
    if (rc != Z_OK && rc != Z_STREAM_END) break;
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      rc = Z_DATA_ERROR;  // input ended before the stream did
      break;
    }
  }
  inflateEnd(&zs);
  if (*too_large) return invalid_argument("the decompressed request body is larger than the limit");
  if (rc != Z_STREAM_END) return invalid_argument("the request body is not valid gzip/deflate data");
  return out;
}

std::string chunk(std::string_view data) {
  char size[20];
  const int n = std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  std::string c(size, static_cast<size_t>(n));
  c.append(data);
  c += "\r\n";
  return c;
}

enum class CallKind { kInfer, kGenerate, kGenerateStream, kOpenAi };

}  // namespace

class Session;

struct HttpFrontend::Impl {
  Impl(ServerCore& c, bool m, const HttpOptions& o) : core(c), metrics_only(m), options(o), acceptor(asio::make_strand(ioc)) {}

  void accept();
  void register_session(const std::shared_ptr<Session>& s);
  void unregister_session(Session* s);
  size_t session_count() {
    std::lock_guard<std::mutex> lock(mu);
    return sessions.size();
  }
  template <typename F>
  void for_each_session(F f);
  bool wait_for_sessions(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return sessions.empty(); });
  }

  std::weak_ptr<Impl> self;  // for sessions, which hold a reference
  ServerCore& core;
  const bool metrics_only;
  const HttpOptions options;
  std::atomic<bool> stopping{false};

  // Declared before the io_context: sessions destroyed with it still unregister here.
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  asio::io_context ioc;
  tcp::acceptor acceptor;  // on its own strand: accept handlers and stop_accepting never run at once
  std::optional<asio::steady_timer> accept_retry;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  asio::thread_pool blocking{1};  // model load/unload: slow, so not on an io thread
  int port = 0;
  std::mutex shutdown_mu;
  bool shut_down = false;
};

// One connection. Every member is touched only on the connection's strand (`executor_`).
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<HttpFrontend::Impl> impl, tcp::socket socket)
      : impl_(std::move(impl)),
        socket_(std::move(socket)),
        executor_(socket_.get_executor()),
        timer_(executor_) {}

  ~Session() {
    if (call_active_ && cancel_) cancel_();
    impl_->unregister_session(this);
  }

  const tcp::socket::executor_type& executor() const { return executor_; }

  void start() { read_request(); }

  // Shutdown: an idle connection closes now, a busy one after its response.
  void begin_shutdown() {
    if (phase_ == Phase::kIdle) close();
  }
  void force_close() { close(); }

 private:
  enum class Phase { kIdle, kReading, kBusy, kClosing };

  // ---- reading a request ----

  void read_request() {
    if (closed_) return;
    if (impl_->stopping) return close();
    parser_.emplace();
    parser_->header_limit(
        static_cast<uint32_t>(std::min<uint64_t>(impl_->core.options().max_header_bytes, UINT32_MAX)));
    parser_->body_limit(impl_->core.options().max_request_bytes);
    phase_ = buffer_.size() ? Phase::kReading : Phase::kIdle;
    arm(phase_ == Phase::kIdle ? impl_->options.idle_timeout : impl_->options.header_timeout);
    read_header_some();
  }

  void read_header_some() {
    reading_ = true;
    http::async_read_some(socket_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            self->reading_ = false;
                            self->on_header_some(ec);
                          });
  }

  void on_header_some(beast::error_code ec) {
    if (closed_) return;
    if (ec) return on_read_error(ec);
    if (!parser_->is_header_done()) {
      if (phase_ == Phase::kIdle) {  // the first bytes of a request: the header must now arrive promptly
        phase_ = Phase::kReading;
        arm(impl_->options.header_timeout);
      }
      return read_header_some();
    }
    phase_ = Phase::kReading;
    keep_alive_ = parser_->get().keep_alive();
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      arm(impl_->options.write_timeout);
      asio::async_write(socket_, asio::buffer(kContinue),
                        [self = shared_from_this()](beast::error_code ec, size_t) {
                          if (self->closed_) return;
                          if (ec) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    arm(impl_->options.body_timeout);
    reading_ = true;
    http::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->reading_ = false;
      if (self->closed_) return;
      if (ec) return self->on_read_error(ec);
      self->disarm();
      self->phase_ = Phase::kBusy;
      self->handle(self->parser_->release());
    });
  }

  void on_read_error(beast::error_code ec) {
    const auto& options = impl_->core.options();
    if (ec == http::error::header_limit)
      return respond_fatal(
          http::status::request_header_fields_too_large,
          "the request header is larger than " + std::to_string(options.max_header_bytes) + " bytes");
    if (ec == http::error::body_limit)
      return respond_fatal(
          http::status::payload_too_large,
          "the request body is larger than " + std::to_string(options.max_request_bytes) + " bytes");
    // A client that closes between requests (end_of_stream), leaves mid-request or times out: nothing to
    // answer.
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message)
      return respond_fatal(http::status::bad_request, "malformed HTTP request: " + ec.message());
    close();
  }

  // ---- routing ----

  void handle(http::request<http::string_body> req) {
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    if (impl_->core.log_verbose() >= 1)
      std::fprintf(stderr, "kiln http: %s %.*s\n", std::string(req.method_string()).c_str(),
                   static_cast<int>(std::min<size_t>(path.size(), 200)), path.data());
    if (impl_->metrics_only) {
      if (path != "/metrics")
        return respond_error(http::status::not_found, "not found; this port serves GET /metrics");
      if (req.method() != http::verb::get) return method_not_allowed();
      return respond(http::status::ok, impl_->core.metrics_text(), "text/plain; version=0.0.4");
    }
    std::vector<std::string> seg;
    if (path.empty() || path[0] != '/') return respond_error(http::status::not_found, "not found");
    for (size_t i = 1; i <= path.size();) {
      size_t j = path.find('/', i);
      if (j == std::string_view::npos) j = path.size();
      auto s = percent_decode(path.substr(i, j - i));
      if (!s) return respond_error(http::status::bad_request, "malformed %-escape in the URL path");
      seg.push_back(std::move(*s));
      i = j + 1;
    }
    if (!seg.empty() && seg[0] == "v1") return route_openai(req, path);
    if (seg.empty() || seg[0] != "v2") return respond_error(http::status::not_found, "not found");
    const http::verb method = req.method();
    auto only = [&](http::verb v) { return method == v; };

    if (seg.size() == 1) {
      if (!only(http::verb::get)) return method_not_allowed();
      return respond_json(server_metadata_json(impl_->core));
    }
    const std::string& area = seg[1];
    if (area == "health" && seg.size() == 3 && (seg[2] == "live" || seg[2] == "ready")) {
      if (!only(http::verb::get)) return method_not_allowed();
      if (seg[2] == "live" || impl_->core.ready()) return respond(http::status::ok, "", "application/json");
      return respond_error(http::status::service_unavailable, "the server is not ready");
    }
    if (area == "models") {
      if (seg.size() == 3 && seg[2] == "stats") {
        if (!only(http::verb::get)) return method_not_allowed();
        return respond_stats("", "");
      }
      if (seg.size() < 3) return respond_error(http::status::not_found, "not found");
      return handle_model(req, seg);
    }
    if (area == "repository") return handle_repository(req, seg);
    if (area == "logging" && seg.size() == 2) return handle_logging(req);
    if (area == "systemsharedmemory" || area == "cudasharedmemory")
      return respond_error(http::status::bad_request,
                           "shared memory is not supported by kiln; send tensors in the request body");
    if (area == "trace") return respond_error(http::status::bad_request, "tracing is not supported by kiln");
    return respond_error(http::status::not_found, "not found");
  }

  void handle_model(http::request<http::string_body>& req, const std::vector<std::string>& seg) {
    const std::string& name = seg[2];
    // Before anything else, so that "../x" never reaches the core or the file system.
    if (Status s = check_model_name(name); !s.ok()) return respond_error(s);
    std::string version;
    size_t rest = 3;
    if (seg.size() > rest && seg[rest] == "versions") {
      if (seg.size() < rest + 2) return respond_error(http::status::not_found, "not found");
      version = seg[rest + 1];
      if (!parse_u64(version) || version.size() > 19)
        return respond_error(http::status::bad_request,
                             "a model version is a number; got '" + version.substr(0, 40) + "'");
      rest += 2;
    }
    const std::string action = seg.size() > rest ? seg[rest] : "";
    if (seg.size() > rest + 1) {
      if (action == "trace")
        return respond_error(http::status::bad_request, "tracing is not supported by kiln");
      return respond_error(http::status::not_found, "not found");
    }
    ServerCore& core = impl_->core;
    const http::verb method = req.method();
    if (action.empty() || action == "ready" || action == "config" || action == "stats") {
      if (method != http::verb::get) return method_not_allowed();
      if (action.empty()) {
        auto md = core.model_metadata(name, version);
        if (!md.ok()) return respond_error(md.status());
        return respond_json(model_metadata_json(*md));
      }
      if (action == "ready") {
        auto ready = core.model_ready(name, version);
        if (!ready.ok()) return respond_error(ready.status());
        if (!*ready)
          return respond_error(http::status::service_unavailable, "model '" + name + "' is not ready");
        return respond(http::status::ok, "", "application/json");
      }
      if (action == "config") {
        auto config = core.model_config(name, version);
        if (!config.ok()) return respond_error(config.status());
        auto text = model_config_json(**config);
        if (!text.ok()) return respond_error(text.status());
        return respond_json(std::move(*text));
      }
      return respond_stats(name, version);
    }
    if (action == "infer" || action == "generate" || action == "generate_stream") {
      if (method != http::verb::post) return method_not_allowed();
      auto body = request_body(req);
      if (!body.ok()) return;  // answered
      const int depth = core.options().max_json_depth;
      if (action == "infer") {
        std::optional<uint64_t> json_length;
        if (auto h = req.find("Inference-Header-Content-Length"); h != req.end()) {
          json_length = parse_u64(std::string_view(h->value().data(), h->value().size()));
          if (!json_length)
            return respond_error(http::status::bad_request,
                                 "Inference-Header-Content-Length must be a byte count");
        }
        auto request = parse_infer_request(*body, json_length, depth);
        if (!request.ok()) return respond_error(request.status());
        infer_request_ = std::move(*request);
        InferCall call = std::move(infer_request_.call);
        call.model = name;
        call.version = version;
        call.stream = false;
        return start_call(std::move(call), CallKind::kInfer);
      }
      auto md = core.model_metadata(name, version);
      if (!md.ok()) return respond_error(md.status());
      auto call = parse_generate_request(*body, *md, depth);
      if (!call.ok()) return respond_error(call.status());
      call->model = name;
      call->version = version;
      call->stream = action == "generate_stream";
      return start_call(std::move(*call), call->stream ? CallKind::kGenerateStream : CallKind::kGenerate);
    }
    return respond_error(http::status::not_found, "not found");
  }

  // The OpenAI API (openai_api.h): answered at once, or a call whose outputs come through on_openai().
  void route_openai(http::request<http::string_body>& req, std::string_view path) {
    auto body = request_body(req);
    if (!body.ok()) return;  // answered
    const uint64_t seq = ++call_seq_;
    call_kind_ = CallKind::kOpenAi;
    stream_started_ = stream_done_ = false;
    std::weak_ptr<Session> weak = weak_from_this();
    OpenAiEmit emit = [weak, seq](OpenAiOutput out) {
      // Any thread: hand the output to the connection's strand; a connection already gone drops it.
      if (auto self = weak.lock())
        asio::post(self->executor_,
                   [self, seq, o = std::move(out)]() mutable { self->on_openai(seq, std::move(o)); });
    };
    call_active_ = true;
    self_hold_ = shared_from_this();  // the call keeps the connection alive until its final output
    OpenAiStart started = handle_openai(impl_->core, std::string_view(req.method_string().data(), req.method_string().size()),
                                        path, *body, std::move(emit));
    if (started.immediate) {
      call_active_ = false;
      self_hold_.reset();
      return respond(static_cast<http::status>(started.immediate->status), std::move(started.immediate->body),
                     "application/json");
    }
    cancel_ = std::move(started.cancel);
    watch();  // notices a client that goes away (-> cancel) while the call runs
  }

  void on_openai(uint64_t seq, OpenAiOutput out) {
    if (!call_active_ || seq != call_seq_ || closed_) return;
    if (out.final) {
      call_active_ = false;
      cancel_ = nullptr;
    }
    if (out.sse) {
      sse_event(static_cast<http::status>(out.status), out.body, out.final);
    } else {
      respond(static_cast<http::status>(out.status), std::move(out.body), "application/json");
    }
    if (out.final) self_hold_.reset();
  }

  void handle_repository(http::request<http::string_body>& req, const std::vector<std::string>& seg) {
    if (seg.size() >= 4 && seg[2] == "models") {
      if (Status s = check_model_name(seg[3]); !s.ok()) return respond_error(s);
    }
    const bool index = seg.size() == 3 && seg[2] == "index";
    const bool control = seg.size() == 5 && seg[2] == "models" && (seg[4] == "load" || seg[4] == "unload");
    if (!index && !control) return respond_error(http::status::not_found, "not found");
    if (req.method() != http::verb::post) return method_not_allowed();
    auto body = request_json(req);
    if (!body.ok()) return;  // answered
    if (!body->is_object())
      return respond_error(http::status::bad_request, "the request body must be a JSON object");
    if (index) {
      bool ready = false;
      for (const auto& [key, v] : body->items()) {
        if (key != "ready")
          return respond_error(http::status::bad_request, "unknown field '" + key.substr(0, 60) + "'");
        if (!v.is_boolean()) return respond_error(http::status::bad_request, "'ready' must be a boolean");
        ready = v.get<bool>();
      }
      return respond_json(repository_index_json(impl_->core.repository_index(ready)));
    }
    const bool load = seg[4] == "load";
    for (const auto& [key, v] : body->items()) {
      if (key != "parameters")
        return respond_error(http::status::bad_request, "unknown field '" + key.substr(0, 60) + "'");
      if (!v.is_object())
        return respond_error(http::status::bad_request, "'parameters' must be a JSON object");
      for (const auto& [pk, pv] : v.items()) {
        if (!load && pk == "unload_dependents" && pv.is_boolean()) continue;
        return respond_error(http::status::bad_request,
                             load ? "load parameters (config overrides, files) are not supported by kiln"
                                  : "unknown unload parameter '" + pk.substr(0, 60) + "'");
      }
    }
    // Loading builds an executor and unloading drains one: run them off the io threads.
    asio::post(impl_->blocking, [self = shared_from_this(), name = seg[3], load] {
      Status s = load ? self->impl_->core.load_model(name) : self->impl_->core.unload_model(name);
      asio::post(self->executor_, [self, s] {
        if (self->closed_) return;
        if (!s.ok()) return self->respond_error(s);
        self->respond(http::status::ok, "", "application/json");
      });
    });
  }

  void handle_logging(http::request<http::string_body>& req) {
    ServerCore& core = impl_->core;
    if (req.method() == http::verb::post) {
      auto body = request_json(req);
      if (!body.ok()) return;  // answered
      auto level = apply_log_settings(*body, core.log_verbose());
      if (!level.ok()) return respond_error(level.status());
      core.set_log_verbose(*level);
    } else if (req.method() != http::verb::get) {
      return method_not_allowed();
    }
    respond_json(log_settings_json(core.log_verbose()));
  }

  void respond_stats(const std::string& name, const std::string& version) {
    auto stats = impl_->core.statistics(name, version);
    if (!stats.ok()) return respond_error(stats.status());
    respond_json(model_stats_json(*stats));
  }

  // The body, inflated when the client compressed it (Content-Encoding: gzip | deflate); on an error the
  // response has been sent and the Result says so.
  Result<std::string> request_body(http::request<http::string_body>& req) {
    const auto encoding = req[http::field::content_encoding];
    if (encoding.empty() || beast::iequals(encoding, "identity")) return std::move(req.body());
    if (!beast::iequals(encoding, "gzip") && !beast::iequals(encoding, "deflate")) {
      respond_error(http::status::bad_request, "unsupported Content-Encoding (gzip, deflate or identity)");
      return cancelled("answered");
    }
    bool too_large = false;
    auto body = inflate_body(req.body(), impl_->core.options().max_request_bytes, &too_large);
    if (!body.ok()) {
      if (too_large) {
        respond_fatal(http::status::payload_too_large,
                      "the decompressed request body is larger than " +
                          std::to_string(impl_->core.options().max_request_bytes) + " bytes");
      } else {
        respond_error(body.status());
      }
      return cancelled("answered");
    }
    return body;
  }

  // An optional JSON body (empty = {}); on an error the response has been sent.
  Result<json> request_json(http::request<http::string_body>& req) {
    auto body = request_body(req);
    if (!body.ok()) return body.status();
    if (body->empty()) return json::object();
    auto j = parse_request_json(*body, impl_->core.options().max_json_depth);
    if (!j.ok()) {
      respond_error(j.status());
      return cancelled("answered");
    }
    return j;
  }

  // ---- inference calls ----

  void start_call(InferCall call, CallKind kind) {
    const uint64_t seq = ++call_seq_;
    call_kind_ = kind;
    call_model_ = call.model;
    call_version_ = call.version;
    first_error_ = Status();
    output_replies_ = 0;
    unary_reply_.reset();
    stream_started_ = stream_done_ = false;
    call_active_ = true;
    std::weak_ptr<Session> weak = weak_from_this();
    ReplyFn on_reply = [weak, seq](InferReply reply) {
      // Engine thread: hand the reply to the connection's strand; a connection already gone drops it.
      if (auto self = weak.lock())
        asio::post(self->executor_,
                   [self, seq, r = std::move(reply)]() mutable { self->on_reply(seq, std::move(r)); });
    };
    self_hold_ = shared_from_this();  // the call keeps the connection alive until its final reply
    auto cancel = impl_->core.infer(std::move(call), std::move(on_reply));
    if (!cancel.ok()) {
      call_active_ = false;
      self_hold_.reset();
      return respond_error(cancel.status());
    }
    cancel_ = std::move(*cancel);
    watch();  // notices a client that goes away (-> cancel) while the call runs
  }

  void on_reply(uint64_t seq, InferReply reply) {
    if (!call_active_ || seq != call_seq_ || closed_) return;
    const bool final = reply.final;
    if (reply.model.empty()) reply.model = call_model_;
    if (reply.version.empty()) reply.version = call_version_.empty() ? "1" : call_version_;
    if (final) {
      call_active_ = false;
      cancel_ = nullptr;
    }
    if (call_kind_ == CallKind::kGenerateStream) {
      stream_reply(std::move(reply));
    } else {
      if (!reply.error.ok()) {
        if (first_error_.ok()) first_error_ = reply.error;
      } else if (!reply.outputs.empty() && ++output_replies_ == 1) {
        unary_reply_ = std::move(reply);
      }
      if (final) finish_unary();
    }
    if (final) self_hold_.reset();
  }

  void finish_unary() {
    if (!first_error_.ok()) return respond_error(first_error_);
    if (output_replies_ > 1)
      return respond_error(http::status::bad_request,
                           "model '" + call_model_ + "' sent " + std::to_string(output_replies_) +
                               " responses to one request; use generate_stream (or gRPC streaming) for it");
    if (!unary_reply_) {
      unary_reply_.emplace();
      unary_reply_->model = call_model_;
      unary_reply_->version = call_version_.empty() ? "1" : call_version_;
    }
    if (call_kind_ == CallKind::kGenerate) return respond_json(generate_response_json(*unary_reply_));
    HttpBody b = infer_response_body(*unary_reply_, infer_request_);
    respond(http::status::ok, std::move(b.body),
            b.json_length ? "application/octet-stream" : "application/json", b.json_length);
  }

  // generate_stream: the status line goes out with the first reply (an error there sets it, as in Triton);
  // each reply is one SSE event, errors as {"error": ...}; the final reply ends the chunked body.
  void stream_reply(InferReply reply) {
    std::string data;
    if (!reply.error.ok()) {
      data = error_json(reply.error.message());
    } else if (!reply.outputs.empty()) {
      data = generate_response_json(reply);
    }
    sse_event(http_status(reply.error), data, reply.final);
  }

  // One SSE event (`data: ...`, none when `data` is empty) of a text/event-stream response; the first one
  // sends the status line and headers, the final one ends the chunked body.
  void sse_event(http::status status, const std::string& data, bool final) {
    if (!stream_started_) {
      stream_started_ = true;
      keep_alive_ = keep_alive_ && !impl_->stopping;
      std::string head = "HTTP/1.1 " + std::to_string(static_cast<unsigned>(status)) + " " +
                         std::string(http::obsolete_reason(status)) +
                         "\r\nServer: kiln\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                         "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n";
      if (!keep_alive_) head += "Connection: close\r\n";
      out_.push_back(head + "\r\n");
    }
    if (!data.empty()) out_.push_back(chunk("data: " + data + "\n\n"));
    if (final) {
      out_.push_back("0\r\n\r\n");
      stream_done_ = true;
    }
    pump();
  }

  void pump() {
    if (writing_ || out_.empty() || closed_) return;
    writing_ = true;
    arm(impl_->options.write_timeout);
    asio::async_write(socket_, asio::buffer(out_.front()),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        if (self->closed_) return;
                        if (ec) return self->close();  // client gone: close() cancels the call
                        self->out_.pop_front();
                        if (!self->out_.empty()) return self->pump();
                        self->disarm();
                        if (self->stream_done_) self->after_response();
                      });
  }

  // Reads while a call runs or a response is written: EOF or an error means the client left; bytes are the
  // next (pipelined) request, kept in buffer_ for the parser.
  void watch() {
    if (reading_ || closed_ || buffer_.size() >= kMaxPipelinedBytes) return;
    reading_ = true;
    socket_.async_read_some(
        buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->reading_ = false;
          if (self->closed_) return;
          if (ec == asio::error::operation_aborted && self->want_request_) {  // cancelled by after_response
            self->want_request_ = false;
            return self->read_request();
          }
          if (ec) return self->close();
          self->buffer_.commit(n);
          if (self->phase_ == Phase::kClosing) return self->drain();
          if (self->want_request_) {
            self->want_request_ = false;
            return self->read_request();
          }
          self->watch();
        });
  }

  // ---- responses ----

  void respond(http::status status, std::string body, const std::string& content_type,
               std::optional<size_t> json_length = std::nullopt) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::server, "kiln");
    res->set(http::field::content_type, content_type);
    if (json_length) res->set("Inference-Header-Content-Length", std::to_string(*json_length));
    res->keep_alive(keep_alive_ && !impl_->stopping);
    res->body() = std::move(body);
    res->prepare_payload();
    phase_ = Phase::kBusy;
    writing_ = true;
    arm(impl_->options.write_timeout);
    http::async_write(socket_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (self->closed_) return;
      if (ec) return self->close();
      self->after_response();
    });
  }
  void respond_json(std::string body) { respond(http::status::ok, std::move(body), "application/json"); }
  void respond_error(http::status status, const std::string& message) {
    respond(status, error_json(message), "application/json");
  }
  void respond_error(const Status& s) { respond_error(http_status(s), s.message()); }
  void method_not_allowed() { respond_error(http::status::method_not_allowed, "method not allowed"); }
  // For a request that leaves the stream unusable (limits, malformed HTTP): answer, then close.
  void respond_fatal(http::status status, const std::string& message) {
    keep_alive_ = false;
    respond_error(status, message);
  }

  void after_response() {
    disarm();
    if (!keep_alive_ || impl_->stopping) return graceful_close();
    if (reading_) {  // the watch read is pending: stop it, then read the next request (maybe pipelined
                     // already)
      want_request_ = true;
      beast::error_code ec;
      socket_.cancel(ec);
      return;
    }
    read_request();
  }

  // ---- closing ----

  // Half-close, then read and discard what the client still sends for a moment, so that it gets the response
  // rather than a reset.
  void graceful_close() {
    phase_ = Phase::kClosing;
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    arm(kLinger);
    if (!reading_) drain();
  }

  void drain() {
    if (closed_) return;
    buffer_.clear();
    reading_ = true;
    socket_.async_read_some(asio::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->reading_ = false;
                              self->drained_ += n;
                              if (ec || self->drained_ > kMaxDrainBytes) return self->close();
                              self->drain();
                            });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    phase_ = Phase::kClosing;
    if (call_active_ && cancel_) {
      call_active_ = false;
      auto cancel = std::move(cancel_);
      cancel_ = nullptr;
      cancel();
    }
    disarm();
    beast::error_code ec;
    socket_.close(ec);
    self_hold_.reset();
  }

  void arm(std::chrono::milliseconds timeout) {
    const uint64_t gen = ++timer_gen_;
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), gen](beast::error_code ec) {
      if (!ec && gen == self->timer_gen_)
        self->close();  // too slow: a timed-out call is cancelled by close()
    });
  }
  void disarm() {
    ++timer_gen_;
    timer_.cancel();
  }

  std::shared_ptr<HttpFrontend::Impl> impl_;  // keeps the io_context alive for as long as a session exists
  tcp::socket socket_;
  tcp::socket::executor_type executor_;
  asio::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Phase phase_ = Phase::kIdle;
  bool keep_alive_ = true;
  bool reading_ = false, writing_ = false, want_request_ = false, closed_ = false;
  std::array<char, 16384> scratch_;
  size_t drained_ = 0;

  // The call in flight (one at a time: HTTP/1.1 answers in order).
  std::shared_ptr<Session> self_hold_;
  uint64_t call_seq_ = 0;
  bool call_active_ = false;
  CancelFn cancel_;
  CallKind call_kind_ = CallKind::kInfer;
  std::string call_model_, call_version_;
  HttpInferRequest infer_request_;
  Status first_error_;
  int output_replies_ = 0;
  std::optional<InferReply> unary_reply_;
  bool stream_started_ = false, stream_done_ = false;
  std::deque<std::string> out_;
};

void HttpFrontend::Impl::register_session(const std::shared_ptr<Session>& s) {
  std::lock_guard<std::mutex> lock(mu);
  sessions.emplace(s.get(), s);
}

void HttpFrontend::Impl::unregister_session(Session* s) {
  std::lock_guard<std::mutex> lock(mu);
  sessions.erase(s);
  if (sessions.empty()) cv.notify_all();
}

template <typename F>
void HttpFrontend::Impl::for_each_session(F f) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [p, w] : sessions)
      if (auto s = w.lock()) live.push_back(std::move(s));
  }
  for (auto& s : live) f(s);
}

void HttpFrontend::Impl::accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor.is_open() || ec == asio::error::operation_aborted) return;
    if (ec) {  // e.g. out of file descriptors: back off instead of spinning
      accept_retry.emplace(acceptor.get_executor());
      accept_retry->expires_after(std::chrono::milliseconds(50));
      accept_retry->async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);  // SSE events and small replies go out at once
    auto session = std::make_shared<Session>(self.lock(), std::move(socket));
    register_session(session);
    asio::dispatch(session->executor(), [session] { session->start(); });
    accept();
  });
}

Result<std::unique_ptr<HttpFrontend>> HttpFrontend::start(ServerCore& core, const std::string& address,
                                                          int port, bool metrics_only,
                                                          const HttpOptions& options) {
  if (port < 0 || port > 65535)
    return invalid_argument("HTTP port " + std::to_string(port) + " is out of range");
  auto impl = std::make_shared<Impl>(core, metrics_only, options);
  impl->self = impl;
  beast::error_code ec;
  const auto ip = asio::ip::make_address(address, ec);
  if (ec) return invalid_argument("'" + address + "' is not an IP address to listen on");
  const tcp::endpoint endpoint(ip, static_cast<unsigned short>(port));
  const std::string where = address + ":" + std::to_string(port);
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return unavailable("cannot listen on " + where + ": " + ec.message());
  impl->port = impl->acceptor.local_endpoint().port();
  impl->accept();
  impl->work.emplace(impl->ioc.get_executor());
  const int threads = std::max(1, options.threads);
  for (int i = 0; i < threads; ++i) impl->threads.emplace_back([ioc = &impl->ioc] { ioc->run(); });
  return std::unique_ptr<HttpFrontend>(new HttpFrontend(std::move(impl)));
}

HttpFrontend::~HttpFrontend() { shutdown(); }

int HttpFrontend::port() const { return impl_->port; }

void HttpFrontend::stop_accepting() {
  if (impl_->threads.empty()) return;  // shut down already
  auto done = std::make_shared<std::promise<void>>();
  auto closed = done->get_future();
  // The acceptor is not thread-safe: close it on its strand.
  asio::post(impl_->acceptor.get_executor(), [impl = impl_.get(), done] {
    beast::error_code ec;
    impl->acceptor.close(ec);
    if (impl->accept_retry) impl->accept_retry->cancel();
    done->set_value();
  });
  closed.wait_for(std::chrono::seconds(5));
}

void HttpFrontend::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(impl_->shutdown_mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  stop_accepting();
  impl_->stopping = true;
  impl_->for_each_session(
      [](const std::shared_ptr<Session>& s) { asio::post(s->executor(), [s] { s->begin_shutdown(); }); });
  if (!impl_->wait_for_sessions(grace)) {
    impl_->for_each_session(
        [](const std::shared_ptr<Session>& s) { asio::post(s->executor(), [s] { s->force_close(); }); });
    impl_->wait_for_sessions(std::chrono::seconds(2));
  }
  impl_->work.reset();
  impl_->ioc.stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->blocking.join();
  // Handlers of closed connections that never ran release their sessions (and the sessions their Impl
  // reference).
  impl_->ioc.restart();
  impl_->ioc.poll();
}

}  // namespace kiln::server
