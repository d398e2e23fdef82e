// kiln repo init: writes a ready Triton-layout model repository for an engine and its tokenizer:
// tensorrt_llm (token ids), preprocessing, postprocessing, ensemble and tensorrt_llm_bls (text), each with
// its config.pbtxt and version folder 1/. Only writes files, so it is in every build (the server need not
// be).
//
// The engine is linked, not copied, into tensorrt_llm/1 by default: engines are gigabytes and are mapped
// read-only, so a symlink per file costs nothing and cannot go stale halfway; --copy_engine copies instead
// (a repository that moves to another machine). The tokenizer is referred to by its absolute path.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "model/engine.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct TensorDef {
  const char* name;
  const char* type;  // TYPE_INT32 ...
  const char* dims;  // "-1", "2, -1"
  bool optional = false;
  bool scalar = false;  // dims [1] reshaped to [] (the tensorrt_llm model's scalars, as the backend's config)
};

// The tensorrt_llm model's contract (docs/PROTOCOL.md), in the backend's order.
const TensorDef kTrtllmInputs[] = {
    {"input_ids", "TYPE_INT32", "-1"},
    {"input_lengths", "TYPE_INT32", "1", false, true},
    {"request_output_len", "TYPE_INT32", "1", false, true},
    {"draft_input_ids", "TYPE_INT32", "-1", true},
    {"draft_logits", "TYPE_FP32", "-1, -1", true},
    {"draft_acceptance_threshold", "TYPE_FP32", "1", true, true},
    {"end_id", "TYPE_INT32", "1", true, true},
    {"pad_id", "TYPE_INT32", "1", true, true},
    {"stop_words_list", "TYPE_INT32", "2, -1", true},
    {"bad_words_list", "TYPE_INT32", "2, -1", true},
    {"embedding_bias", "TYPE_FP32", "-1", true},
    {"beam_width", "TYPE_INT32", "1", true, true},
    {"temperature", "TYPE_FP32", "1", true, true},
    {"runtime_top_k", "TYPE_INT32", "1", true, true},
    {"runtime_top_p", "TYPE_FP32", "1", true, true},
    {"runtime_top_p_min", "TYPE_FP32", "1", true, true},
    {"runtime_top_p_decay", "TYPE_FP32", "1", true, true},
    {"runtime_top_p_reset_ids", "TYPE_INT32", "1", true, true},
    {"len_penalty", "TYPE_FP32", "1", true, true},
    {"early_stopping", "TYPE_BOOL", "1", true, true},
    {"repetition_penalty", "TYPE_FP32", "1", true, true},
    {"min_length", "TYPE_INT32", "1", true, true},
    {"beam_search_diversity_rate", "TYPE_FP32", "1", true, true},
    {"presence_penalty", "TYPE_FP32", "1", true, true},
    {"frequency_penalty", "TYPE_FP32", "1", true, true},
    {"random_seed", "TYPE_UINT64", "1", true, true},
    {"return_log_probs", "TYPE_BOOL", "1", true, true},
    {"return_context_logits", "TYPE_BOOL", "1", true, true},
    {"return_generation_logits", "TYPE_BOOL", "1", true, true},
    {"stop", "TYPE_BOOL", "1", true},
    {"streaming", "TYPE_BOOL", "1", true},
    {"prompt_embedding_table", "TYPE_FP16", "-1, -1", true},
    {"prompt_vocab_size", "TYPE_INT32", "1", true, true},
    {"lora_task_id", "TYPE_UINT64", "1", true, true},
    {"lora_weights", "TYPE_FP16", "-1, -1", true},
    {"lora_config", "TYPE_INT32", "-1, 3", true},
};
const TensorDef kTrtllmOutputs[] = {
    {"output_ids", "TYPE_INT32", "-1, -1"},    {"sequence_length", "TYPE_INT32", "-1"},
    {"cum_log_probs", "TYPE_FP32", "-1"},      {"output_log_probs", "TYPE_FP32", "-1, -1"},
    {"context_logits", "TYPE_FP32", "-1, -1"}, {"generation_logits", "TYPE_FP32", "-1, -1, -1"},
};

