#include "io/strict_json.h"

#include <unordered_set>
#include <vector>

namespace kiln {

namespace {
// Thrown from the parser callback to stop parsing; caught below.
struct DuplicateKey {
  std::string key;
};
struct TooDeep {};
}  // namespace

std::optional<JsonProblem> parse_json_strict(std::string_view text, int max_depth, nlohmann::json& out) {
  using json = nlohmann::json;
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  auto callback = [&keys, max_depth](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        if (depth >= max_depth) throw TooDeep{};
        keys.emplace_back();
        break;
      case json::parse_event_t::array_start:
        if (depth >= max_depth) throw TooDeep{};
        break;
      case json::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!keys.empty() && !keys.back().insert(k).second) throw DuplicateKey{k};
        break;
      }
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  try {
    out = json::parse(text.data(), text.data() + text.size(), callback, /*allow_exceptions=*/true,
                      /*ignore_comments=*/false);
    return std::nullopt;
  } catch (const DuplicateKey& e) {
    return JsonProblem{JsonProblem::Kind::kDuplicateKey, e.key};
  } catch (const TooDeep&) {
    return JsonProblem{JsonProblem::Kind::kTooDeep, ""};
  } catch (const json::exception& e) {
    std::string what = e.what();
    const size_t bracket = what.find("] ");
    if (what.rfind("[json.exception.", 0) == 0 && bracket != std::string::npos) what = what.substr(bracket + 2);
    return JsonProblem{JsonProblem::Kind::kMalformed, what};
  }
}

}  // namespace kiln
