#include "server/trtllm_tensors.h"

#include <algorithm>
#include <map>

namespace kiln::server {

namespace {

// How an input's per-row shape looks (after the batch dimension, when there is one).
enum class Kind {
  kIds,     // [L] or [L, 1]
  kScalar,  // [] or [1]
  kWords,   // [2, N]
  kVector,  // [N]
  kMatrix,  // [N, M]
};

struct InputSpec {
  const char* name;
  TensorType type;
  Kind kind;
  bool required;
  const char* unsupported;  // non-null: refused, with this reason
};

const InputSpec kInputs[] = {
    {"input_ids", TensorType::kInt32, Kind::kIds, true, nullptr},
    {"input_lengths", TensorType::kInt32, Kind::kScalar, true, nullptr},
    {"request_output_len", TensorType::kInt32, Kind::kScalar, true, nullptr},
    {"end_id", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"pad_id", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"stop_words_list", TensorType::kInt32, Kind::kWords, false, nullptr},
    {"bad_words_list", TensorType::kInt32, Kind::kWords, false, nullptr},
    {"embedding_bias", TensorType::kFp32, Kind::kVector, false, nullptr},
    {"beam_width", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"temperature", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"runtime_top_k", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"runtime_top_p", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"runtime_top_p_min", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"runtime_top_p_decay", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"runtime_top_p_reset_ids", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"len_penalty", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"early_stopping", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"repetition_penalty", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"presence_penalty", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"frequency_penalty", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"beam_search_diversity_rate", TensorType::kFp32, Kind::kScalar, false, nullptr},
    {"min_length", TensorType::kInt32, Kind::kScalar, false, nullptr},
    {"random_seed", TensorType::kUint64, Kind::kScalar, false, nullptr},
    {"return_log_probs", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"return_context_logits", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"return_generation_logits", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"stop", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"streaming", TensorType::kBool, Kind::kScalar, false, nullptr},
    {"draft_input_ids", TensorType::kInt32, Kind::kVector, false, "speculative decoding is not supported yet"},
    {"draft_logits", TensorType::kFp32, Kind::kMatrix, false, "speculative decoding is not supported yet"},
    {"draft_acceptance_threshold", TensorType::kFp32, Kind::kScalar, false, "speculative decoding is not supported yet"},
    {"prompt_embedding_table", TensorType::kFp16, Kind::kMatrix, false, "prompt tuning is not supported yet"},
    {"prompt_vocab_size", TensorType::kInt32, Kind::kScalar, false, "prompt tuning is not supported yet"},
    {"lora_task_id", TensorType::kUint64, Kind::kScalar, false, "LoRA adapters are not supported yet"},
    {"lora_weights", TensorType::kFp16, Kind::kMatrix, false, "LoRA adapters are not supported yet"},
    {"lora_config", TensorType::kInt32, Kind::kMatrix, false, "LoRA adapters are not supported yet"},
};

const InputSpec* find_input(const std::string& name) {
  for (const InputSpec& s : kInputs)
    if (name == s.name) return &s;
  return nullptr;
}

// A validated input split into batch rows: row r's elements are data[r * per_row, (r + 1) * per_row).
struct Rows {
  const InferTensor* t;
  std::vector<int64_t> row_shape;
  int64_t per_row = 0;
  template <typename T>
  std::vector<T> row(int64_t r) const {
    std::vector<T> v(per_row);
    if (per_row) std::memcpy(v.data(), t->data.data() + r * per_row * sizeof(T), per_row * sizeof(T));
    return v;
  }
  template <typename T>
  T scalar(int64_t r) const {
    return row<T>(r)[0];
  }
};

Status check_row_shape(const InputSpec& spec, const InferTensor& t, const std::vector<int64_t>& row) {
  auto bad = [&](const char* want) {
    return invalid_argument("input '" + t.name + "': shape " + shape_string(t.shape) + " is not " + want);
  };
  switch (spec.kind) {
    case Kind::kIds:
      if (row.size() == 1 || (row.size() == 2 && row[1] == 1)) return {};
      return bad("[batch, length] or [batch, length, 1]");
    case Kind::kScalar:
      if (row.empty() || (row.size() == 1 && row[0] == 1)) return {};
      return bad("[batch, 1]");
    case Kind::kWords:
      if (row.size() == 2 && row[0] == 2) return {};
      return bad("[batch, 2, N] (token ids, then cumulative end offsets)");
    case Kind::kVector:
      if (row.size() == 1) return {};
      return bad("[batch, N]");
    case Kind::kMatrix:
      if (row.size() == 2) return {};
      return bad("[batch, N, M]");
  }
  return {};
}

bool flag(const Rows& r, int64_t row) { return r.scalar<uint8_t>(row) != 0; }

}  // namespace

const std::vector<std::string>& trtllm_input_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const InputSpec& s : kInputs) v.push_back(s.name);
    return v;
  }();
  return names;
}

