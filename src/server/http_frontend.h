// The HTTP/1.1 frontend (Boost.Beast): KServe v2 REST + Triton's extensions (binary tensors, generate /
// generate_stream over SSE, statistics, repository, logging) and the OpenAI API under /v1/ (openai_api.h: this
// file only routes to it and writes its responses) on port 8000, or only `GET /metrics` on port 8002.
//
// A few threads run one io_context; each connection is a session on its own strand (no thread per
// connection), with keep-alive and pipelining. Limits come from ServerOptions: body (413), header (431), JSON
// nesting (400). A client that goes away while its request runs (or streams) gets its call cancelled.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/status.h"
#include "server/server_core.h"

namespace kiln::server {

struct HttpOptions {
  int threads = 4;  // io threads
  std::chrono::milliseconds idle_timeout =
      std::chrono::seconds(120);  // keep-alive: waiting for the next request
  std::chrono::milliseconds header_timeout =
      std::chrono::seconds(30);  // a request's header, once it has begun
  std::chrono::milliseconds body_timeout = std::chrono::seconds(300);  // its body, after the header
  std::chrono::milliseconds write_timeout =
      std::chrono::seconds(60);  // a client that stops reading its response
};

class HttpFrontend {
 public:
  // Listens on address:port (port 0: a free port, see port()). `core` must outlive the frontend.
  static Result<std::unique_ptr<HttpFrontend>> start(ServerCore& core, const std::string& address, int port,
                                                     bool metrics_only = false,
                                                     const HttpOptions& options = {});
  ~HttpFrontend();
  HttpFrontend(const HttpFrontend&) = delete;
  HttpFrontend& operator=(const HttpFrontend&) = delete;

  int port() const;

  // Closes the listening socket; connections already open keep being served. For SIGTERM: stop_accepting(),
  // then ServerCore::shutdown (in-flight calls finish), then shutdown().
  void stop_accepting();
  // Stops accepting, closes idle connections, gives responses in progress up to `grace` to be written, then
  // closes everything (cancelling calls still running) and joins the io threads. Idempotent; the destructor
  // calls it.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

  struct Impl;

 private:
  explicit HttpFrontend(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace kiln::server
