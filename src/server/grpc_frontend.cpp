#include "server/grpc_frontend.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "grpc_service.grpc.pb.h"
#include "health.grpc.pb.h"
#include "model_config.pb.h"

namespace kiln::server {

using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;

grpc::Status grpc_status(const Status& s) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (s.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case StatusCode::kUnavailable:
    case StatusCode::kResourceExhausted: code = grpc::StatusCode::UNAVAILABLE; break;
    case StatusCode::kUnimplemented: code = grpc::StatusCode::UNIMPLEMENTED; break;
    case StatusCode::kCancelled: code = grpc::StatusCode::CANCELLED; break;
    case StatusCode::kDeadlineExceeded: code = grpc::StatusCode::DEADLINE_EXCEEDED; break;
    default: break;
  }
  return grpc::Status(code, s.message());
}

// ---- request / reply conversion ------------------------------------------------------------------------------

namespace {

// Triton's stream parameters: the final-response flag and the client's request for an empty final response.
constexpr char kFinalParam[] = "triton_final_response";
constexpr char kEmptyFinalParam[] = "triton_enable_empty_final_response";

}  // namespace

namespace {

// The typed-contents fields that hold elements, by name, for error messages.
std::vector<std::string> filled_fields(const inference::InferTensorContents& c) {
  std::vector<std::string> f;
  if (c.bool_contents_size()) f.push_back("bool_contents");
  if (c.int_contents_size()) f.push_back("int_contents");
  if (c.int64_contents_size()) f.push_back("int64_contents");
  if (c.uint_contents_size()) f.push_back("uint_contents");
  if (c.uint64_contents_size()) f.push_back("uint64_contents");
  if (c.fp32_contents_size()) f.push_back("fp32_contents");
  if (c.fp64_contents_size()) f.push_back("fp64_contents");
  if (c.bytes_contents_size()) f.push_back("bytes_contents");
  return f;
}

// Appends `field`'s values as little-endian To, refusing values that do not fit (INT8 travels in int_contents).
template <typename To, typename Field>
Status append_values(const Field& field, InferTensor& t) {
  t.data.resize(static_cast<size_t>(field.size()) * sizeof(To));
  char* out = t.data.data();
  for (const auto v : field) {
    using From = std::decay_t<decltype(v)>;
    if constexpr (!std::is_same_v<From, To> && std::is_integral_v<To>) {
      constexpr From lo = static_cast<From>(std::numeric_limits<To>::min());
      constexpr From hi = static_cast<From>(std::numeric_limits<To>::max());
      if (v < lo || v > hi)
        return invalid_argument("input '" + t.name + "': value " + std::to_string(v) + " does not fit " +
                                tensor_type_name(t.type));
    }
    const To x = static_cast<To>(v);
    std::memcpy(out, &x, sizeof(To));
    out += sizeof(To);
  }
  return {};
}

// The typed form of each datatype (KServe: narrow integer types travel widened; FP16/BF16 only raw).
const char* typed_field_of(TensorType type) {
  switch (type) {
    case TensorType::kBool: return "bool_contents";
    case TensorType::kInt8:
    case TensorType::kInt16:
    case TensorType::kInt32: return "int_contents";
    case TensorType::kInt64: return "int64_contents";
    case TensorType::kUint8:
    case TensorType::kUint16:
    case TensorType::kUint32: return "uint_contents";
    case TensorType::kUint64: return "uint64_contents";
    case TensorType::kFp32: return "fp32_contents";
    case TensorType::kFp64: return "fp64_contents";
    case TensorType::kBytes: return "bytes_contents";
    case TensorType::kFp16:
    case TensorType::kBf16: return nullptr;
  }
  return nullptr;
}

Status typed_contents(const inference::InferTensorContents& c, InferTensor& t) {
  const std::vector<std::string> filled = filled_fields(c);
  const char* expected = typed_field_of(t.type);
  for (const std::string& f : filled) {
    if (expected && f == expected) continue;
    if (!expected)
      return invalid_argument("input '" + t.name + "': " + tensor_type_name(t.type) +
                              " has no typed contents; send it in raw_input_contents");
    return invalid_argument("input '" + t.name + "' of datatype " + tensor_type_name(t.type) + " carries " + f +
                            "; its elements go in " + expected);
  }
  switch (t.type) {
    case TensorType::kBool: {
      t.data.reserve(c.bool_contents_size());
      for (bool b : c.bool_contents()) t.data.push_back(b ? 1 : 0);
      return {};
    }
    case TensorType::kInt8: return append_values<int8_t>(c.int_contents(), t);
    case TensorType::kInt16: return append_values<int16_t>(c.int_contents(), t);
    case TensorType::kInt32: return append_values<int32_t>(c.int_contents(), t);
    case TensorType::kInt64: return append_values<int64_t>(c.int64_contents(), t);
    case TensorType::kUint8: return append_values<uint8_t>(c.uint_contents(), t);
    case TensorType::kUint16: return append_values<uint16_t>(c.uint_contents(), t);
    case TensorType::kUint32: return append_values<uint32_t>(c.uint_contents(), t);
    case TensorType::kUint64: return append_values<uint64_t>(c.uint64_contents(), t);
    case TensorType::kFp32: return append_values<float>(c.fp32_contents(), t);
    case TensorType::kFp64: return append_values<double>(c.fp64_contents(), t);
    case TensorType::kBytes: {
      for (const std::string& s : c.bytes_contents()) {
        if (s.size() > UINT32_MAX) return invalid_argument("input '" + t.name + "': a BYTES element over 4 GiB");
        const uint32_t len = static_cast<uint32_t>(s.size());
        t.data.append(reinterpret_cast<const char*>(&len), 4);
        t.data += s;
      }
      return {};
    }
    case TensorType::kFp16:
    case TensorType::kBf16: return {};  // no elements were sent; validate() says what is missing
  }
  return {};
}

constexpr char kDatatypeNames[] =
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES";

}  // namespace