const TensorDef kPreInputs[] = {
    {"QUERY", "TYPE_STRING", "1"},
    {"REQUEST_OUTPUT_LEN", "TYPE_INT32", "1"},
    {"BAD_WORDS_DICT", "TYPE_STRING", "-1", true},
    {"STOP_WORDS_DICT", "TYPE_STRING", "-1", true},
    {"EMBEDDING_BIAS_WORDS", "TYPE_STRING", "-1", true},
    {"EMBEDDING_BIAS_WEIGHTS", "TYPE_FP32", "-1", true},
    {"END_ID", "TYPE_INT32", "1", true},
    {"PAD_ID", "TYPE_INT32", "1", true},
};
const TensorDef kPreOutputs[] = {
    {"INPUT_ID", "TYPE_INT32", "-1"},         {"REQUEST_INPUT_LEN", "TYPE_INT32", "1"},
    {"BAD_WORDS_IDS", "TYPE_INT32", "2, -1"}, {"STOP_WORDS_IDS", "TYPE_INT32", "2, -1"},
    {"EMBEDDING_BIAS", "TYPE_FP32", "-1"},    {"REQUEST_OUTPUT_LEN", "TYPE_INT32", "-1"},
    {"OUT_END_ID", "TYPE_INT32", "1"},        {"OUT_PAD_ID", "TYPE_INT32", "1"},
};

const TensorDef kPostInputs[] = {
    {"TOKENS_BATCH", "TYPE_INT32", "-1, -1"},        {"SEQUENCE_LENGTH", "TYPE_INT32", "-1"},
    {"CUM_LOG_PROBS", "TYPE_FP32", "-1", true},      {"OUTPUT_LOG_PROBS", "TYPE_FP32", "-1, -1", true},
    {"CONTEXT_LOGITS", "TYPE_FP32", "-1, -1", true}, {"GENERATION_LOGITS", "TYPE_FP32", "-1, -1, -1", true},
};
const TensorDef kPostOutputs[] = {
    {"OUTPUT", "TYPE_STRING", "-1"},
    {"OUT_CUM_LOG_PROBS", "TYPE_FP32", "-1"},
    {"OUT_OUTPUT_LOG_PROBS", "TYPE_FP32", "-1, -1"},
    {"OUT_CONTEXT_LOGITS", "TYPE_FP32", "-1, -1"},
    {"OUT_GENERATION_LOGITS", "TYPE_FP32", "-1, -1, -1"},
};

// The text models' inputs (ensemble and tensorrt_llm_bls; both also take exclude_input_in_output).
const TensorDef kTextInputs[] = {
    {"text_input", "TYPE_STRING", "1"},
    {"max_tokens", "TYPE_INT32", "1"},
    {"bad_words", "TYPE_STRING", "-1", true},
    {"stop_words", "TYPE_STRING", "-1", true},
    {"end_id", "TYPE_INT32", "1", true},
    {"pad_id", "TYPE_INT32", "1", true},
    {"top_k", "TYPE_INT32", "1", true},
    {"top_p", "TYPE_FP32", "1", true},
    {"temperature", "TYPE_FP32", "1", true},
    {"length_penalty", "TYPE_FP32", "1", true},
    {"repetition_penalty", "TYPE_FP32", "1", true},
    {"min_length", "TYPE_INT32", "1", true},
    {"presence_penalty", "TYPE_FP32", "1", true},
    {"frequency_penalty", "TYPE_FP32", "1", true},
    {"random_seed", "TYPE_UINT64", "1", true},
    {"return_log_probs", "TYPE_BOOL", "1", true},
    {"return_context_logits", "TYPE_BOOL", "1", true},
    {"return_generation_logits", "TYPE_BOOL", "1", true},
    {"beam_width", "TYPE_INT32", "1", true},
    {"stream", "TYPE_BOOL", "1", true},
    {"embedding_bias_words", "TYPE_STRING", "-1", true},
    {"embedding_bias_weights", "TYPE_FP32", "-1", true},
};
const TensorDef kTextOutputs[] = {
    {"text_output", "TYPE_STRING", "-1"},
    {"cum_log_probs", "TYPE_FP32", "-1"},
    {"output_log_probs", "TYPE_FP32", "-1, -1"},
    {"context_logits", "TYPE_FP32", "-1, -1"},
    {"generation_logits", "TYPE_FP32", "-1, -1, -1"},
};

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

