#include "cli/executor_flags.h"

#include <charconv>

namespace kiln::cli {

Result<std::vector<int32_t>> parse_token_ids(const std::string& flag, const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(pos, comma - pos);
    int32_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      return invalid_argument("--" + flag + ": '" + item + "' is not a token id (expected e.g. 1,2,3)");
    ids.push_back(v);
    pos = comma + 1;
  }
  return ids;
}

namespace {

Result<float> get_f(const Args& a, const std::string& name, float fallback) {
  KILN_ASSIGN_OR_RETURN(double v, a.get_float(name, fallback));
  return static_cast<float>(v);
}

}  // namespace

std::vector<FlagSpec> executor_flag_specs() {
  return {
      {"batch_scheduler_policy", true, "guaranteed_no_evict (default) | max_utilization"},
      {"enable_chunked_context", true, "split long prompts over iterations: true (default) | false"},
      {"enable_kv_cache_reuse", false, "reuse the KV of shared prompt prefixes"},
      {"kv_cache_free_gpu_mem_fraction", true, "share of free memory for the KV cache (0.9)"},
      {"max_tokens_in_paged_kv_cache", true, "cap on the KV cache in tokens"},
      {"max_attention_window_size", true, "cap on every layer's attention window in tokens"},
      {"max_queue_size", true, "waiting requests beyond this are refused (4096)"},
  };
}

Result<ExecutorConfig> executor_config_from(const Args& a) {
  ExecutorConfig c;
  if (auto p = a.get("batch_scheduler_policy")) {
    if (*p == "guaranteed_no_evict") c.scheduler.policy = CapacityPolicy::kGuaranteedNoEvict;
    else if (*p == "max_utilization") c.scheduler.policy = CapacityPolicy::kMaxUtilization;
    else return invalid_argument("--batch_scheduler_policy '" + *p + "': expected guaranteed_no_evict or max_utilization");
  }
  if (auto v = a.get("enable_chunked_context")) {
    if (*v != "true" && *v != "false") return invalid_argument("--enable_chunked_context expects true or false");
    c.scheduler.enable_chunked_context = *v == "true";
  }
  c.kv_cache.enable_reuse = a.has("enable_kv_cache_reuse");
  KILN_ASSIGN_OR_RETURN(c.kv_cache.free_mem_fraction, a.get_float("kv_cache_free_gpu_mem_fraction", 0.9));
  if (a.has("max_tokens_in_paged_kv_cache")) {
    KILN_ASSIGN_OR_RETURN(int64_t t, a.get_int("max_tokens_in_paged_kv_cache", 0));
    c.kv_cache.max_tokens = t;
  }
  if (a.has("max_attention_window_size")) {
    KILN_ASSIGN_OR_RETURN(int64_t w, a.get_int("max_attention_window_size", 0));
    if (w <= 0 || w > (1 << 30)) return invalid_argument("--max_attention_window_size must be positive");
    c.kv_cache.max_attention_window = static_cast<int32_t>(w);
  }
  KILN_ASSIGN_OR_RETURN(c.scheduler.max_queue_size, a.get_int("max_queue_size", 4096));
  KILN_RETURN_IF_ERROR(c.validate());
  return c;
}

std::vector<FlagSpec> decoding_flag_specs() {
  return {
      {"temperature", true, "sampling temperature (1.0; 0 = greedy)"},
      {"top_k", true, "runtime_top_k: sample from the k likeliest (0 = off; default greedy when no sampling flag)"},
      {"top_p", true, "runtime_top_p: nucleus sampling (0 = off; with --top_k 0 too: greedy)"},
      {"top_p_min", true, "runtime_top_p_min: floor of the decaying top_p"},
      {"top_p_decay", true, "runtime_top_p_decay: top_p *= decay after each step"},
      {"top_p_reset_id", true, "runtime_top_p_reset_ids: top_p returns to its start after this token"},
      {"repetition_penalty", true, "multiplicative, over prompt and output (1.0 = off)"},
      {"presence_penalty", true, "additive, once per token present in the output"},
      {"frequency_penalty", true, "additive, per occurrence in the output"},
      {"min_length", true, "end ids are banned until this many tokens were generated"},
      {"random_seed", true, "seed of this run's sampling"},
      {"beam_width", true, "beam search with this many beams (1)"},
      {"length_penalty", true, "beam score = sum log p / length ** length_penalty (1.0)"},
      {"early_stopping", true, "beam search: 1 (default) | 0 (heuristic) | -1 (never)"},
      {"beam_search_diversity_rate", true, "penalty per rank within a parent beam (0)"},
      {"end_id", true, "stop at this token instead of the model's EOS ids"},
      {"pad_id", true, "padding token id"},
      {"stop_words", true, "a comma-separated token sequence that ends generation (repeatable)"},
      {"bad_words", true, "a comma-separated token sequence never generated (repeatable)"},
      {"streaming", false, "print tokens as they are generated"},
      {"ignore_eos", false, "do not stop at the model's EOS tokens"},
  };
}

