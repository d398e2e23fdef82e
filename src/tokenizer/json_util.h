// Small helpers for reading tokenizer.json with errors that name the JSON path
// of the problem ("model.merges[12]: expected ...").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kiln::tok {

using json = nlohmann::json;

inline std::string jkey(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  std::string out = path;
  out.push_back('.');
  out.append(key);
  return out;
}
inline std::string jidx(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

inline Status json_error(const std::string& path, const std::string& msg) {
  return invalid_argument((path.empty() ? std::string("tokenizer.json") : path) + ": " + msg);
}

// The member `key` of object `obj`, or nullptr when it is absent or null.
inline const json* jfind(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

inline Result<std::string> jstring(const json& obj, const std::string& path, std::string_view key) {
  const json* v = jfind(obj, key);
  if (!v) return json_error(jkey(path, key), "missing (expected a string)");
  if (!v->is_string()) return json_error(jkey(path, key), "expected a string");
  return v->get<std::string>();
}

inline Result<std::string> jstring_or(const json& obj, const std::string& path, std::string_view key,
                                      const std::string& dflt) {
  const json* v = jfind(obj, key);
  if (!v) return dflt;
  if (!v->is_string()) return json_error(jkey(path, key), "expected a string");
  return v->get<std::string>();
}

inline Result<bool> jbool_or(const json& obj, const std::string& path, std::string_view key, bool dflt) {
  const json* v = jfind(obj, key);
  if (!v) return dflt;
  if (!v->is_boolean()) return json_error(jkey(path, key), "expected true or false");
  return v->get<bool>();
}

inline Result<int64_t> jint_or(const json& obj, const std::string& path, std::string_view key, int64_t dflt) {
  const json* v = jfind(obj, key);
  if (!v) return dflt;
  if (!v->is_number_integer()) return json_error(jkey(path, key), "expected an integer");
  return v->get<int64_t>();
}

// A string that must hold exactly one character (Rust `char` fields).
inline Result<std::string> jchar(const json& obj, const std::string& path, std::string_view key,
                                 std::optional<std::string> dflt = std::nullopt) {
  const json* v = jfind(obj, key);
  if (!v) {
    if (dflt) return *dflt;
    return json_error(jkey(path, key), "missing (expected a one-character string)");
  }
  if (!v->is_string()) return json_error(jkey(path, key), "expected a one-character string");
  std::string s = v->get<std::string>();
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  if (n != 1) return json_error(jkey(path, key), "expected a one-character string, got \"" + s + "\"");
  return s;
}

// The "type" of a component object.
inline Result<std::string> jtype(const json& obj, const std::string& path) {
  if (!obj.is_object()) return json_error(path, "expected an object");
  return jstring(obj, path, "type");
}

// The members of a "Sequence" component: obj[key] must be an array; each element is parsed with
// parse(element, element_path) into a Component.
template <typename Component, typename ParseFn>
Result<std::vector<std::unique_ptr<Component>>> jsequence(const json& obj, const std::string& path, const char* key,
                                                          const char* what, ParseFn parse) {
  const json* list = jfind(obj, key);
  const std::string lpath = jkey(path, key);
  if (!list || !list->is_array()) return json_error(lpath, std::string("expected an array of ") + what);
  std::vector<std::unique_ptr<Component>> items;
  for (size_t i = 0; i < list->size(); ++i) {
    KILN_ASSIGN_OR_RETURN(auto item, parse((*list)[i], jidx(lpath, i)));
    items.push_back(std::move(item));
  }
  return items;
}

}  // namespace kiln::tok