template <size_t N>
std::string tensors(const char* field, const TensorDef (&defs)[N], const std::vector<TensorDef>& extra = {}) {
  std::vector<TensorDef> all(std::begin(defs), std::end(defs));
  all.insert(all.end(), extra.begin(), extra.end());
  std::ostringstream os;
  os << field << " [\n";
  for (size_t i = 0; i < all.size(); ++i) {
    const TensorDef& t = all[i];
    os << "  {\n    name: \"" << t.name << "\"\n    data_type: " << t.type << "\n    dims: [ " << t.dims
       << " ]\n";
    if (t.scalar) os << "    reshape: { shape: [ ] }\n";
    if (t.optional) os << "    optional: true\n";
    os << "  }" << (i + 1 < all.size() ? "," : "") << "\n";
  }
  os << "]\n";
  return os.str();
}

std::string parameter(const std::string& key, const std::string& value) {
  return "parameters: {\n  key: " + quoted(key) + "\n  value: { string_value: " + quoted(value) + " }\n}\n";
}

std::string header(const std::string& what, const std::string& name, const std::string& backend_line,
                   int64_t max_batch_size) {
  return "# " + what +
         "\n# Written by `kiln repo init` (kiln " KILN_VERSION "); kiln serves this model natively.\n\n" +
         "name: " + quoted(name) + "\n" + backend_line +
         "\nmax_batch_size: " + std::to_string(max_batch_size) + "\n\n";
}

const char* kCpuInstance = "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n";

std::string decoupled_block(bool decoupled) {
  return std::string("model_transaction_policy {\n  decoupled: ") + (decoupled ? "true" : "false") +
         "\n}\n\n";
}

struct RepoOptions {
  std::string engine_dir, tokenizer_dir, output;
  bool decoupled = false, copy_engine = false, kv_reuse = false;
  int64_t max_batch_size = 0, max_beam_width = 1;
  std::string policy = "guaranteed_no_evict";
  double kv_fraction = 0.9;
  std::optional<int64_t> kv_tokens;
};

std::string trtllm_config(const RepoOptions& o, const std::string& engine_in_repo) {
  std::string s = header("The engine: token ids in, token ids out (docs/PROTOCOL.md).", "tensorrt_llm",
                         "backend: \"tensorrtllm\"", o.max_batch_size);
  s += decoupled_block(o.decoupled);
  s += tensors("input", kTrtllmInputs) + tensors("output", kTrtllmOutputs) + kCpuInstance;
  s += parameter("gpt_model_type", "inflight_fused_batching");
  s += parameter("gpt_model_path", engine_in_repo);
  s += parameter("max_beam_width", std::to_string(o.max_beam_width));
  s += parameter("batch_scheduler_policy", o.policy);
  std::ostringstream fraction;
  fraction << o.kv_fraction;
  s += parameter("kv_cache_free_gpu_mem_fraction", fraction.str());
  if (o.kv_tokens) s += parameter("max_tokens_in_paged_kv_cache", std::to_string(*o.kv_tokens));
  s += parameter("enable_kv_cache_reuse", o.kv_reuse ? "true" : "false");
  s += parameter("enable_chunked_context", "true");
  // The prompt is not echoed in output_ids (the seed's token-level config echoes it; clients of a new
  // repository should not have to slice it off).
  s += parameter("exclude_input_in_output", "true");
  return s;
}

