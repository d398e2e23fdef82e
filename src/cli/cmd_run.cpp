#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "executor/sequence_runner.h"
#include "model/engine.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

Result<std::vector<int32_t>> parse_id_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    int32_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      return invalid_argument("--input_ids: '" + item + "' is not a token id (expected e.g. 1,2,3)");
    ids.push_back(v);
    pos = comma + 1;
  }
  return ids;
}

Result<std::vector<std::vector<int32_t>>> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("--input_file " + path + ": cannot open");
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    const std::string where = path + ":" + std::to_string(lineno) + ": ";
    if (j.is_discarded() || !j.is_array()) return invalid_argument(where + "expected a JSON list of token ids");
    std::vector<int32_t> ids;
    for (const auto& v : j) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
        return invalid_argument(where + "token ids must be non-negative integers, got " + v.dump());
      ids.push_back(v.get<int32_t>());
    }
    prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) return invalid_argument("--input_file " + path + " holds no prompts");
  return prompts;
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

}  // namespace

int cmd_run(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"engine_dir", true, "engine dir from `kiln build`"},
      {"input_ids", true, "comma-separated prompt token ids, e.g. 1,2,3 (repeatable)"},
      {"input_file", true, "JSONL file: one JSON list of token ids a line"},
      {"max_output_len", true, "tokens to generate per prompt"},
      {"json", false, "print one JSON object a prompt (output_ids, log_probs, finish_reason)"},
      {"ignore_eos", false, "do not stop at the model's EOS tokens"},
      {"input_text", true, "prompt text (repeatable); needs --tokenizer_dir"},
      {"tokenizer_dir", true, "folder with tokenizer.json: encodes --input_text, prints output text"},
      {"no_add_special_tokens", false, "encode --input_text without BOS/EOS"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("run", "Greedy generation from token ids, one prompt at a time.", specs).c_str(), stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("engine_dir"));
    KILN_RETURN_IF_ERROR(a.require("max_output_len").status());
    KILN_ASSIGN_OR_RETURN(int64_t max_out, a.get_int("max_output_len", 0));
    if (max_out <= 0) return invalid_argument("--max_output_len must be positive");
    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& ids : a.get_all("input_ids")) {
      KILN_ASSIGN_OR_RETURN(auto p, parse_id_list(ids));
      prompts.push_back(std::move(p));
    }
    if (auto f = a.get("input_file")) {
      KILN_ASSIGN_OR_RETURN(auto more, read_prompts(*f));
      prompts.insert(prompts.end(), more.begin(), more.end());
    }
    std::shared_ptr<const Tokenizer> tok;
    if (auto dir = a.get("tokenizer_dir")) {
      KILN_ASSIGN_OR_RETURN(tok, Tokenizer::from_dir(*dir));
    }
    const std::vector<std::string> texts = a.get_all("input_text");
    if (!texts.empty() && !tok) return invalid_argument("--input_text needs --tokenizer_dir");
    for (const std::string& text : texts) {
      KILN_ASSIGN_OR_RETURN(auto ids, tok->encode(text, !a.has("no_add_special_tokens")));
      if (ids.empty()) return invalid_argument("--input_text '" + text + "' encodes to no tokens");
      prompts.push_back(std::move(ids));
    }
    if (prompts.empty()) return invalid_argument("give --input_ids, --input_file or --input_text");

    KILN_ASSIGN_OR_RETURN(Engine engine, load_engine(dir));
    CpuBackend backend;
    KILN_ASSIGN_OR_RETURN(auto model, LlamaModel::load(engine, backend));
    KILN_ASSIGN_OR_RETURN(auto runner, SequenceRunner::create(*model, backend));
    GreedyOptions opt;
    opt.max_new_tokens = max_out;
    opt.stop_at_eos = !a.has("ignore_eos");
    const bool as_json = a.has("json");
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto t0 = std::chrono::steady_clock::now();
      KILN_ASSIGN_OR_RETURN(GreedyResult r, runner->generate(prompts[i], opt));
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const char* reason = r.stopped_at_eos ? "eos" : "length";
      std::string text;
      if (tok) {
        KILN_ASSIGN_OR_RETURN(text, tok->decode(r.output_ids, /*skip_special_tokens=*/true));
      }
      if (as_json) {
        nlohmann::json out = {{"index", i}, {"input_ids", prompts[i]}, {"output_ids", r.output_ids},
                              {"log_probs", r.log_probs}, {"finish_reason", reason}};
        if (tok) out["output_text"] = text;
        std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else if (tok) {
        KILN_ASSIGN_OR_RETURN(std::string input, tok->decode(prompts[i], /*skip_special_tokens=*/false));
        std::printf("Input [%zu]: %s\nOutput [%zu]: %s\n(%zu tokens, %s, %.3f s)\n", i, input.c_str(), i, text.c_str(),
                    r.output_ids.size(), reason, secs);
      } else {
        std::printf("Input [%zu]: %s\nOutput [%zu]: %s\n(%zu tokens, %s, %.3f s)\n", i, join_ids(prompts[i]).c_str(), i,
                    join_ids(r.output_ids).c_str(), r.output_ids.size(), reason, secs);
      }
      std::fflush(stdout);
    }
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("run", s);
}

}  // namespace kiln::cli