Result<InferCall> infer_call_from_grpc(ModelInferRequest& req) {
  InferCall call;
  call.model = req.model_name();
  call.version = req.model_version();
  call.id = req.id();
  const int n = req.inputs_size();
  const int n_raw = req.raw_input_contents_size();
  // Before the raw-contents count: an input in shared memory has no raw contents (tritonclient sends the others'
  // only), and the answer must say that shared memory is the problem.
  for (const auto& in : req.inputs())
    if (in.parameters().count("shared_memory_region"))
      return invalid_argument("input '" + in.name() + "': shared memory is not supported by kiln");
  if (n_raw > 0 && n_raw != n)
    return invalid_argument("the request has " + std::to_string(n) + " inputs but " + std::to_string(n_raw) +
                            " raw_input_contents; send one per input, in the order of the inputs");
  for (const auto& [key, p] : req.parameters()) {
    if (key == kEmptyFinalParam) continue;  // the stream's own (see ModelStreamInfer)
    RequestParameter v;
    switch (p.parameter_choice_case()) {
      case inference::InferParameter::kBoolParam: v = p.bool_param(); break;
      case inference::InferParameter::kInt64Param: v = p.int64_param(); break;
      case inference::InferParameter::kUint64Param: v = p.uint64_param(); break;
      case inference::InferParameter::kDoubleParam: v = p.double_param(); break;
      case inference::InferParameter::kStringParam: v = p.string_param(); break;
      default: return invalid_argument("request parameter '" + key + "' has no value");
    }
    KILN_RETURN_IF_ERROR(apply_request_parameter(call, key, v));
  }
  call.inputs.reserve(n);
  for (int i = 0; i < n; ++i) {
    ModelInferRequest::InferInputTensor& in = *req.mutable_inputs(i);
    const std::optional<TensorType> type = tensor_type_from_name(in.datatype());
    if (!type)
      return invalid_argument("input '" + in.name() + "': unknown datatype '" + in.datatype() + "' (one of " +
                              kDatatypeNames + ")");
    InferTensor t;
    t.name = in.name();
    t.type = *type;
    t.shape.assign(in.shape().begin(), in.shape().end());
    if (n_raw > 0) {
      if (!filled_fields(in.contents()).empty())
        return invalid_argument("input '" + in.name() +
                                "': contents must be empty when the request uses raw_input_contents");
      t.data = std::move(*req.mutable_raw_input_contents(i));
    } else {
      KILN_RETURN_IF_ERROR(typed_contents(in.contents(), t));
    }
    KILN_RETURN_IF_ERROR(t.validate());
    call.inputs.push_back(std::move(t));
  }
  for (const ModelInferRequest::InferRequestedOutputTensor& out : req.outputs()) {
    if (out.parameters().count("shared_memory_region"))
      return invalid_argument("output '" + out.name() + "': shared memory is not supported by kiln");
    if (out.parameters().count("classification"))
      return invalid_argument("output '" + out.name() + "': classification is not supported by kiln");
    call.requested_outputs.insert(out.name());
  }
  return call;
}