std::string preprocessing_config(const RepoOptions& o, const std::string& tokenizer) {
  std::string s = header("Text -> the tensorrt_llm model's token inputs.", "preprocessing",
                         "backend: \"python\"", o.max_batch_size);
  s += tensors("input", kPreInputs) + tensors("output", kPreOutputs) + kCpuInstance;
  s += parameter("tokenizer_dir", tokenizer);
  s += parameter("tokenizer_type", "auto");
  // As `kiln run --input_text`: the tokenizer's own special tokens (e.g. BOS) lead the prompt.
  s += parameter("add_special_tokens", "True");
  return s;
}

std::string postprocessing_config(const RepoOptions& o, const std::string& tokenizer) {
  std::string s = header("Output ids -> text.", "postprocessing", "backend: \"python\"", o.max_batch_size);
  s += tensors("input", kPostInputs) + tensors("output", kPostOutputs) + kCpuInstance;
  s += parameter("tokenizer_dir", tokenizer);
  s += parameter("tokenizer_type", "auto");
  s += parameter("skip_special_tokens", "True");
  return s;
}

std::string map_entries(const char* field, const std::vector<std::pair<const char*, const char*>>& m) {
  std::string s;
  for (const auto& [k, v] : m)
    s += std::string("      ") + field + " { key: \"" + k + "\" value: \"" + v + "\" }\n";
  return s;
}

std::string ensemble_config(const RepoOptions& o) {
  std::string s = header("Text in, text out: preprocessing -> tensorrt_llm -> postprocessing.", "ensemble",
                         "platform: \"ensemble\"", o.max_batch_size);
  // exclude_input_in_output is read by kiln's ensemble itself (no step takes it).
  s += tensors("input", kTextInputs, {{"exclude_input_in_output", "TYPE_BOOL", "1", true}});
  s += tensors("output", kTextOutputs);
  s += "ensemble_scheduling {\n  step [\n    {\n      model_name: \"preprocessing\"\n      model_version: "
       "-1\n";
  s += map_entries("input_map", {{"QUERY", "text_input"},
                                 {"REQUEST_OUTPUT_LEN", "max_tokens"},
                                 {"BAD_WORDS_DICT", "bad_words"},
                                 {"STOP_WORDS_DICT", "stop_words"},
                                 {"EMBEDDING_BIAS_WORDS", "embedding_bias_words"},
                                 {"EMBEDDING_BIAS_WEIGHTS", "embedding_bias_weights"},
                                 {"END_ID", "end_id"},
                                 {"PAD_ID", "pad_id"}});
  s += map_entries("output_map", {{"REQUEST_INPUT_LEN", "_REQUEST_INPUT_LEN"},
                                  {"INPUT_ID", "_INPUT_ID"},
                                  {"REQUEST_OUTPUT_LEN", "_REQUEST_OUTPUT_LEN"},
                                  {"STOP_WORDS_IDS", "_STOP_WORDS_IDS"},
                                  {"BAD_WORDS_IDS", "_BAD_WORDS_IDS"},
                                  {"EMBEDDING_BIAS", "_EMBEDDING_BIAS"},
                                  {"OUT_END_ID", "_PREPROCESSOR_END_ID"},
                                  {"OUT_PAD_ID", "_PREPROCESSOR_PAD_ID"}});
  s += "    },\n    {\n      model_name: \"tensorrt_llm\"\n      model_version: -1\n";
  s += map_entries("input_map", {{"input_ids", "_INPUT_ID"},
                                 {"input_lengths", "_REQUEST_INPUT_LEN"},
                                 {"request_output_len", "_REQUEST_OUTPUT_LEN"},
                                 {"end_id", "_PREPROCESSOR_END_ID"},
                                 {"pad_id", "_PREPROCESSOR_PAD_ID"},
                                 {"embedding_bias", "_EMBEDDING_BIAS"},
                                 {"runtime_top_k", "top_k"},
                                 {"runtime_top_p", "top_p"},
                                 {"temperature", "temperature"},
                                 {"len_penalty", "length_penalty"},
                                 {"repetition_penalty", "repetition_penalty"},
                                 {"min_length", "min_length"},
                                 {"presence_penalty", "presence_penalty"},
                                 {"frequency_penalty", "frequency_penalty"},
                                 {"random_seed", "random_seed"},
                                 {"return_log_probs", "return_log_probs"},
                                 {"return_context_logits", "return_context_logits"},
                                 {"return_generation_logits", "return_generation_logits"},
                                 {"beam_width", "beam_width"},
                                 {"streaming", "stream"},
                                 {"stop_words_list", "_STOP_WORDS_IDS"},
                                 {"bad_words_list", "_BAD_WORDS_IDS"}});
  s += map_entries("output_map", {{"output_ids", "_TOKENS_BATCH"},
                                  {"sequence_length", "_SEQUENCE_LENGTH"},
                                  {"cum_log_probs", "_CUM_LOG_PROBS"},
                                  {"output_log_probs", "_OUTPUT_LOG_PROBS"},
                                  {"context_logits", "_CONTEXT_LOGITS"},
                                  {"generation_logits", "_GENERATION_LOGITS"}});
  s += "    },\n    {\n      model_name: \"postprocessing\"\n      model_version: -1\n";
  s += map_entries("input_map", {{"TOKENS_BATCH", "_TOKENS_BATCH"},
                                 {"SEQUENCE_LENGTH", "_SEQUENCE_LENGTH"},
                                 {"CUM_LOG_PROBS", "_CUM_LOG_PROBS"},
                                 {"OUTPUT_LOG_PROBS", "_OUTPUT_LOG_PROBS"},
                                 {"CONTEXT_LOGITS", "_CONTEXT_LOGITS"},
                                 {"GENERATION_LOGITS", "_GENERATION_LOGITS"}});
  s += map_entries("output_map", {{"OUTPUT", "text_output"},
                                  {"OUT_CUM_LOG_PROBS", "cum_log_probs"},
                                  {"OUT_OUTPUT_LOG_PROBS", "output_log_probs"},
                                  {"OUT_CONTEXT_LOGITS", "context_logits"},
                                  {"OUT_GENERATION_LOGITS", "generation_logits"}});
  s += "    }\n  ]\n}\n";
  return s;
}

