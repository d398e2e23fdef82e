// kiln: convert -> build -> run (-> serve). See README.md for the CLI reference.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {
const char* kUsage =
    "kiln " KILN_VERSION " - LLM inference: Hugging Face checkpoint -> engine -> text\n\n"
    "usage: kiln COMMAND [flags]   (kiln COMMAND --help for its flags)\n\n"
    "commands:\n"
    "  convert   Hugging Face model folder or GGUF file -> Kiln checkpoint dir\n"
    "  build     checkpoint dir -> engine dir (limits validated, memory planned, weights packed)\n"
    "  run       generate from token ids or text with an engine (in-flight batching, sampling, beams)\n"
    "  bench     offline benchmark: tokens/s, time to first token, inter-token latency\n"
    "  chat      chat with a model in the terminal (its chat template, streamed replies)\n"
    "  serve     serve a model repository over Triton's HTTP and gRPC protocols (ports 8000/8001/8002)\n"
    "  repo init write a model repository (tensorrt_llm + text models) for an engine and its tokenizer\n"
    "  tokenize  text -> token ids (or --decode ids -> text) with a tokenizer.json\n"
    "  chat-template  render a model's chat template for a conversation\n"
    "  version   print the version\n";
}

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "convert") return kiln::cli::cmd_convert(args);
  if (cmd == "build") return kiln::cli::cmd_build(args);
  if (cmd == "run") return kiln::cli::cmd_run(args);
  if (cmd == "bench") return kiln::cli::cmd_bench(args);
  if (cmd == "chat") return kiln::cli::cmd_chat(args);
  if (cmd == "serve") return kiln::cli::cmd_serve(args);
  if (cmd == "repo") return kiln::cli::cmd_repo(args);
  if (cmd == "tokenize") return kiln::cli::cmd_tokenize(args);
  if (cmd == "chat-template") return kiln::cli::cmd_chat_template(args);
  if (cmd == "version" || cmd == "--version") {
    std::printf("kiln %s\n", KILN_VERSION);
    return 0;
  }
  std::fprintf(stderr, "kiln: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
