#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend_factory.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/executor_flags.h"
#include "executor/executor.h"
#include "tokenizer/detokenizer.h"
#include "model/engine.h"
#include "model/loaded_model.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

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
  std::vector<FlagSpec> specs = {
      {"engine_dir", true, "engine dir from `kiln build`"},
      {"input_ids", true, "comma-separated prompt token ids, e.g. 1,2,3 (repeatable)"},
      {"input_file", true, "JSONL file: one JSON list of token ids a line; all prompts run concurrently"},
      {"max_output_len", true, "tokens to generate per prompt (request_output_len)"},
      {"json", false, "print one JSON object a prompt (output_ids, log_probs, finish_reason, beams)"},
      {"input_text", true, "prompt text (repeatable); needs --tokenizer_dir"},
      {"tokenizer_dir", true, "folder with tokenizer.json: encodes --input_text, prints output text"},
      {"no_add_special_tokens", false, "encode --input_text without BOS/EOS"},
  };
  for (auto more : {decoding_flag_specs(), executor_flag_specs()}) specs.insert(specs.end(), more.begin(), more.end());
  if (wants_help(argv)) {
    std::fputs(usage("run", "Generates from prompts through the in-flight batching executor (all prompts at once).",
                     specs)
                   .c_str(),
               stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("engine_dir"));
    KILN_RETURN_IF_ERROR(a.require("max_output_len").status());
    KILN_ASSIGN_OR_RETURN(int64_t max_out, a.get_int("max_output_len", 0));
    if (max_out <= 0 || max_out > (1 << 30)) return invalid_argument("--max_output_len must be positive");
    KILN_ASSIGN_OR_RETURN(Request proto, request_template_from(a));
    KILN_ASSIGN_OR_RETURN(ExecutorConfig config, executor_config_from(a));
    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& ids : a.get_all("input_ids")) {
      KILN_ASSIGN_OR_RETURN(auto p, parse_token_ids("input_ids", ids));
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

    KILN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(dir));  // one rank, or every rank of a tp/pp engine
    const Engine& engine = loaded.engine;
    KILN_ASSIGN_OR_RETURN(auto executor, Executor::create(*loaded.runner, config));
    const bool as_json = a.has("json");
    if (!as_json) std::fprintf(stderr, "kiln run: %s\n", executor->kv_plan().c_str());

    // Everything goes in at once; the executor batches it.
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<RequestId> ids;
    for (size_t i = 0; i < prompts.size(); ++i) {
      Request r = proto;
      r.input_ids = prompts[i];
      r.max_new_tokens = static_cast<int32_t>(max_out);
      r.output.return_log_probs = as_json;
      auto id = executor->enqueue(std::move(r));
      if (!id.ok()) return id.status().with_context("prompt " + std::to_string(i));
      ids.push_back(*id);
    }
    auto decode = [&](const std::vector<int32_t>& out) -> Result<std::string> {
      return tok ? tok->decode(out, /*skip_special_tokens=*/true) : Result<std::string>(join_ids(out));
    };
    for (size_t i = 0; i < ids.size(); ++i) {
      if (proto.streaming && !as_json && proto.sampling.beam_width == 1) {
        // Tokens (or UTF-8-safe text) as they arrive; other prompts keep running meanwhile.
        std::unique_ptr<IncrementalDetokenizer> detok;
        if (tok) detok = std::make_unique<IncrementalDetokenizer>(tok, prompts[i], true);
        std::printf("Output [%zu]: ", i);
        bool first = true;
        for (bool done = false; !done;) {
          for (const Response& c : executor->await_responses(ids[i])) {
            if (!c.error.ok()) return c.error.with_context("prompt " + std::to_string(i));
            for (int32_t t : c.output_ids[0]) {
              if (detok) {
                KILN_ASSIGN_OR_RETURN(std::string d, detok->add(t));
                std::fputs(d.c_str(), stdout);
              } else {
                std::printf("%s%d", first ? "" : ",", t);
              }
              first = false;
            }
            std::fflush(stdout);
            if (c.is_final) {
              if (detok) {
                KILN_ASSIGN_OR_RETURN(std::string d, detok->finish());
                std::fputs(d.c_str(), stdout);
              }
              std::printf("\n(%d tokens, %s)\n", c.sequence_lengths[0], finish_reason_name(c.finish_reasons[0]));
              done = true;
            }
          }
        }
        continue;
      }
      KILN_ASSIGN_OR_RETURN(Response r, executor->await_final(ids[i]));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const char* reason = finish_reason_name(r.finish_reasons[0]);
      if (as_json) {
        nlohmann::json out = {{"index", i}, {"input_ids", prompts[i]}, {"output_ids", r.output_ids[0]},
                              {"log_probs", r.output_log_probs.empty() ? std::vector<float>{} : r.output_log_probs[0]},
                              {"finish_reason", reason}};
        if (r.output_ids.size() > 1) {
          nlohmann::json beams = nlohmann::json::array();
          for (size_t b = 0; b < r.output_ids.size(); ++b)
            beams.push_back({{"output_ids", r.output_ids[b]}, {"cum_log_prob", r.cum_log_probs[b]},
                             {"finish_reason", finish_reason_name(r.finish_reasons[b])}});
          out["beams"] = beams;
        }
        if (tok) {
          KILN_ASSIGN_OR_RETURN(std::string text, decode(r.output_ids[0]));
          out["output_text"] = text;
        }
        std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else {
        std::string input;
        if (tok) {
          KILN_ASSIGN_OR_RETURN(input, tok->decode(prompts[i], /*skip_special_tokens=*/false));
        } else {
          input = join_ids(prompts[i]);
        }
        std::printf("Input [%zu]: %s\n", i, input.c_str());
        for (size_t b = 0; b < r.output_ids.size(); ++b) {
          KILN_ASSIGN_OR_RETURN(std::string text, decode(r.output_ids[b]));
          if (r.output_ids.size() > 1) std::printf("Output [%zu] beam %zu: %s\n", i, b, text.c_str());
          else std::printf("Output [%zu]: %s\n", i, text.c_str());
        }
        std::printf("(%zu tokens, %s, done at %.3f s)\n", r.output_ids[0].size(), reason, secs);
      }
      std::fflush(stdout);
    }
    executor->shutdown();
    if (!as_json) {
      const ExecutorStats st = executor->stats();
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "kiln run: %zu prompts, %lld generated tokens in %.3f s (%.1f tokens/s), %lld iterations\n",
                   prompts.size(), static_cast<long long>(st.generated_tokens), secs, st.generated_tokens / secs,
                   static_cast<long long>(st.iterations));
    }
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("run", s);
}

}  // namespace kiln::cli