void infer_reply_to_grpc(InferReply& reply, ModelInferResponse* r) {
  r->set_model_name(reply.model);
  r->set_model_version(reply.version);
  r->set_id(reply.id);
  for (InferTensor& t : reply.outputs) {
    ModelInferResponse::InferOutputTensor* o = r->add_outputs();
    o->set_name(t.name);
    o->set_datatype(tensor_type_name(t.type));
    for (int64_t d : t.shape) o->add_shape(d);
    r->add_raw_output_contents(std::move(t.data));
  }
}

// ---- the services ---------------------------------------------------------------------------------------------

namespace {

grpc::ServerUnaryReactor* finish(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* finish(grpc::CallbackServerContext* ctx, const Status& status) {
  return finish(ctx, grpc_status(status));
}

grpc::ServerUnaryReactor* unsupported(grpc::CallbackServerContext* ctx, const std::string& what) {
  return finish(ctx, grpc::Status(grpc::StatusCode::UNIMPLEMENTED, what + " is not supported by kiln"));
}

using StreamReactorBase = grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse>;
struct StreamShared;

}  // namespace

// What the services share: the core, and the open streams (so that shutdown can end the idle ones).
struct GrpcFrontend::Impl {
  explicit Impl(ServerCore& c) : core(c) {}
  ServerCore& core;
  std::unique_ptr<grpc::Server> server;

  std::mutex mu;
  bool stopping = false;
  std::set<std::shared_ptr<StreamShared>> streams;
  std::once_flag shutdown_once;

  class InferenceService;
  class HealthService;
  std::unique_ptr<grpc::Service> inference, health;
};

namespace {

// ModelInfer: one core call; the reactor finishes on its final reply, or at once when the client cancels.
class UnaryInferReactor : public grpc::ServerUnaryReactor {
 public:
  // Shared with the core's reply callback, which may run after the RPC is over.
  struct Shared {
    std::mutex mu;
    bool finished = false;  // Finish was called (then the reactor may be gone)
    bool client_cancelled = false;
    CancelFn cancel;
    UnaryInferReactor* reactor = nullptr;
    ModelInferResponse* response = nullptr;  // gRPC's, valid until Finish
  };

  explicit UnaryInferReactor(ModelInferResponse* response) : shared_(std::make_shared<Shared>()) {
    shared_->reactor = this;
    shared_->response = response;
  }

  static void run(ServerCore& core, ModelInferRequest& request, UnaryInferReactor* self) {
    std::shared_ptr<Shared> shared = self->shared_;
    Result<InferCall> call = infer_call_from_grpc(request);
    if (!call.ok()) return finish_once(*shared, grpc_status(call.status()));
    call->stream = false;
    Result<CancelFn> started = core.infer(std::move(*call), [shared](InferReply reply) {
      if (!reply.final) return;  // a plain infer answers with its final reply
      UnaryInferReactor* reactor = nullptr;
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (shared->finished) return;
        shared->finished = true;
        shared->cancel = nullptr;
        if (reply.error.ok()) infer_reply_to_grpc(reply, shared->response);
        reactor = shared->reactor;
      }
      reactor->Finish(grpc_status(reply.error));
    });
    if (!started.ok()) return finish_once(*shared, grpc_status(started.status()));
    CancelFn cancel_now;
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      if (shared->client_cancelled) cancel_now = std::move(*started);  // the client left while we were starting
      else if (!shared->finished) shared->cancel = std::move(*started);
    }
    if (cancel_now) cancel_now();
  }

