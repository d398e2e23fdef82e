// Reading a model repository's `config.pbtxt`: protobuf text format of inference.ModelConfig
// (proto/model_config.proto), parsed strictly so that a typo is an error with its line and
// column rather than a silently ignored setting.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"
#include "model_config.pb.h"

namespace kiln::server {

// Parses the file at `path`. Errors:
//   NOT_FOUND        the file does not exist;
//   INVALID_ARGUMENT unreadable, too large, or not a valid ModelConfig in text format; the message is
//                    "<name>:<line>:<column>: <what>", e.g.
//                    `config.pbtxt:12:3: unknown field "foo" in inference.ModelInput`.
// `<name>` is `display_name` when given (e.g. "tensorrt_llm/config.pbtxt"), else the file's basename:
// messages never carry a path from outside the repository.
Result<inference::ModelConfig> load_model_config(const std::string& path, const std::string& display_name = "");

// The same for text already in memory; `display_name` names it in messages.
Result<inference::ModelConfig> parse_model_config(const std::string& text, const std::string& display_name);

// The largest config.pbtxt accepted (real ones are a few KiB).
inline constexpr size_t kMaxModelConfigBytes = 4u << 20;

// A model name that is safe as a folder name, a URL path segment and a metric label:
// 1 to 128 characters of [A-Za-z0-9_.-], not starting with '.' (so neither "." nor "..").
// INVALID_ARGUMENT otherwise, saying why.
Status check_model_name(const std::string& name);
inline constexpr size_t kMaxModelNameLength = 128;

// The string_value of the parameter `key` (`parameters { key: ... value { string_value: ... } }`),
// or nullopt when the config has no such parameter.
std::optional<std::string> model_parameter(const inference::ModelConfig& config, const std::string& key);

// The config's parameter keys that are not in `used`, sorted: what the server should report
// once at load as set but not used.
std::vector<std::string> unused_parameters(const inference::ModelConfig& config, const std::set<std::string>& used);

}  // namespace kiln::server