std::string bls_config(const RepoOptions& o) {
  std::string s =
      header("Text in, text out in one step (streams when decoupled); the tokenizer is preprocessing's.",
             "tensorrt_llm_bls", "backend: \"python\"", o.max_batch_size);
  s += decoupled_block(o.decoupled);
  s += tensors("input", kTextInputs, {{"exclude_input_in_output", "TYPE_BOOL", "1", true}});
  s += tensors("output", kTextOutputs) + kCpuInstance;
  s += parameter("tensorrt_llm_model_name", "tensorrt_llm");
  s += parameter("accumulate_tokens", "false");
  return s;
}

Status write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return internal_error("cannot write " + path.string());
  return {};
}

Status init(const RepoOptions& o) {
  // Everything is checked before anything is written.
  auto engine = load_engine(o.engine_dir);
  if (!engine.ok()) return engine.status().with_context("--engine_dir");
  const bool text = !o.tokenizer_dir.empty();  // without a tokenizer: the token-level model only
  if (text) {
    auto tok = Tokenizer::from_dir(o.tokenizer_dir);
    if (!tok.ok()) return tok.status().with_context("--tokenizer_dir");
    if ((*tok)->vocab_size() > engine->model.vocab_size)
      return invalid_argument("the tokenizer in " + o.tokenizer_dir + " has ids up to " +
                              std::to_string((*tok)->vocab_size() - 1) + " but the engine's vocabulary has " +
                              std::to_string(engine->model.vocab_size) +
                              " tokens: they do not belong together");
  }
  const BuildConfig& b = engine->build;
  RepoOptions opt = o;
  if (opt.max_batch_size == 0) opt.max_batch_size = b.max_batch_size;
  if (opt.max_batch_size < 1 || opt.max_batch_size > b.max_batch_size)
    return invalid_argument("--max_batch_size " + std::to_string(opt.max_batch_size) + " is outside [1, " +
                            std::to_string(b.max_batch_size) + "] (the engine's max_batch_size)");
  opt.max_beam_width = b.max_beam_width;

  const fs::path repo = fs::absolute(o.output);
  std::error_code ec;
  bool created = false;
  if (fs::exists(repo, ec)) {
    if (!fs::is_directory(repo, ec))
      return invalid_argument("--output " + o.output + " exists and is not a folder");
    if (!fs::is_empty(repo, ec))
      return invalid_argument("--output " + o.output +
                              " is not empty; give a new folder (nothing is overwritten)");
  } else {
    fs::create_directories(repo, ec);
    if (ec) return internal_error("cannot create " + o.output + ": " + ec.message());
    created = true;
  }
  auto write_all = [&]() -> Status {
    const fs::path engine_src = fs::canonical(o.engine_dir);
    for (const char* m :
         {"tensorrt_llm", "preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls"}) {
      if (!text && std::string(m) != "tensorrt_llm") continue;
      fs::create_directories(repo / m / "1", ec);
      if (ec) return internal_error("cannot create " + (repo / m / "1").string() + ": " + ec.message());
    }
    const fs::path engine_dst = repo / "tensorrt_llm" / "1";
    for (const auto& e : fs::directory_iterator(engine_src)) {
      if (!e.is_regular_file()) continue;
      const fs::path to = engine_dst / e.path().filename();
      if (o.copy_engine)
        fs::copy_file(e.path(), to, ec);
      else
        fs::create_symlink(e.path(), to, ec);
      if (ec)
        return internal_error("cannot " + std::string(o.copy_engine ? "copy " : "link ") + e.path().string() +
                              " to " + to.string() + ": " + ec.message());
    }
    KILN_RETURN_IF_ERROR(
        write_file(repo / "tensorrt_llm" / "config.pbtxt", trtllm_config(opt, engine_dst.string())));
    if (!text) return Status{};
    const std::string tokenizer = fs::canonical(o.tokenizer_dir).string();
    KILN_RETURN_IF_ERROR(
        write_file(repo / "preprocessing" / "config.pbtxt", preprocessing_config(opt, tokenizer)));
    KILN_RETURN_IF_ERROR(
        write_file(repo / "postprocessing" / "config.pbtxt", postprocessing_config(opt, tokenizer)));
    KILN_RETURN_IF_ERROR(write_file(repo / "ensemble" / "config.pbtxt", ensemble_config(opt)));
    KILN_RETURN_IF_ERROR(write_file(repo / "tensorrt_llm_bls" / "config.pbtxt", bls_config(opt)));
    return {};
  };
  Status s;
  try {
    s = write_all();
  } catch (const fs::filesystem_error& e) {
    s = internal_error(e.what());
  }
  if (!s.ok()) {
    // Leave nothing half-written behind.
    if (created)
      fs::remove_all(repo, ec);
    else
      for (const auto& e : fs::directory_iterator(repo, ec)) fs::remove_all(e.path(), ec);
    return s;
  }
  std::printf("kiln repo init: wrote %s\n", repo.c_str());
  std::printf(
      "  tensorrt_llm      engine %s (%s, max_batch_size %lld, max_input_len %lld, max_seq_len %lld), %s%s\n",
      fs::canonical(o.engine_dir).c_str(), o.copy_engine ? "copied" : "linked",
      static_cast<long long>(opt.max_batch_size), static_cast<long long>(b.max_input_len),
      static_cast<long long>(b.max_seq_len), o.decoupled ? "decoupled (streaming)" : "not decoupled",
      ", prompt not echoed");
  if (text) {
    std::printf("  preprocessing     tokenizer %s\n", fs::canonical(o.tokenizer_dir).c_str());
    std::printf("  postprocessing    ids -> text\n");
    std::printf("  ensemble          text_input -> text_output\n");
    std::printf("  tensorrt_llm_bls  text_input -> text_output in one step%s\n",
                o.decoupled ? " (streams)" : "");
  } else {
    std::printf("  (no --tokenizer_dir: the token-level tensorrt_llm model only; no text models)\n");
  }
  std::printf("serve it: kiln serve --model_repo %s\n", repo.c_str());
  return {};
}

}  // namespace

