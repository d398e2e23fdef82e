// The gRPC side of the server: `inference.GRPCInferenceService` (KServe v2 + Triton's extensions) and the
// standard `grpc.health.v1.Health` service, on gRPC's callback API. It only translates messages to and from
// ServerCore calls; every rule about models and tensors is ServerCore's.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/status.h"
#include "server/server_core.h"

namespace grpc {
class Status;
}
namespace inference {
class ModelInferRequest;
class ModelInferResponse;
}  // namespace inference

namespace kiln::server {

class GrpcFrontend {
 public:
  // Listens on address:port (port 0: a free port, see port()). Messages above core.options().max_request_bytes
  // are refused by gRPC itself. `core` must outlive the frontend.
  static Result<std::unique_ptr<GrpcFrontend>> start(ServerCore& core, const std::string& address, int port);
  ~GrpcFrontend();  // shutdown()

  int port() const { return port_; }

  // Stops accepting calls. Streams with nothing in flight end at once (status OK); unary calls and streams
  // with calls in flight get `grace` to finish, then are cancelled (their core calls too). Idempotent.
  void shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds{0});

  struct Impl;

 private:
  GrpcFrontend() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// The conversions, exposed for tests.

// A request's inputs (raw_input_contents or typed contents), requested outputs, model, version and id as an
// InferCall (stream = false). Raw contents are moved out of `request`. INVALID_ARGUMENT for unknown datatypes,
// shapes that do not match the data, raw and typed contents mixed, or a raw_input_contents count that is not
// one per input.
Result<InferCall> infer_call_from_grpc(inference::ModelInferRequest& request);

// A reply's model, version, id and outputs (as raw_output_contents; the tensors' data is moved out).
void infer_reply_to_grpc(InferReply& reply, inference::ModelInferResponse* response);

// kInvalidArgument -> INVALID_ARGUMENT, kNotFound -> NOT_FOUND, kUnavailable/kResourceExhausted -> UNAVAILABLE,
// kUnimplemented -> UNIMPLEMENTED, kCancelled -> CANCELLED, anything else -> INTERNAL; the message is kept.
grpc::Status grpc_status(const Status& status);

}  // namespace kiln::server
