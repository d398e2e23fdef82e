// kiln chat: an interactive conversation with an engine in the terminal. Each user line is added to the
// conversation, rendered with the model's chat template (the tokenizer in the engine dir, or
// --tokenizer_dir), and the reply streams out as it is generated (UTF-8-safe text deltas). Commands:
// /reset starts over, /exit (or end of input) quits.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/backend_factory.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/executor_flags.h"
#include "executor/executor.h"
#include "model/engine.h"
#include "model/loaded_model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {

int cmd_chat(const std::vector<std::string>& argv) {
  std::vector<FlagSpec> specs = {
      {"engine_dir", true, "engine dir from `kiln build`"},
      {"tokenizer_dir", true, "folder with tokenizer.json and the chat template (default: the engine dir)"},
      {"system", true, "a system message to start the conversation with"},
      {"max_output_len", true, "tokens per reply at most (default 512)"},
      {"prompt", true, "answer this one message and exit (no interaction)"},
  };
  for (auto more : {decoding_flag_specs(), executor_flag_specs()}) specs.insert(specs.end(), more.begin(), more.end());
  if (wants_help(argv)) {
    std::fputs(usage("chat", "Chats with a model in the terminal, replies streamed as they are generated.", specs).c_str(),
               stdout);
    return 0;
  }
  auto body = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string dir, a.require("engine_dir"));
    KILN_ASSIGN_OR_RETURN(int64_t max_out, a.get_int("max_output_len", 512));
    if (max_out <= 0) return invalid_argument("--max_output_len must be positive");
    KILN_ASSIGN_OR_RETURN(Request proto, request_template_from(a));
    if (proto.sampling.beam_width > 1) return invalid_argument("kiln chat streams one reply: --beam_width must be 1");
    KILN_ASSIGN_OR_RETURN(ExecutorConfig config, executor_config_from(a));
    const std::string tok_dir = a.get("tokenizer_dir").value_or(dir);
    auto tok_or = Tokenizer::from_dir(tok_dir);
    if (!tok_or.ok())
      return tok_or.status().with_context("kiln chat needs the model's tokenizer (--tokenizer_dir, or an engine built "
                                          "from a checkpoint that carries one)");
    std::shared_ptr<const Tokenizer> tok = *tok_or;
    if (!tok->config().contains("chat_template"))
      return failed_precondition(tok_dir + ": tokenizer_config.json has no chat_template; this model is not a chat model");

    KILN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(dir));  // one rank, or every rank of a tp/pp engine
    const Engine& engine = loaded.engine;
    KILN_ASSIGN_OR_RETURN(auto executor, Executor::create(*loaded.runner, config));

    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (auto sys = a.get("system")) messages.push_back({{"role", "system"}, {"content", *sys}});
    const std::optional<std::string> one_shot = a.get("prompt");
    const bool interactive = !one_shot;
    if (interactive)
      std::fprintf(stderr, "kiln chat: %s (weights %s). /reset starts over, /exit quits.\n", dir.c_str(),
                   engine.build.weight_format().c_str());
    for (;;) {
      std::string line;
      if (one_shot) {
        line = *one_shot;
      } else {
        std::fputs("\n> ", stdout);
        std::fflush(stdout);
        if (!std::getline(std::cin, line) || line == "/exit") break;
        if (line == "/reset") {
          while (!messages.empty() && messages.back()["role"] != "system") messages.erase(messages.size() - 1);
          continue;
        }
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      }
      messages.push_back({{"role", "user"}, {"content", line}});
      KILN_ASSIGN_OR_RETURN(std::string prompt, apply_chat_template(tok->config(), messages, true));
      // The template writes the special tokens itself (as transformers' chat pipeline, no extra BOS).
      KILN_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->encode(prompt, false));
      if (static_cast<int64_t>(ids.size()) > engine.build.max_input_len) {
        std::fprintf(stderr, "kiln chat: the conversation is %zu tokens, over the engine's max_input_len %lld; /reset\n",
                     ids.size(), static_cast<long long>(engine.build.max_input_len));
        messages.erase(messages.size() - 1);
        if (one_shot) return resource_exhausted("the prompt is longer than the engine's max_input_len");
        continue;
      }
      Request r = proto;
      r.input_ids = ids;
      r.max_new_tokens = static_cast<int32_t>(
          std::min<int64_t>(max_out, engine.build.max_seq_len - static_cast<int64_t>(ids.size())));
      r.streaming = true;
      KILN_ASSIGN_OR_RETURN(RequestId id, executor->enqueue(std::move(r)));
      IncrementalDetokenizer detok(tok, ids, /*skip_special_tokens=*/true);
      std::string reply;
      for (bool done = false; !done;) {
        for (const Response& c : executor->await_responses(id)) {
          if (!c.error.ok()) return c.error;
          for (int32_t t : c.output_ids[0]) {
            KILN_ASSIGN_OR_RETURN(std::string d, detok.add(t));
            reply += d;
            std::fputs(d.c_str(), stdout);
          }
          std::fflush(stdout);
          if (c.is_final) {
            KILN_ASSIGN_OR_RETURN(std::string d, detok.finish());
            reply += d;
            std::fputs(d.c_str(), stdout);
            std::fputs("\n", stdout);
            std::fflush(stdout);
            done = true;
          }
        }
      }
      messages.push_back({{"role", "assistant"}, {"content", reply}});
      if (one_shot) break;
    }
    executor->shutdown();
    return {};
  };
  Status s = body();
  return s.ok() ? 0 : report_error("chat", s);
}

}  // namespace kiln::cli