int cmd_repo(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"engine_dir", true, "engine folder made by `kiln build`"},
      {"tokenizer_dir", true,
       "folder with the model's tokenizer.json (+ tokenizer_config.json); without it only tensorrt_llm is written"},
      {"output", true, "the repository folder to write (new or empty)"},
      {"decoupled", false,
       "tensorrt_llm and tensorrt_llm_bls stream (gRPC ModelStreamInfer, HTTP generate_stream)"},
      {"max_batch_size", true, "the models' max_batch_size (default: the engine's)"},
      {"batch_scheduler_policy", true, "guaranteed_no_evict (default) | max_utilization"},
      {"kv_cache_free_gpu_mem_fraction", true,
       "share of the memory left after the weights for the KV cache (0.9)"},
      {"max_tokens_in_paged_kv_cache", true, "cap on the KV cache in tokens (default: none)"},
      {"enable_kv_cache_reuse", false, "reuse the KV cache of shared prompt prefixes"},
      {"copy_engine", false, "copy the engine files into tensorrt_llm/1 instead of linking them"},
  };
  const char* summary =
      "usage: kiln repo init --engine_dir ENGINE [--tokenizer_dir DIR] --output REPO [--decoupled] "
      "[--max_batch_size N]\n"
      "Writes a model repository: tensorrt_llm, preprocessing, postprocessing, ensemble, tensorrt_llm_bls.";
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || (argv[0] == "init" && wants_help(argv))) {
    std::fputs(usage("repo init", summary, specs).c_str(), argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] != "init")
    return report_error("repo",
                        invalid_argument("unknown subcommand '" + argv[0] + "' (kiln repo init ...)"));
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(std::vector<std::string>(argv.begin() + 1, argv.end()), specs));
    RepoOptions o;
    KILN_ASSIGN_OR_RETURN(o.engine_dir, a.require("engine_dir"));
    o.tokenizer_dir = a.get("tokenizer_dir").value_or("");
    KILN_ASSIGN_OR_RETURN(o.output, a.require("output"));
    o.decoupled = a.has("decoupled");
    o.copy_engine = a.has("copy_engine");
    o.kv_reuse = a.has("enable_kv_cache_reuse");
    KILN_ASSIGN_OR_RETURN(o.max_batch_size, a.get_int("max_batch_size", 0));
    if (a.has("max_batch_size") && o.max_batch_size < 1)
      return invalid_argument("--max_batch_size must be at least 1");
    if (auto p = a.get("batch_scheduler_policy")) {
      if (*p != "guaranteed_no_evict" && *p != "max_utilization")
        return invalid_argument("--batch_scheduler_policy '" + *p +
                                "': expected guaranteed_no_evict or max_utilization");
      o.policy = *p;
    }
    KILN_ASSIGN_OR_RETURN(o.kv_fraction, a.get_float("kv_cache_free_gpu_mem_fraction", 0.9));
    if (!(o.kv_fraction > 0.0 && o.kv_fraction <= 1.0))
      return invalid_argument("--kv_cache_free_gpu_mem_fraction must be in (0, 1]");
    if (a.has("max_tokens_in_paged_kv_cache")) {
      KILN_ASSIGN_OR_RETURN(int64_t t, a.get_int("max_tokens_in_paged_kv_cache", 0));
      if (t < 1) return invalid_argument("--max_tokens_in_paged_kv_cache must be at least 1");
      o.kv_tokens = t;
    }
    return init(o);
  };
  Status s = run();
  return s.ok() ? 0 : report_error("repo init", s);
}

}  // namespace kiln::cli
