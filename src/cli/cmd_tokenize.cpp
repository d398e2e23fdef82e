// kiln tokenize / kiln chat-template: the tokenizer and chat template from the command line.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

// Calls fn(line_number, json) for every non-blank line of a JSONL file.
Status for_each_jsonl(const std::string& path, const std::function<Status(int, const nlohmann::json&)>& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("--input " + path + ": cannot open");
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return invalid_argument(path + ":" + std::to_string(lineno) + ": not valid JSON");
    KILN_RETURN_IF_ERROR(fn(lineno, j).with_context(path + ":" + std::to_string(lineno)));
  }
  return {};
}

}  // namespace

int cmd_tokenize(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"tokenizer_dir", true, "folder with tokenizer.json (+ tokenizer_config.json, generation_config.json)"},
      {"input", true, "JSONL: a JSON string (or {\"text\": ...}) a line; with --decode a list of ids (or {\"ids\": [...]})"},
      {"add_special_tokens", false, "add BOS/EOS as the tokenizer's post-processor says"},
      {"decode", false, "ids -> text instead of text -> ids"},
      {"skip_special_tokens", false, "with --decode: drop special tokens"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("tokenize", "Encodes text to token ids, or decodes ids to text, one JSON object a line.", specs).c_str(), stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("tokenizer_dir"));
    KILN_ASSIGN_OR_RETURN(std::string input, a.require("input"));
    KILN_ASSIGN_OR_RETURN(auto tok, Tokenizer::from_dir(dir));
    const bool decode = a.has("decode"), add_special = a.has("add_special_tokens"), skip = a.has("skip_special_tokens");
    return for_each_jsonl(input, [&](int, const nlohmann::json& j) -> Status {
      if (decode) {
        const nlohmann::json& ids_json = j.is_object() && j.contains("ids") ? j["ids"] : j;
        if (!ids_json.is_array()) return invalid_argument("expected a JSON list of token ids");
        std::vector<int32_t> ids;
        for (const auto& v : ids_json) {
          if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
            return invalid_argument("token ids must be non-negative integers, got " + v.dump());
          ids.push_back(v.get<int32_t>());
        }
        KILN_ASSIGN_OR_RETURN(std::string text, tok->decode(ids, skip));
        std::printf("%s\n", nlohmann::json{{"text", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else {
        const nlohmann::json& text_json = j.is_object() && j.contains("text") ? j["text"] : j;
        if (!text_json.is_string()) return invalid_argument("expected a JSON string (or {\"text\": ...})");
        KILN_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->encode(text_json.get_ref<const std::string&>(), add_special));
        std::printf("%s\n", nlohmann::json{{"ids", ids}}.dump().c_str());
      }
      return {};
    });
  };
  Status s = run();
  return s.ok() ? 0 : report_error("tokenize", s);
}

int cmd_chat_template(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"tokenizer_dir", true, "folder whose tokenizer_config.json holds the chat_template"},
      {"messages", true, "JSON file: a list of {\"role\", \"content\"} messages"},
      {"add_generation_prompt", false, "end with the prompt for the assistant's turn"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("chat-template", "Renders the model's chat template for a conversation.", specs).c_str(), stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("tokenizer_dir"));
    KILN_ASSIGN_OR_RETURN(std::string path, a.require("messages"));
    KILN_ASSIGN_OR_RETURN(auto tok, Tokenizer::from_dir(dir));
    std::ifstream in(path, std::ios::binary);
    if (!in) return not_found("--messages " + path + ": cannot open");
    auto messages = nlohmann::json::parse(in, nullptr, false);
    if (messages.is_discarded() || !messages.is_array())
      return invalid_argument("--messages " + path + ": expected a JSON list of messages");
    KILN_ASSIGN_OR_RETURN(std::string prompt, apply_chat_template(tok->config(), messages, a.has("add_generation_prompt")));
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("chat-template", s);
}

}  // namespace kiln::cli