  void OnCancel() override {
    CancelFn cancel;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      shared_->client_cancelled = true;
      cancel = std::move(shared_->cancel);
    }
    if (cancel) cancel();
    finish_once(*shared_, grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled"));
  }

  void OnDone() override { delete this; }

 private:
  // Exactly one Finish; the reactor must not be touched after it (OnDone may delete it on another thread).
  static void finish_once(Shared& shared, const grpc::Status& status) {
    UnaryInferReactor* reactor = nullptr;
    {
      std::lock_guard<std::mutex> lock(shared.mu);
      if (shared.finished) return;
      shared.finished = true;
      shared.cancel = nullptr;
      reactor = shared.reactor;
    }
    reactor->Finish(status);
  }

  std::shared_ptr<Shared> shared_;
};

// The part of a stream shared with the core's reply callbacks and with shutdown, which may outlive the reactor.
struct StreamShared {
  std::mutex mu;
  StreamReactorBase* reactor = nullptr;         // valid until `finished` (then OnDone may delete it)
  std::deque<ModelStreamInferResponse> queue;   // front() is being written while `writing`
  bool writing = false, reads_done = false, cancelled = false, draining = false, finished = false;
  uint64_t next_call = 0;
  std::map<uint64_t, CancelFn> calls;  // in flight (the CancelFn is empty while infer() is still starting it)

  // Runs `change(*this, cancels)` under the lock, then (unlocked: gRPC and the core may call back) the cancels
  // it collected and the next write or the Finish that the new state calls for. A write or Finish is decided
  // under the lock, so only one thread ever starts one; after Finish the reactor is never touched again.
  template <typename F>
  void update(F&& change) {
    std::vector<CancelFn> cancels;
    const ModelStreamInferResponse* write = nullptr;
    std::optional<grpc::Status> finish;
    StreamReactorBase* r = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      change(*this, cancels);
      r = reactor;
      if (!finished && !writing) {
        if (!queue.empty() && !cancelled) {
          writing = true;
          write = &queue.front();  // deque::push_back keeps references to elements valid
        } else if (cancelled || (calls.empty() && queue.empty() && (reads_done || draining))) {
          finished = true;
          finish = cancelled ? grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled")
                             : grpc::Status::OK;
        }
      }
    }
    for (CancelFn& fn : cancels) fn();
    if (write) r->StartWrite(write);
    if (finish) r->Finish(*finish);
  }

  // Queues `msg` (if any) and marks call `ended` as answered.
  void push(std::optional<ModelStreamInferResponse> msg, std::optional<uint64_t> ended) {
    update([&](StreamShared& s, std::vector<CancelFn>&) {
      if (ended) s.calls.erase(*ended);
      if (msg && !s.finished && !s.cancelled) s.queue.push_back(std::move(*msg));
    });
  }

  // Shutdown: the stream ends once nothing is in flight; requests it still sends are refused.
  void drain() {
    update([](StreamShared& s, std::vector<CancelFn>&) { s.draining = true; });
  }

  // With `mu` held: marks the stream cancelled, drops unsent responses, returns the calls to cancel.
  std::vector<CancelFn> cancel_locked() {
    cancelled = true;
    if (writing && !queue.empty()) queue.erase(queue.begin() + 1, queue.end());
    else queue.clear();
    std::vector<CancelFn> fns;
    for (auto& [key, fn] : calls)
      if (fn) fns.push_back(std::move(fn));
    calls.clear();
    return fns;
  }
};