const std::vector<std::string>& trtllm_output_names() {
  static const std::vector<std::string> names = {"output_ids",       "sequence_length", "cum_log_probs",
                                                 "output_log_probs", "context_logits",  "generation_logits"};
  return names;
}

Result<TrtllmInferRequest> parse_trtllm_inputs(const std::vector<InferTensor>& inputs, const TrtllmLimits& limits) {
  const bool batched = limits.max_batch_size > 0;
  std::map<std::string, Rows> rows;
  int64_t batch = -1;
  for (const InferTensor& t : inputs) {
    const InputSpec* spec = find_input(t.name);
    if (!spec) return invalid_argument("unknown input '" + t.name + "' for the tensorrt_llm model");
    if (rows.count(t.name)) return invalid_argument("input '" + t.name + "' is given twice");
    if (spec->unsupported) return unimplemented("input '" + t.name + "': " + spec->unsupported);
    if (t.type != spec->type)
      return invalid_argument("input '" + t.name + "' must be " + tensor_type_name(spec->type) + ", got " +
                              tensor_type_name(t.type));
    KILN_RETURN_IF_ERROR(t.validate());
    std::vector<int64_t> row = t.shape;
    int64_t b = 1;
    if (batched) {
      if (t.shape.empty()) return invalid_argument("input '" + t.name + "' needs a leading batch dimension");
      b = t.shape[0];
      row.erase(row.begin());
      if (b < 1 || b > limits.max_batch_size)
        return invalid_argument("input '" + t.name + "': batch size " + std::to_string(b) +
                                " is outside [1, max_batch_size=" + std::to_string(limits.max_batch_size) + "]");
    }
    if (batch >= 0 && b != batch)
      return invalid_argument("input '" + t.name + "' has batch size " + std::to_string(b) + ", other inputs " +
                              std::to_string(batch));
    batch = b;
    KILN_RETURN_IF_ERROR(check_row_shape(*spec, t, row));
    Rows r{&t, row, 0};
    r.per_row = *t.num_elements() / b;
    rows.emplace(t.name, r);
  }
  for (const InputSpec& s : kInputs)
    if (s.required && !rows.count(s.name)) return invalid_argument(std::string("missing required input '") + s.name + "'");

  TrtllmInferRequest out;
  auto has = [&](const char* n) { return rows.count(n) > 0; };
  auto get = [&](const char* n) -> const Rows& { return rows.at(n); };
  for (int64_t b = 0; b < batch; ++b) {
    const std::string where = batch > 1 ? " (batch row " + std::to_string(b) + ")" : "";
    Request r;
    std::vector<int32_t> ids = get("input_ids").row<int32_t>(b);
    const int32_t len = get("input_lengths").scalar<int32_t>(b);
    if (len <= 0) return invalid_argument("input_lengths=" + std::to_string(len) + " must be positive" + where);
    if (static_cast<size_t>(len) > ids.size()) {
      out.notes.push_back("input_lengths " + std::to_string(len) + " is larger than the " + std::to_string(ids.size()) +
                          " ids sent; using " + std::to_string(ids.size()));
    } else {
      ids.resize(len);  // the ids after input_lengths are padding
    }
    if (ids.empty()) return invalid_argument("input_ids is empty" + where);
    r.input_ids = std::move(ids);
    r.max_new_tokens = get("request_output_len").scalar<int32_t>(b);
    if (r.max_new_tokens < 1)
      return invalid_argument("request_output_len=" + std::to_string(r.max_new_tokens) + " must be at least 1" + where);
    if (has("end_id")) {
      // -1: no end id at all, generation runs to request_output_len (TensorRT-LLM's convention, used by
      // benchmarks that force the output length).
      const int32_t end = get("end_id").scalar<int32_t>(b);
      r.end_ids = end == -1 ? std::vector<int32_t>{} : std::vector<int32_t>{end};
    }
    if (has("pad_id")) r.pad_id = get("pad_id").scalar<int32_t>(b);
    for (const char* n : {"stop_words_list", "bad_words_list"}) {
      if (!has(n)) continue;
      const Rows& w = get(n);
      const std::vector<int32_t> both = w.row<int32_t>(b);
      const size_t half = both.size() / 2;
      auto words = words_from_offsets({both.begin(), both.begin() + half}, {both.begin() + half, both.end()});
      if (!words.ok()) return words.status().with_context(std::string("input '") + n + "'" + where);
      (std::string(n) == "stop_words_list" ? r.stop_words : r.bad_words) = std::move(*words);
    }
    if (has("embedding_bias")) {
      r.embedding_bias = get("embedding_bias").row<float>(b);
      if (std::all_of(r.embedding_bias.begin(), r.embedding_bias.end(), [](float v) { return v == 0.0f; }))
        r.embedding_bias.clear();  // an all-zero bias (as clients send for "none") changes nothing
    }
    SamplingConfig& s = r.sampling;
    if (has("beam_width")) s.beam_width = get("beam_width").scalar<int32_t>(b);
    if (has("temperature")) s.temperature = get("temperature").scalar<float>(b);
    if (has("runtime_top_k")) s.top_k = get("runtime_top_k").scalar<int32_t>(b);
    if (has("runtime_top_p")) s.top_p = get("runtime_top_p").scalar<float>(b);
    if (has("runtime_top_p_min")) s.top_p_min = get("runtime_top_p_min").scalar<float>(b);
    if (has("runtime_top_p_decay")) s.top_p_decay = get("runtime_top_p_decay").scalar<float>(b);
    if (has("runtime_top_p_reset_ids")) s.top_p_reset_id = get("runtime_top_p_reset_ids").scalar<int32_t>(b);
    if (has("len_penalty")) s.length_penalty = get("len_penalty").scalar<float>(b);
    if (has("early_stopping")) s.early_stopping = flag(get("early_stopping"), b) ? 1 : 0;
    if (has("repetition_penalty")) s.repetition_penalty = get("repetition_penalty").scalar<float>(b);
    if (has("presence_penalty")) s.presence_penalty = get("presence_penalty").scalar<float>(b);
    if (has("frequency_penalty")) s.frequency_penalty = get("frequency_penalty").scalar<float>(b);
    if (has("beam_search_diversity_rate"))
      s.beam_search_diversity_rate = get("beam_search_diversity_rate").scalar<float>(b);
    if (has("min_length")) s.min_length = get("min_length").scalar<int32_t>(b);
    if (has("random_seed")) s.random_seed = get("random_seed").scalar<uint64_t>(b);
    if (has("return_log_probs")) r.output.return_log_probs = flag(get("return_log_probs"), b);
    if (has("return_context_logits")) r.output.return_context_logits = flag(get("return_context_logits"), b);
    if (has("return_generation_logits")) r.output.return_generation_logits = flag(get("return_generation_logits"), b);
    if (has("streaming")) r.streaming = flag(get("streaming"), b);
    if (has("stop") && flag(get("stop"), b)) out.stop = true;
    r.output.exclude_input_from_output = limits.exclude_input_in_output;
    const int64_t prompt = static_cast<int64_t>(r.input_ids.size());
    if (prompt > limits.max_input_len)
      return invalid_argument("input length " + std::to_string(prompt) + " exceeds max_input_len=" +
                              std::to_string(limits.max_input_len) + " set at build" + where);
    if (r.max_new_tokens > limits.max_seq_len)
      return invalid_argument("request_output_len=" + std::to_string(r.max_new_tokens) + " exceeds max_seq_len=" +
                              std::to_string(limits.max_seq_len) + " set at build" + where);
    if (prompt + r.max_new_tokens > limits.max_seq_len) {
      // As TensorRT-LLM: the output is cut to what the sequence length leaves (the seed's client asks 1024).
      const int32_t room = static_cast<int32_t>(limits.max_seq_len - prompt);
      if (room < 1)
        return invalid_argument("input length " + std::to_string(prompt) + " leaves no room for output within max_seq_len=" +
                                std::to_string(limits.max_seq_len) + where);
      out.notes.push_back("input length " + std::to_string(prompt) + " + request_output_len " +
                          std::to_string(r.max_new_tokens) + " exceeds max_seq_len=" + std::to_string(limits.max_seq_len) +
                          "; generating at most " + std::to_string(room) + " tokens");
      r.max_new_tokens = room;
    }
    out.requests.push_back(std::move(r));
  }
  return out;
}

