#include "server/model_config_loader.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string_view>

namespace kiln::server {

namespace {

// Keeps the first error the text-format parser reports (it stops at the first one anyway).
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  bool has_error() const { return has_error_; }
  int line() const { return line_; }
  int column() const { return column_; }
  const std::string& message() const { return message_; }

#if GOOGLE_PROTOBUF_VERSION >= 4022000
  void RecordError(int line, google::protobuf::io::ColumnNumber column, absl::string_view message) override {
    record(line, column, std::string(message));
  }
#else
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    record(line, column, message);
  }
#endif

 private:
  void record(int line, int column, std::string message) {
    if (has_error_) return;
    has_error_ = true;
    line_ = line;
    column_ = column;
    message_ = std::move(message);
  }
  bool has_error_ = false;
  int line_ = -1;
  int column_ = -1;
  std::string message_;
};

// Line `line` (0-based) of `text`, without its newline; empty past the end.
std::string_view line_of(std::string_view text, int line) {
  size_t begin = 0;
  for (int i = 0; i < line; ++i) {
    size_t nl = text.find('\n', begin);
    if (nl == std::string_view::npos) return {};
    begin = nl + 1;
  }
  size_t end = text.find('\n', begin);
  return text.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin);
}

// The protobuf tokenizer counts a tab as a move to the next multiple of 8; messages count characters.
size_t char_index(std::string_view line, int tokenizer_column) {
  int col = 0;
  size_t i = 0;
  for (; i < line.size() && col < tokenizer_column; ++i) col = line[i] == '\t' ? col + 8 - col % 8 : col + 1;
  return i;
}

struct ParseError {
  int line;       // 1-based
  size_t column;  // 1-based, in characters
  std::string message;
};

// The collector's error, positioned and worded for the user. Protobuf reports an unknown field at the token
// after its name and says `Message type "inference.ModelInput" has no field named "foo".`; this points at the
// name itself and says `unknown field "foo" in inference.ModelInput`.
ParseError describe(std::string_view text, const FirstErrorCollector& errors) {
  std::string_view line = line_of(text, errors.line());
  ParseError e{errors.line() + 1, char_index(line, errors.column()) + 1, errors.message()};
  static const std::regex kNoField(R"re(^Message type "([^"]*)" has no field named "([^"]*)"\.?$)re");
  std::smatch m;
  if (e.message.size() >= 5 && e.message.compare(e.message.size() - 5, 5, "got: ") == 0) {
    e.message += "end of file";  // the tokenizer's wording when the text stops inside a message
  } else if (std::regex_match(errors.message(), m, kNoField)) {
    const std::string field = m[2].str();
    e.message = "unknown field \"" + field + "\" in " + m[1].str();
    size_t at = field.empty() ? std::string_view::npos : line.substr(0, e.column - 1).rfind(field);
    if (at != std::string_view::npos) e.column = at + 1;
  }
  return e;
}

std::string display_label(const std::string& path, const std::string& display_name) {
  if (!display_name.empty()) return display_name;
  std::string base = std::filesystem::path(path).filename().string();
  return base.empty() ? std::string("config.pbtxt") : base;
}

// A user-supplied name quoted for an error message: printable ASCII only, at most 64 characters.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < 64; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > 64) out += "...";
  return out + "\"";
}

}  // namespace

Result<inference::ModelConfig> parse_model_config(const std::string& text, const std::string& display_name) {
  if (text.size() > kMaxModelConfigBytes)
    return invalid_argument(display_name + ": larger than " + std::to_string(kMaxModelConfigBytes >> 20) + " MiB");
  FirstErrorCollector errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  // Strict: unknown fields and extensions are errors, a singular field given twice is an error.
  parser.AllowUnknownField(false);
  parser.AllowUnknownExtension(false);
  inference::ModelConfig config;
  if (!parser.ParseFromString(text, &config)) {
    if (!errors.has_error()) return invalid_argument(display_name + ": not a valid model configuration");
    ParseError e = describe(text, errors);
    return invalid_argument(display_name + ":" + std::to_string(e.line) + ":" + std::to_string(e.column) + ": " +
                            e.message);
  }
  return config;
}

Result<inference::ModelConfig> load_model_config(const std::string& path, const std::string& display_name) {
  const std::string label = display_label(path, display_name);
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) return not_found(label + ": not found");
  if (!std::filesystem::is_regular_file(status)) return invalid_argument(label + ": not a regular file");
  auto size = std::filesystem::file_size(path, ec);
  if (ec) return invalid_argument(label + ": cannot be read");
  if (size > kMaxModelConfigBytes)
    return invalid_argument(label + ": larger than " + std::to_string(kMaxModelConfigBytes >> 20) + " MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid_argument(label + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return invalid_argument(label + ": cannot be read");
  return parse_model_config(text.str(), label);
}

Status check_model_name(const std::string& name) {
  if (name.empty()) return invalid_argument("model name is empty");
  if (name.size() > kMaxModelNameLength)
    return invalid_argument("model name is longer than " + std::to_string(kMaxModelNameLength) + " characters");
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-';
    if (!ok)
      return invalid_argument("model name " + quoted(name) +
                              " is not allowed: use only letters, digits, '_', '.' and '-'");
  }
  if (name[0] == '.') return invalid_argument("model name " + quoted(name) + " is not allowed: it starts with '.'");
  return Status::ok_status();
}

std::optional<std::string> model_parameter(const inference::ModelConfig& config, const std::string& key) {
  auto it = config.parameters().find(key);
  if (it == config.parameters().end()) return std::nullopt;
  return it->second.string_value();
}

std::vector<std::string> unused_parameters(const inference::ModelConfig& config, const std::set<std::string>& used) {
  std::vector<std::string> unused;
  for (const auto& [key, value] : config.parameters())
    if (!used.count(key)) unused.push_back(key);
  std::sort(unused.begin(), unused.end());
  return unused;
}

}  // namespace kiln::server