// ModelStreamInfer: every request read is a core call (stream = true); every reply becomes a
// ModelStreamInferResponse. Writes go out one at a time from a queue. The stream finishes OK when the client
// has half-closed and every call has answered, or CANCELLED when the client goes away (then every call still
// running is cancelled).
class StreamInferReactor : public StreamReactorBase {
 public:
  explicit StreamInferReactor(GrpcFrontend::Impl& impl) : impl_(impl), shared_(std::make_shared<StreamShared>()) {
    shared_->reactor = this;
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(impl_.mu);
      stopping = impl_.stopping;
      if (!stopping) impl_.streams.insert(shared_);
    }
    if (stopping) {
      shared_->finished = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or went away: OnCancel follows)
      shared_->update([](StreamShared& s, std::vector<CancelFn>&) { s.reads_done = true; });
      return;
    }
    start_call();
    request_.Clear();
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      if (shared_->finished || shared_->cancelled) return;
    }
    StartRead(&request_);  // safe even if a Finish races in: this reaction holds a reference on the stream
  }

  void OnWriteDone(bool ok) override {
    shared_->update([ok](StreamShared& s, std::vector<CancelFn>& cancels) {
      s.queue.pop_front();
      s.writing = false;
      if (!ok && !s.cancelled) cancels = s.cancel_locked();  // the client is gone
    });
  }

  void OnCancel() override {
    shared_->update([](StreamShared& s, std::vector<CancelFn>& cancels) {
      if (!s.cancelled) cancels = s.cancel_locked();
    });
  }

  void OnDone() override {
    std::vector<CancelFn> cancels;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      shared_->finished = true;
      shared_->reactor = nullptr;
      cancels = shared_->cancel_locked();  // normally nothing is left; never leave a call running
    }
    for (CancelFn& fn : cancels) fn();
    {
      std::lock_guard<std::mutex> lock(impl_.mu);
      impl_.streams.erase(shared_);
    }
    delete this;
  }

 private:
  static ModelStreamInferResponse error_response(const ModelInferRequest& req, const Status& error) {
    ModelStreamInferResponse msg;
    msg.set_error_message(error.message());
    ModelInferResponse* r = msg.mutable_infer_response();
    r->set_id(req.id());
    r->set_model_name(req.model_name());
    r->set_model_version(req.model_version());
    (*r->mutable_parameters())[kFinalParam].set_bool_param(true);
    return msg;
  }

  // The core's reply as the stream message Triton sends; nullopt for an empty final reply the client did not
  // ask for (Triton sends those only with triton_enable_empty_final_response).
  static std::optional<ModelStreamInferResponse> stream_response(InferReply& reply, bool empty_final) {
    ModelStreamInferResponse msg;
    ModelInferResponse* r = msg.mutable_infer_response();
    if (!reply.error.ok()) {
      msg.set_error_message(reply.error.message());
      r->set_model_name(reply.model);
      r->set_model_version(reply.version);
      r->set_id(reply.id);
    } else if (reply.final && reply.outputs.empty() && !empty_final) {
      return std::nullopt;
    } else {
      infer_reply_to_grpc(reply, r);
    }
    (*r->mutable_parameters())[kFinalParam].set_bool_param(reply.final);
    return msg;
  }

  void start_call() {
    bool empty_final = false;
    if (auto it = request_.parameters().find(kEmptyFinalParam); it != request_.parameters().end()) {
      if (it->second.parameter_choice_case() != inference::InferParameter::kBoolParam)
        return shared_->push(
            error_response(request_, invalid_argument(std::string("parameter '") + kEmptyFinalParam +
                                                      "' must be a bool_param")),
            std::nullopt);
      empty_final = it->second.bool_param();
    }
    Result<InferCall> call = infer_call_from_grpc(request_);
    if (!call.ok()) return shared_->push(error_response(request_, call.status()), std::nullopt);
    call->stream = true;
    uint64_t key = 0;
    bool draining;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      draining = shared_->draining;
      if (!draining) {
        key = shared_->next_call++;
        shared_->calls.emplace(key, nullptr);  // counted as in flight before any reply can arrive
      }
    }
    if (draining)
      return shared_->push(error_response(request_, unavailable("the server is shutting down")), std::nullopt);

    std::shared_ptr<StreamShared> shared = shared_;
    Result<CancelFn> started = impl_.core.infer(std::move(*call), [shared, key, empty_final](InferReply reply) {
      const std::optional<uint64_t> ended = reply.final ? std::optional<uint64_t>(key) : std::nullopt;
      shared->push(stream_response(reply, empty_final), ended);
    });
    CancelFn cancel_now;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      auto it = shared_->calls.find(key);
      if (!started.ok() || it == shared_->calls.end()) {
        if (it != shared_->calls.end()) shared_->calls.erase(it);
      } else if (shared_->cancelled) {
        cancel_now = std::move(*started);  // the client left while the call was starting
        shared_->calls.erase(it);
      } else {
        it->second = std::move(*started);
      }
    }
    if (cancel_now) cancel_now();
    // Also finishes the stream if that call was the last thing it waited for.
    shared_->push(started.ok() ? std::nullopt : std::optional(error_response(request_, started.status())),
                  std::nullopt);
  }

  GrpcFrontend::Impl& impl_;
  std::shared_ptr<StreamShared> shared_;
  ModelInferRequest request_;
};

}  // namespace