std::vector<InferTensor> trtllm_outputs(std::span<const Response> responses, std::span<const Request> requests,
                                        const TrtllmLimits& limits, const std::set<std::string>& wanted) {
  const int64_t B = static_cast<int64_t>(responses.size());
  const bool batched = limits.max_batch_size > 0;
  auto shape = [&](std::vector<int64_t> inner) {
    if (batched) inner.insert(inner.begin(), B);
    return inner;
  };
  auto want = [&](const std::string& n) { return wanted.empty() || wanted.count(n) > 0; };
  size_t beams = 1, len = 0;
  bool log_probs = false, context = false, generation = false;
  for (size_t i = 0; i < responses.size(); ++i) {
    beams = std::max(beams, responses[i].output_ids.size());
    for (const auto& ids : responses[i].output_ids) len = std::max(len, ids.size());
    log_probs |= requests[i].output.return_log_probs;
    context |= requests[i].output.return_context_logits;
    generation |= requests[i].output.return_generation_logits;
  }
  std::vector<int32_t> ids(B * beams * len), seq_len(B * beams, 0);
  std::vector<float> cum(B * beams, 0.0f), lps(B * beams * len, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const Request& q = requests[b];
    const int32_t pad = q.pad_id ? *q.pad_id : (q.end_ids && !q.end_ids->empty() ? (*q.end_ids)[0] : 0);
    std::fill(ids.begin() + b * beams * len, ids.begin() + (b + 1) * beams * len, pad);
    const Response& r = responses[b];
    for (size_t k = 0; k < r.output_ids.size(); ++k) {
      std::copy(r.output_ids[k].begin(), r.output_ids[k].end(), ids.begin() + (b * beams + k) * len);
      // A streamed delta's sequence_length counts the ids in this response (as the TensorRT-LLM backend).
      seq_len[b * beams + k] = !r.is_delta && k < r.sequence_lengths.size() ? r.sequence_lengths[k]
                                                                            : static_cast<int32_t>(r.output_ids[k].size());
      if (k < r.cum_log_probs.size()) cum[b * beams + k] = r.cum_log_probs[k];
      if (k < r.output_log_probs.size())
        std::copy(r.output_log_probs[k].begin(), r.output_log_probs[k].end(), lps.begin() + (b * beams + k) * len);
    }
  }
  const int64_t nb = static_cast<int64_t>(beams), nl = static_cast<int64_t>(len);
  std::vector<InferTensor> out;
  if (want("output_ids")) out.push_back(InferTensor::make("output_ids", TensorType::kInt32, shape({nb, nl}), ids));
  if (want("sequence_length"))
    out.push_back(InferTensor::make("sequence_length", TensorType::kInt32, shape({nb}), seq_len));
  // Log-prob outputs come when asked for (return_log_probs), or named by the client (zeros then, as Triton).
  if ((log_probs || wanted.count("cum_log_probs")) && want("cum_log_probs"))
    out.push_back(InferTensor::make("cum_log_probs", TensorType::kFp32, shape({nb}), cum));
  if ((log_probs || wanted.count("output_log_probs")) && want("output_log_probs"))
    out.push_back(InferTensor::make("output_log_probs", TensorType::kFp32, shape({nb, nl}), lps));
  const int64_t V = limits.vocab_size;
  if (context && want("context_logits")) {
    int64_t rows = 0;
    for (const Response& r : responses) rows = std::max<int64_t>(rows, static_cast<int64_t>(r.context_logits.size()) / V);
    std::vector<float> v(B * rows * V, 0.0f);
    for (int64_t b = 0; b < B; ++b)
      std::copy(responses[b].context_logits.begin(), responses[b].context_logits.end(), v.begin() + b * rows * V);
    out.push_back(InferTensor::make("context_logits", TensorType::kFp32, shape({rows, V}), v));
  }
  if (generation && want("generation_logits")) {
    int64_t steps = 0;
    for (const Response& r : responses) steps = std::max<int64_t>(steps, static_cast<int64_t>(r.generation_logits.size()) / V);
    std::vector<float> v(B * steps * V, 0.0f);  // beam_width 1 (the executor refuses generation logits with beams)
    for (int64_t b = 0; b < B; ++b)
      std::copy(responses[b].generation_logits.begin(), responses[b].generation_logits.end(), v.begin() + b * steps * V);
    out.push_back(InferTensor::make("generation_logits", TensorType::kFp32, shape({1, steps, V}), v));
  }
  return out;
}

}  // namespace kiln::server
