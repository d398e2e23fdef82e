// The JSON side of the HTTP/REST protocol (KServe v2 + Triton's extensions), without any networking:
// request bodies -> InferCalls (JSON tensors, the binary-tensor extension, Triton's generate mapping) and
// replies / metadata / statistics -> the JSON documents tritonclient.http reads. http_frontend does the HTTP.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "server/infer_tensor.h"
#include "server/server_core.h"

namespace kiln::server {

using json = nlohmann::json;

// Parses a request body. Refused (INVALID_ARGUMENT, saying why): malformed JSON, nesting deeper than
// `max_depth` containers (checked while parsing, so a 10^5-deep body never recurses), a key twice in one
// object.
Result<json> parse_request_json(std::string_view text, int max_depth);

// An infer request: `{"id", "inputs": [{"name", "shape", "datatype", "data" | "parameters":
// {"binary_data_size"}}], "outputs": [{"name", "parameters": {"binary_data"}}], "parameters":
// {"binary_data_output"}}`.
struct HttpInferRequest {
  InferCall call;                             // model and version are the caller's to fill
  bool binary_output_default = false;         // parameters.binary_data_output
  std::map<std::string, bool> binary_output;  // outputs[i].parameters.binary_data, by name
};

// `body` is the whole request body; `json_length` the Inference-Header-Content-Length header when present
// (the JSON is then body[0, json_length) and the binary tensors follow it, in input order).
Result<HttpInferRequest> parse_infer_request(std::string_view body, std::optional<uint64_t> json_length,
                                             int max_depth);

// A reply as an HTTP body. `json_length`: set when binary outputs follow the JSON (the
// Inference-Header-Content-Length response header tritonclient.http needs).
struct HttpBody {
  std::string body;
  std::optional<size_t> json_length;
};
HttpBody infer_response_body(const InferReply& reply, const HttpInferRequest& request);

// Triton's generate extension: the body's fields (and those of its "parameters" object) name model inputs;
// each value is a scalar or a 1-D array, typed by the input's metadata datatype and shaped to its metadata
// shape as Triton does (fixed dims divide the element count, the innermost variable dim takes the rest, other
// variable dims are 1). "id" is the request id. A field that is not an input of the model is refused, naming
// the inputs.
Result<InferCall> parse_generate_request(std::string_view body, const ModelMetadata& metadata, int max_depth);
// `{"model_name", "model_version", "id"?, <output>: value...}`; a one-element output is a scalar, else a flat
// array.
std::string generate_response_json(const InferReply& reply);

// One tensor's elements as a flat JSON array (BYTES as strings, FP16/BF16 as numbers).
json tensor_data_json(const InferTensor& t);
// Appends the JSON scalar `v` as one element of `type` to `out` (little-endian; BYTES length-prefixed).
// Refuses a value of the wrong kind or out of the type's range, naming `input`.
Status append_json_element(const json& v, TensorType type, const std::string& input, std::string& out);

// Documents of the other endpoints, in Triton's shapes.
std::string error_json(const std::string& message);
std::string server_metadata_json(const ServerCore& core);
std::string model_metadata_json(const ModelMetadata& m);
std::string model_stats_json(const std::vector<ModelStats>& stats);
std::string repository_index_json(const std::vector<ModelStatus>& models);
// The ModelConfig as protobuf JSON with the proto field names and default values printed, 64-bit integers as
// JSON numbers (dims: [-1, 1]), as Triton answers .../config.
Result<std::string> model_config_json(const inference::ModelConfig& config);

// Log settings: the whole document, and a POST body applied to it. Only log_verbose_level can change; the
// other Triton keys are accepted when they restate the current value (a client may send back what GET
// returned) and refused otherwise; a log file path from the network is always refused.
std::string log_settings_json(int verbose_level);
Result<int> apply_log_settings(const json& body, int verbose_level);

}  // namespace kiln::server
