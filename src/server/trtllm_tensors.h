// The `tensorrt_llm` model's tensor contract (docs/PROTOCOL.md): its input tensors -> executor Requests
// (one per batch row), and executor Responses -> its output tensors. Both transports (HTTP, gRPC) call
// this, so every rule is enforced once.
#pragma once

#include <set>
#include <span>
#include <string>
#include <vector>

#include "executor/request.h"
#include "server/infer_tensor.h"

namespace kiln::server {

struct TrtllmLimits {
  int64_t max_batch_size = 0;       // the model config's; > 0: every tensor has a leading batch dimension
  int64_t vocab_size = 0;
  int64_t max_input_len = 0;
  int64_t max_seq_len = 0;
  int64_t max_beam_width = 1;
  bool exclude_input_in_output = false;  // the model parameter (the seed's config echoes the prompt)
};

struct TrtllmInferRequest {
  std::vector<Request> requests;  // one per batch row
  bool stop = false;              // the `stop` input: cancel the in-flight request of this request id
  std::vector<std::string> notes; // things worth one log line (e.g. a clamped input_lengths)
};

// Checks every input (known name, no duplicate, datatype, shape, values) and builds the requests.
// Optional inputs the executor does not implement are refused by name; errors say what is allowed.
Result<TrtllmInferRequest> parse_trtllm_inputs(const std::vector<InferTensor>& inputs, const TrtllmLimits& limits);

// Output tensors of a batch: responses[i] answers requests[i]. `wanted`: names the client asked for
// (empty: all that apply). Shorter beams/rows are padded with the request's pad id (else end id, else 0).
std::vector<InferTensor> trtllm_outputs(std::span<const Response> responses, std::span<const Request> requests,
                                        const TrtllmLimits& limits, const std::set<std::string>& wanted);

// The input and output names of the contract, for model metadata and error messages.
const std::vector<std::string>& trtllm_input_names();
const std::vector<std::string>& trtllm_output_names();

}  // namespace kiln::server