Result<Request> request_template_from(const Args& a) {
  Request r;
  SamplingConfig& s = r.sampling;
  const bool sampling = a.has("temperature") || a.has("top_k") || a.has("top_p");
  KILN_ASSIGN_OR_RETURN(s.temperature, get_f(a, "temperature", 1.0f));
  KILN_ASSIGN_OR_RETURN(int64_t top_k, a.get_int("top_k", sampling ? 0 : 1));  // no sampling flag: greedy
  if (top_k < 0 || top_k > (1 << 30)) return invalid_argument("--top_k must be >= 0");
  s.top_k = static_cast<int32_t>(top_k);
  // A sampling flag without top_k/top_p samples from the whole distribution (top_p 1).
  KILN_ASSIGN_OR_RETURN(s.top_p, get_f(a, "top_p", sampling && !a.has("top_k") ? 1.0f : 0.0f));
  KILN_ASSIGN_OR_RETURN(s.top_p_min, get_f(a, "top_p_min", s.top_p_min));
  KILN_ASSIGN_OR_RETURN(s.top_p_decay, get_f(a, "top_p_decay", 1.0f));
  if (a.has("top_p_reset_id")) {
    KILN_ASSIGN_OR_RETURN(int64_t id, a.get_int("top_p_reset_id", 0));
    s.top_p_reset_id = static_cast<int32_t>(id);
  }
  KILN_ASSIGN_OR_RETURN(s.repetition_penalty, get_f(a, "repetition_penalty", 1.0f));
  KILN_ASSIGN_OR_RETURN(s.presence_penalty, get_f(a, "presence_penalty", 0.0f));
  KILN_ASSIGN_OR_RETURN(s.frequency_penalty, get_f(a, "frequency_penalty", 0.0f));
  KILN_ASSIGN_OR_RETURN(int64_t min_length, a.get_int("min_length", 0));
  if (min_length < 0 || min_length > (1 << 30)) return invalid_argument("--min_length must be >= 0");
  s.min_length = static_cast<int32_t>(min_length);
  if (a.has("random_seed")) {
    KILN_ASSIGN_OR_RETURN(int64_t seed, a.get_int("random_seed", 0));
    s.random_seed = static_cast<uint64_t>(seed);
  }
  KILN_ASSIGN_OR_RETURN(int64_t beams, a.get_int("beam_width", 1));
  if (beams < 1 || beams > 1024) return invalid_argument("--beam_width must be at least 1");
  s.beam_width = static_cast<int>(beams);
  KILN_ASSIGN_OR_RETURN(s.length_penalty, get_f(a, "length_penalty", 1.0f));
  KILN_ASSIGN_OR_RETURN(int64_t early, a.get_int("early_stopping", 1));
  if (early < -1 || early > 1) return invalid_argument("--early_stopping expects 1, 0 or -1");
  s.early_stopping = static_cast<int>(early);
  KILN_ASSIGN_OR_RETURN(s.beam_search_diversity_rate, get_f(a, "beam_search_diversity_rate", 0.0f));
  if (a.has("end_id") && a.has("ignore_eos")) return invalid_argument("give --end_id or --ignore_eos, not both");
  if (a.has("end_id")) {
    KILN_ASSIGN_OR_RETURN(int64_t id, a.get_int("end_id", 0));
    r.end_ids = std::vector<int32_t>{static_cast<int32_t>(id)};
  }
  if (a.has("ignore_eos")) r.end_ids = std::vector<int32_t>{};
  if (a.has("pad_id")) {
    KILN_ASSIGN_OR_RETURN(int64_t id, a.get_int("pad_id", 0));
    r.pad_id = static_cast<int32_t>(id);
  }
  for (const std::string& w : a.get_all("stop_words")) {
    KILN_ASSIGN_OR_RETURN(auto ids, parse_token_ids("stop_words", w));
    r.stop_words.push_back(std::move(ids));
  }
  for (const std::string& w : a.get_all("bad_words")) {
    KILN_ASSIGN_OR_RETURN(auto ids, parse_token_ids("bad_words", w));
    r.bad_words.push_back(std::move(ids));
  }
  r.streaming = a.has("streaming");
  return r;
}

}  // namespace kiln::cli