class GrpcFrontend::Impl::InferenceService final : public inference::GRPCInferenceService::CallbackService {
 public:
  explicit InferenceService(Impl& impl) : impl_(impl), core_(impl.core) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* resp) override {
    resp->set_live(core_.live());
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* resp) override {
    resp->set_ready(core_.ready());
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx, const inference::ModelReadyRequest* req,
                                       inference::ModelReadyResponse* resp) override {
    Result<bool> ready = core_.model_ready(req->name(), req->version());
    // Triton answers "not ready" for a model it does not know; other errors (a malformed name) are errors.
    if (!ready.ok() && ready.status().code() != StatusCode::kNotFound) return finish(ctx, ready.status());
    resp->set_ready(ready.ok() && *ready);
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* resp) override {
    resp->set_name(core_.name());
    resp->set_version(core_.version());
    for (const std::string& e : core_.extensions()) resp->add_extensions(e);
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* req,
                                          inference::ModelMetadataResponse* resp) override {
    Result<kiln::server::ModelMetadata> md = core_.model_metadata(req->name(), req->version());
    if (!md.ok()) return finish(ctx, md.status());
    resp->set_name(md->name);
    for (const std::string& v : md->versions) resp->add_versions(v);
    resp->set_platform(md->platform);
    auto fill = [](const TensorMetadata& t, inference::ModelMetadataResponse::TensorMetadata* out) {
      out->set_name(t.name);
      out->set_datatype(t.datatype);
      for (int64_t d : t.shape) out->add_shape(d);
    };
    for (const TensorMetadata& t : md->inputs) fill(t, resp->add_inputs());
    for (const TensorMetadata& t : md->outputs) fill(t, resp->add_outputs());
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* ctx, const inference::ModelConfigRequest* req,
                                        inference::ModelConfigResponse* resp) override {
    auto config = core_.model_config(req->name(), req->version());
    if (!config.ok()) return finish(ctx, config.status());
    *resp->mutable_config() = **config;
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* ctx,
                                            const inference::ModelStatisticsRequest* req,
                                            inference::ModelStatisticsResponse* resp) override {
    auto stats = core_.statistics(req->name(), req->version());
    if (!stats.ok()) return finish(ctx, stats.status());
    auto duration = [](inference::StatisticDuration* d, uint64_t count, uint64_t ns) {
      d->set_count(count);
      d->set_ns(ns);
    };
    for (const ModelStats& s : *stats) {
      inference::ModelStatistics* m = resp->add_model_stats();
      m->set_name(s.name);
      m->set_version(s.version);
      m->set_last_inference(s.last_inference_ms);
      m->set_inference_count(s.inference_count);
      m->set_execution_count(s.execution_count);
      inference::InferStatistics* is = m->mutable_inference_stats();
      duration(is->mutable_success(), s.success_count, s.success_ns);
      duration(is->mutable_fail(), s.fail_count, s.fail_ns);
      // Triton counts queue and compute once per successful request.
      duration(is->mutable_queue(), s.success_count, s.queue_ns);
      duration(is->mutable_compute_input(), s.success_count, 0);
      duration(is->mutable_compute_infer(), s.success_count, s.compute_ns);
      duration(is->mutable_compute_output(), s.success_count, 0);
    }
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* ctx,
                                            const inference::RepositoryIndexRequest* req,
                                            inference::RepositoryIndexResponse* resp) override {
    for (const ModelStatus& s : core_.repository_index(req->ready())) {
      auto* m = resp->add_models();
      m->set_name(s.name);
      m->set_version(s.version);
      m->set_state(s.state);
      m->set_reason(s.reason);
    }
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* RepositoryModelLoad(grpc::CallbackServerContext* ctx,
                                                const inference::RepositoryModelLoadRequest* req,
                                                inference::RepositoryModelLoadResponse*) override {
    // Triton's "config" (a JSON override) and "file:..." (model files over the network) parameters: refused.
    if (!req->parameters().empty())
      return finish(ctx, grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "load parameter '" +
                                                                           req->parameters().begin()->first +
                                                                           "' is not supported by kiln"));
    return finish(ctx, core_.load_model(req->model_name()));
  }

  grpc::ServerUnaryReactor* RepositoryModelUnload(grpc::CallbackServerContext* ctx,
                                                  const inference::RepositoryModelUnloadRequest* req,
                                                  inference::RepositoryModelUnloadResponse*) override {
    // tritonclient always sends "unload_dependents"; kiln's models have no dependents to unload.
    return finish(ctx, core_.unload_model(req->model_name()));
  }

  grpc::ServerUnaryReactor* LogSettings(grpc::CallbackServerContext* ctx, const inference::LogSettingsRequest* req,
                                        inference::LogSettingsResponse* resp) override {
    // Only the verbosity can change over the network: never a log file path (an arbitrary-file-write primitive).
    std::optional<int> level;
    for (const auto& [key, value] : req->settings()) {
      if (key != "log_verbose_level")
        return finish(ctx, invalid_argument("log setting '" + key +
                                            "' cannot be changed over the network; only log_verbose_level can"));
      if (value.parameter_choice_case() != inference::LogSettingsRequest::SettingValue::kUint32Param)
        return finish(ctx, invalid_argument("log_verbose_level must be a uint32_param"));
      level = static_cast<int>(std::min<uint32_t>(value.uint32_param(), INT_MAX));
    }
    if (level) core_.set_log_verbose(*level);
    auto& s = *resp->mutable_settings();
    s["log_file"].set_string_param("");
    s["log_info"].set_bool_param(true);
    s["log_warning"].set_bool_param(true);
    s["log_error"].set_bool_param(true);
    s["log_verbose_level"].set_uint32_param(static_cast<uint32_t>(std::max(0, core_.log_verbose())));
    s["log_format"].set_string_param("default");
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx, const ModelInferRequest* req,
                                       ModelInferResponse* resp) override {
    auto* reactor = new UnaryInferReactor(resp);
    // The request is gRPC's non-const message, alive until the reactor is done; the const only protects
    // it from handlers. Moving the raw contents out saves a copy of every input.
    UnaryInferReactor::run(core_, const_cast<ModelInferRequest&>(*req), reactor);
    return reactor;
  }

  grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse>* ModelStreamInfer(
      grpc::CallbackServerContext*) override {
    return new StreamInferReactor(impl_);
  }

  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(grpc::CallbackServerContext* ctx,
                                                     const inference::SystemSharedMemoryStatusRequest*,
                                                     inference::SystemSharedMemoryStatusResponse*) override {
    return unsupported(ctx, "system shared memory");
  }
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(grpc::CallbackServerContext* ctx,
                                                       const inference::SystemSharedMemoryRegisterRequest*,
                                                       inference::SystemSharedMemoryRegisterResponse*) override {
    return unsupported(ctx, "system shared memory");
  }
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(grpc::CallbackServerContext* ctx,
                                                         const inference::SystemSharedMemoryUnregisterRequest*,
                                                         inference::SystemSharedMemoryUnregisterResponse*) override {
    return unsupported(ctx, "system shared memory");
  }
  grpc::ServerUnaryReactor* CudaSharedMemoryStatus(grpc::CallbackServerContext* ctx,
                                                   const inference::CudaSharedMemoryStatusRequest*,
                                                   inference::CudaSharedMemoryStatusResponse*) override {
    return unsupported(ctx, "CUDA shared memory");
  }
  grpc::ServerUnaryReactor* CudaSharedMemoryRegister(grpc::CallbackServerContext* ctx,
                                                     const inference::CudaSharedMemoryRegisterRequest*,
                                                     inference::CudaSharedMemoryRegisterResponse*) override {
    return unsupported(ctx, "CUDA shared memory");
  }
  grpc::ServerUnaryReactor* CudaSharedMemoryUnregister(grpc::CallbackServerContext* ctx,
                                                       const inference::CudaSharedMemoryUnregisterRequest*,
                                                       inference::CudaSharedMemoryUnregisterResponse*) override {
    return unsupported(ctx, "CUDA shared memory");
  }
  grpc::ServerUnaryReactor* TraceSetting(grpc::CallbackServerContext* ctx, const inference::TraceSettingRequest*,
                                         inference::TraceSettingResponse*) override {
    return unsupported(ctx, "tracing");
  }

 private:
  Impl& impl_;
  ServerCore& core_;
};

