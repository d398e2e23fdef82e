// JSON from untrusted bytes: nlohmann's parser, plus two refusals it does not make itself: a key given twice
// in one object (nlohmann would keep the last silently) and nesting deeper than a cap (a stack-depth attack).
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace kiln {

struct JsonProblem {
  enum class Kind { kDuplicateKey, kTooDeep, kMalformed };
  Kind kind;
  std::string detail;  // kDuplicateKey: the key; kMalformed: the parser's message (without its prefix)
};

// Parses `text` into `out`; a problem instead when it is malformed, repeats a key or nests past `max_depth`.
std::optional<JsonProblem> parse_json_strict(std::string_view text, int max_depth, nlohmann::json& out);

}  // namespace kiln