class GrpcFrontend::Impl::HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  explicit HealthService(ServerCore& core) : core_(core) {}

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) override {
    // "" is the server as a whole; the inference service is the only other one it serves.
    if (!req->service().empty() && req->service() != "inference.GRPCInferenceService")
      return finish(ctx, grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
    resp->set_status(core_.ready() ? grpc::health::v1::HealthCheckResponse::SERVING
                                   : grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext*, const grpc::health::v1::HealthCheckRequest*) override {
    struct Refuse : grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse> {
      Refuse() {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "Health/Watch is not supported by kiln; use Check"));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse();
  }

 private:
  ServerCore& core_;
};

Result<std::unique_ptr<GrpcFrontend>> GrpcFrontend::start(ServerCore& core, const std::string& address, int port) {
  if (port < 0 || port > 65535) return invalid_argument("gRPC port " + std::to_string(port) + " is not 0..65535");
  const bool ipv6 = address.find(':') != std::string::npos && address.front() != '[';
  const std::string target = (ipv6 ? "[" + address + "]" : address) + ":" + std::to_string(port);

  std::unique_ptr<GrpcFrontend> f(new GrpcFrontend());
  f->impl_ = std::make_unique<Impl>(core);
  Impl& impl = *f->impl_;
  impl.inference = std::make_unique<Impl::InferenceService>(impl);
  impl.health = std::make_unique<Impl::HealthService>(core);

  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(target, grpc::InsecureServerCredentials(), &selected);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a port in use is an error, not a shared port
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<uint64_t>(core.options().max_request_bytes, INT_MAX)));
  builder.RegisterService(impl.inference.get());
  builder.RegisterService(impl.health.get());
  impl.server = builder.BuildAndStart();
  if (!impl.server || selected == 0)
    return unavailable("gRPC: cannot listen on " + target + " (port in use, or not an address of this machine)");
  f->port_ = selected;
  return f;
}

void GrpcFrontend::shutdown(std::chrono::milliseconds grace) {
  if (!impl_ || !impl_->server) return;  // never started
  std::call_once(impl_->shutdown_once, [&] {
    std::vector<std::shared_ptr<StreamShared>> streams;
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->stopping = true;
      streams.assign(impl_->streams.begin(), impl_->streams.end());
    }
    for (const auto& s : streams) s->drain();
    impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
    impl_->server->Wait();
  });
}

GrpcFrontend::~GrpcFrontend() { shutdown(); }

}  // namespace kiln::server
