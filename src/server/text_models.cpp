#include "server/text_models.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <thread>

#include "server/model_config_loader.h"
#include "server/text_stream.h"
#include "tokenizer/utf8.h"

namespace kiln::server {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

uint64_t ns_since(Clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count());
}

// ---- config parameters ----

// A parameter's value, or nullopt when unset, empty or a template placeholder ("${...}") left unfilled.
std::optional<std::string> param(const inference::ModelConfig& c, const std::string& key) {
  auto v = model_parameter(c, key);
  if (!v || v->empty() || v->find("${") != std::string::npos) return std::nullopt;
  return v;
}

// The Python models' spelling of booleans ("True", "yes", "1", ...).
Result<bool> parse_bool(const std::string& key, const std::string& v) {
  std::string s = v;
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "true" || s == "1" || s == "t" || s == "y" || s == "yes") return true;
  if (s == "false" || s == "0" || s == "f" || s == "n" || s == "no") return false;
  return invalid_argument("parameter " + key + "='" + v + "': expected true or false");
}

Result<bool> bool_param(const inference::ModelConfig& c, const std::string& key, bool fallback) {
  auto v = param(c, key);
  if (!v) return fallback;
  return parse_bool(key, *v);
}

// Another model's config in the same repository, or nullopt when that folder has none.
Result<std::optional<inference::ModelConfig>> sibling_config(const std::string& repo,
                                                             const std::string& name) {
  if (name.empty() || !check_model_name(name).ok()) return std::optional<inference::ModelConfig>();
  const fs::path path = fs::path(repo) / name / "config.pbtxt";
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<inference::ModelConfig>();
  KILN_ASSIGN_OR_RETURN(auto c, load_model_config(path.string(), name + "/config.pbtxt"));
  return std::optional<inference::ModelConfig>(std::move(c));
}

void report_unused(const std::string& name, const inference::ModelConfig& c,
                   const std::set<std::string>& used) {
  for (const std::string& p : unused_parameters(c, used))
    std::fprintf(stderr, "kiln serve: model '%s': parameter '%s' is not used by kiln\n", name.c_str(),
                 p.c_str());
}

// ---- input tensors ----

enum class Per { kOne, kList };  // elements per batch row: exactly one, or any number

struct InputSpec {
  const char* name;
  TensorType type;
  Per per;
  bool required;
  const char* unsupported;  // non-null: refused by name, with this reason
};

constexpr const char* kNoPromptTuning = "prompt tuning is not supported yet";
constexpr const char* kNoLora = "LoRA adapters are not supported yet";
constexpr const char* kNoMultimodal = "multimodal inputs are not supported";
constexpr const char* kNoEncDec = "encoder-decoder models are not supported";
constexpr const char* kNoGuided = "guided decoding is not supported yet";

// ensemble / tensorrt_llm_bls (both spellings of the versions in use: min_length|min_tokens,
// random_seed|seed).
const InputSpec kPipelineInputs[] = {
    {"text_input", TensorType::kBytes, Per::kOne, true, nullptr},
    {"max_tokens", TensorType::kInt32, Per::kOne, true, nullptr},
    {"bad_words", TensorType::kBytes, Per::kList, false, nullptr},
    {"stop_words", TensorType::kBytes, Per::kList, false, nullptr},
    {"end_id", TensorType::kInt32, Per::kOne, false, nullptr},
    {"pad_id", TensorType::kInt32, Per::kOne, false, nullptr},
    {"top_k", TensorType::kInt32, Per::kOne, false, nullptr},
    {"top_p", TensorType::kFp32, Per::kOne, false, nullptr},
    {"temperature", TensorType::kFp32, Per::kOne, false, nullptr},
    {"length_penalty", TensorType::kFp32, Per::kOne, false, nullptr},
    {"repetition_penalty", TensorType::kFp32, Per::kOne, false, nullptr},
    {"min_length", TensorType::kInt32, Per::kOne, false, nullptr},
    {"min_tokens", TensorType::kInt32, Per::kOne, false, nullptr},
    {"presence_penalty", TensorType::kFp32, Per::kOne, false, nullptr},
    {"frequency_penalty", TensorType::kFp32, Per::kOne, false, nullptr},
    {"random_seed", TensorType::kUint64, Per::kOne, false, nullptr},
    {"seed", TensorType::kUint64, Per::kOne, false, nullptr},
    {"return_log_probs", TensorType::kBool, Per::kOne, false, nullptr},
    {"return_context_logits", TensorType::kBool, Per::kOne, false, nullptr},
    {"return_generation_logits", TensorType::kBool, Per::kOne, false, nullptr},
    {"beam_width", TensorType::kInt32, Per::kOne, false, nullptr},
    {"stream", TensorType::kBool, Per::kOne, false, nullptr},
    {"exclude_input_in_output", TensorType::kBool, Per::kOne, false, nullptr},
    {"num_return_sequences", TensorType::kInt32, Per::kOne, false, nullptr},
    {"return_perf_metrics", TensorType::kBool, Per::kOne, false, nullptr},
    {"embedding_bias_words", TensorType::kBytes, Per::kList, false, nullptr},
    {"embedding_bias_weights", TensorType::kFp32, Per::kList, false, nullptr},
    {"prompt_embedding_table", TensorType::kFp16, Per::kList, false, kNoPromptTuning},
    {"prompt_vocab_size", TensorType::kInt32, Per::kOne, false, kNoPromptTuning},
    {"prompt_table_extra_id", TensorType::kUint64, Per::kOne, false, kNoPromptTuning},
    {"lora_task_id", TensorType::kUint64, Per::kOne, false, kNoLora},
    {"lora_weights", TensorType::kFp16, Per::kList, false, kNoLora},
    {"lora_config", TensorType::kInt32, Per::kList, false, kNoLora},
    {"decoder_text_input", TensorType::kBytes, Per::kOne, false, kNoEncDec},
    {"image_input", TensorType::kFp16, Per::kList, false, kNoMultimodal},
    {"image_bytes_input", TensorType::kUint8, Per::kList, false, kNoMultimodal},
    {"image_url_input", TensorType::kBytes, Per::kOne, false, kNoMultimodal},
    {"video_bytes_input", TensorType::kUint8, Per::kList, false, kNoMultimodal},
    {"guided_decoding_guide_type", TensorType::kBytes, Per::kOne, false, kNoGuided},
    {"guided_decoding_guide", TensorType::kBytes, Per::kOne, false, kNoGuided},
};

const InputSpec kPreprocessingInputs[] = {
    {"QUERY", TensorType::kBytes, Per::kOne, true, nullptr},
    {"REQUEST_OUTPUT_LEN", TensorType::kInt32, Per::kOne, true, nullptr},
    {"BAD_WORDS_DICT", TensorType::kBytes, Per::kList, false, nullptr},
    {"STOP_WORDS_DICT", TensorType::kBytes, Per::kList, false, nullptr},
    {"EMBEDDING_BIAS_WORDS", TensorType::kBytes, Per::kList, false, nullptr},
    {"EMBEDDING_BIAS_WEIGHTS", TensorType::kFp32, Per::kList, false, nullptr},
    {"END_ID", TensorType::kInt32, Per::kOne, false, nullptr},
    {"PAD_ID", TensorType::kInt32, Per::kOne, false, nullptr},
    {"DECODER_QUERY", TensorType::kBytes, Per::kOne, false, kNoEncDec},
    {"IMAGE_BYTES", TensorType::kUint8, Per::kList, false, kNoMultimodal},
    {"IMAGE_URL", TensorType::kBytes, Per::kOne, false, kNoMultimodal},
    {"VIDEO_BYTES", TensorType::kUint8, Per::kList, false, kNoMultimodal},
    {"PROMPT_TABLE_EXTRA_ID", TensorType::kUint64, Per::kOne, false, kNoPromptTuning},
};

const InputSpec kPostprocessingInputs[] = {
    {"TOKENS_BATCH", TensorType::kInt32, Per::kList, true, nullptr},
    {"SEQUENCE_LENGTH", TensorType::kInt32, Per::kList, false, nullptr},
    {"CUM_LOG_PROBS", TensorType::kFp32, Per::kList, false, nullptr},
    {"OUTPUT_LOG_PROBS", TensorType::kFp32, Per::kList, false, nullptr},
    {"CONTEXT_LOGITS", TensorType::kFp32, Per::kList, false, nullptr},
    {"GENERATION_LOGITS", TensorType::kFp32, Per::kList, false, nullptr},
};

struct OutputSpec {
  const char* name;
  TensorType type;
  std::vector<int64_t> dims;  // without the batch dimension
};

const std::vector<OutputSpec> kPipelineOutputs = {
    {"text_output", TensorType::kBytes, {-1}},
    {"cum_log_probs", TensorType::kFp32, {-1}},
    {"output_log_probs", TensorType::kFp32, {-1, -1}},
    {"context_logits", TensorType::kFp32, {-1, -1}},
    {"generation_logits", TensorType::kFp32, {-1, -1, -1}},
};
const std::vector<OutputSpec> kPreprocessingOutputs = {
    {"INPUT_ID", TensorType::kInt32, {-1}},         {"REQUEST_INPUT_LEN", TensorType::kInt32, {1}},
    {"BAD_WORDS_IDS", TensorType::kInt32, {2, -1}}, {"STOP_WORDS_IDS", TensorType::kInt32, {2, -1}},
    {"EMBEDDING_BIAS", TensorType::kFp32, {-1}},    {"REQUEST_OUTPUT_LEN", TensorType::kInt32, {-1}},
    {"OUT_END_ID", TensorType::kInt32, {1}},        {"OUT_PAD_ID", TensorType::kInt32, {1}},
};
const std::vector<OutputSpec> kPostprocessingOutputs = {
    {"OUTPUT", TensorType::kBytes, {-1}},
    {"OUT_CUM_LOG_PROBS", TensorType::kFp32, {-1}},
    {"OUT_OUTPUT_LOG_PROBS", TensorType::kFp32, {-1, -1}},
    {"OUT_CONTEXT_LOGITS", TensorType::kFp32, {-1, -1}},
    {"OUT_GENERATION_LOGITS", TensorType::kFp32, {-1, -1, -1}},
};

// A call's inputs, checked and split into batch rows.
struct RowInputs {
  struct Entry {
    const InferTensor* t = nullptr;
    int64_t per_row = 0;
    std::vector<std::string> strings;  // BYTES elements
  };
  int64_t batch = 1;
  std::map<std::string, Entry> in;

  bool has(const std::string& n) const { return in.count(n) > 0; }
  template <typename T>
  std::vector<T> list(const std::string& n, int64_t row) const {
    const Entry& e = in.at(n);
    std::vector<T> v(static_cast<size_t>(e.per_row));
    if (!v.empty())
      std::memcpy(v.data(), e.t->data.data() + row * e.per_row * sizeof(T), v.size() * sizeof(T));
    return v;
  }
  template <typename T>
  T one(const std::string& n, int64_t row) const {
    return list<T>(n, row)[0];
  }
  bool flag(const std::string& n, int64_t row) const { return has(n) && one<uint8_t>(n, row) != 0; }
  std::vector<std::string> strings(const std::string& n, int64_t row) const {
    const Entry& e = in.at(n);
    return {e.strings.begin() + row * e.per_row, e.strings.begin() + (row + 1) * e.per_row};
  }
};

Result<RowInputs> parse_inputs(const std::vector<InferTensor>& inputs, std::span<const InputSpec> specs,
                               int64_t max_batch_size, const std::string& model) {
  RowInputs r;
  int64_t batch = -1;
  for (const InferTensor& t : inputs) {
    const InputSpec* spec = nullptr;
    for (const InputSpec& s : specs)
      if (t.name == s.name) spec = &s;
    if (!spec) {
      std::string names;
      for (const InputSpec& s : specs)
        if (!s.unsupported) names += std::string(names.empty() ? "" : ", ") + s.name;
      return invalid_argument("unknown input '" + t.name + "' for model '" + model +
                              "' (its inputs: " + names + ")");
    }
    if (r.in.count(t.name)) return invalid_argument("input '" + t.name + "' is given twice");
    if (spec->unsupported) return unimplemented("input '" + t.name + "': " + spec->unsupported);
    if (t.type != spec->type)
      return invalid_argument("input '" + t.name + "' must be " + tensor_type_name(spec->type) + ", got " +
                              tensor_type_name(t.type));
    KILN_RETURN_IF_ERROR(t.validate());
    KILN_ASSIGN_OR_RETURN(int64_t n, t.num_elements());
    int64_t b = 1;
    if (max_batch_size > 0) {
      if (t.shape.empty()) return invalid_argument("input '" + t.name + "' needs a leading batch dimension");
      b = t.shape[0];
      if (b < 1 || b > max_batch_size)
        return invalid_argument("input '" + t.name + "': batch size " + std::to_string(b) +
                                " is outside [1, max_batch_size=" + std::to_string(max_batch_size) + "]");
    }
    if (batch >= 0 && b != batch)
      return invalid_argument("input '" + t.name + "' has batch size " + std::to_string(b) +
                              ", other inputs " + std::to_string(batch));
    batch = b;
    RowInputs::Entry e;
    e.t = &t;
    e.per_row = n / b;
    if (spec->per == Per::kOne && e.per_row != 1)
      return invalid_argument("input '" + t.name + "': shape " + shape_string(t.shape) + " holds " +
                              std::to_string(e.per_row) + " values per batch row; expected one");
    if (t.type == TensorType::kBytes) {
      KILN_ASSIGN_OR_RETURN(e.strings, t.strings());
    }
    r.in.emplace(t.name, std::move(e));
  }
  for (const InputSpec& s : specs)
    if (s.required && !r.in.count(s.name))
      return invalid_argument(std::string("missing required input '") + s.name + "'");
  r.batch = batch < 0 ? 1 : batch;
  return r;
}

std::string row_note(const RowInputs& in, int64_t row) {
  return in.batch > 1 ? " (batch row " + std::to_string(row) + ")" : "";
}

Status check_utf8(const std::string& s, const std::string& input, const std::string& where) {
  const size_t bad = tok::utf8_first_invalid(s);
  if (bad == std::string::npos) return {};
  return invalid_argument("input '" + input + "' is not valid UTF-8 (at byte offset " + std::to_string(bad) +
                          ")" + where);
}

// Text words -> token sequences (empty ones dropped), as the preprocessing model tokenizes stop and bad
// words.
Result<std::vector<std::vector<int32_t>>> tokenize_words(const Tokenizer& tok,
                                                         const std::vector<std::string>& words,
                                                         const std::string& input, const std::string& where) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& w : words) {
    KILN_RETURN_IF_ERROR(check_utf8(w, input, where));
    KILN_ASSIGN_OR_RETURN(auto ids, tok.encode(w, /*add_special_tokens=*/false));
    if (!ids.empty()) out.push_back(std::move(ids));
  }
  return out;
}

// Rows of token sequences -> the [rows, 2, N] layout of stop_words_list / bad_words_list: the concatenated
// ids (padded with 0), then the cumulative end offsets (padded with -1); N >= 1 as the Python preprocessing
// pads.
std::vector<int32_t> word_lists(const std::vector<std::vector<std::vector<int32_t>>>& rows, int64_t& n) {
  n = 1;
  for (const auto& words : rows) {
    int64_t len = 0;
    for (const auto& w : words) len += static_cast<int64_t>(w.size());
    n = std::max(n, len);
  }
  std::vector<int32_t> out;
  for (const auto& words : rows) {
    std::vector<int32_t> ids, offsets;
    for (const auto& w : words) {
      ids.insert(ids.end(), w.begin(), w.end());
      offsets.push_back(static_cast<int32_t>(ids.size()));
    }
    ids.resize(n, 0);
    offsets.resize(n, -1);
    out.insert(out.end(), ids.begin(), ids.end());
    out.insert(out.end(), offsets.begin(), offsets.end());
  }
  return out;
}

// embedding_bias_words / _weights -> a bias over the tokenizer's vocabulary (every token of a word gets its
// weight); empty when no words are given.
Result<std::vector<float>> embedding_bias(const Tokenizer& tok, const std::vector<std::string>& words,
                                          const std::vector<float>& weights, const std::string& words_input,
                                          const std::string& weights_input, const std::string& where) {
  if (words.size() != weights.size())
    return invalid_argument("input '" + words_input + "' has " + std::to_string(words.size()) +
                            " words but '" + weights_input + "' has " + std::to_string(weights.size()) +
                            " weights" + where);
  if (words.empty()) return std::vector<float>();
  std::vector<float> bias(static_cast<size_t>(tok.vocab_size()), 0.0f);
  for (size_t i = 0; i < words.size(); ++i) {
    KILN_RETURN_IF_ERROR(check_utf8(words[i], words_input, where));
    KILN_ASSIGN_OR_RETURN(auto ids, tok.encode(words[i], /*add_special_tokens=*/false));
    for (int32_t id : ids)
      if (id >= 0 && static_cast<size_t>(id) < bias.size()) bias[static_cast<size_t>(id)] += weights[i];
  }
  return bias;
}

// The tokenizer's default end and pad ids (as the Python preprocessing: EOS, and the pad token or EOS).
int32_t default_end_id(const Tokenizer& tok) {
  const auto eos = tok.eos_token_ids();
  return eos.empty() ? -1 : eos[0];
}

int32_t default_pad_id(const Tokenizer& tok) {
  const auto& c = tok.config();
  if (c.contains("pad_token")) {
    const auto& p = c["pad_token"];
    std::string s = p.is_string() ? p.get<std::string>()
                    : (p.is_object() && p.contains("content") && p["content"].is_string())
                        ? p["content"].get<std::string>()
                        : "";
    if (!s.empty())
      if (auto id = tok.token_to_id(s)) return *id;
  }
  return default_end_id(tok);
}

std::string kserve_type_name(inference::DataType t) {
  if (t == inference::TYPE_STRING) return "BYTES";
  const std::string n = inference::DataType_Name(t);
  return n.rfind("TYPE_", 0) == 0 ? n.substr(5) : n;
}

// Model metadata: the config's inputs and outputs when it lists them, else the built-in contract.
ModelMetadata text_metadata(const std::string& name, const std::string& version,
                            const inference::ModelConfig& c, std::string platform,
                            std::span<const InputSpec> inputs, const std::vector<OutputSpec>& outputs) {
  ModelMetadata md;
  md.name = name;
  md.versions = {version};
  md.platform = std::move(platform);
  const bool batched = c.max_batch_size() > 0;
  auto with_batch = [&](std::vector<int64_t> v) {
    if (batched) v.insert(v.begin(), -1);
    return v;
  };
  if (c.input_size() > 0) {
    for (const auto& in : c.input())
      md.inputs.push_back({in.name(), kserve_type_name(in.data_type()),
                           with_batch(std::vector<int64_t>(in.dims().begin(), in.dims().end())),
                           in.optional()});
  } else {
    for (const InputSpec& s : inputs)
      if (!s.unsupported)
        md.inputs.push_back(
            {s.name, tensor_type_name(s.type), with_batch({s.per == Per::kOne ? 1 : -1}), !s.required});
  }
  if (c.output_size() > 0) {
    for (const auto& out : c.output())
      md.outputs.push_back({out.name(), kserve_type_name(out.data_type()),
                            with_batch(std::vector<int64_t>(out.dims().begin(), out.dims().end())), false});
  } else {
    for (const OutputSpec& s : outputs)
      md.outputs.push_back({s.name, tensor_type_name(s.type), with_batch(s.dims), false});
  }
  return md;
}

std::string platform_of(const inference::ModelConfig& c) {
  if (!c.platform().empty()) return c.platform();
  return c.backend().empty() ? "kiln_text" : c.backend();
}

bool wanted(const std::set<std::string>& w, const std::string& name) {
  return w.empty() || w.count(name) > 0;
}

// Stacks per-row FP32 tensors (each shaped [1, d...], or [d...] when `leading_one` is false) into [rows, max
// d...], zero-padded; a row without the tensor is zeros.
InferTensor stack_rows(const std::string& name, const std::vector<const InferTensor*>& rows,
                       bool leading_one) {
  std::vector<int64_t> dims;
  for (const InferTensor* t : rows) {
    if (!t) continue;
    std::vector<int64_t> d(t->shape.begin() + (leading_one && !t->shape.empty() ? 1 : 0), t->shape.end());
    if (dims.size() < d.size()) dims.resize(d.size(), 0);
    for (size_t i = 0; i < d.size(); ++i) dims[i] = std::max(dims[i], d[i]);
  }
  int64_t per_row = 1;
  for (int64_t d : dims) per_row *= d;
  std::vector<float> out(static_cast<size_t>(per_row) * rows.size(), 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) {
    const InferTensor* t = rows[r];
    if (!t) continue;
    std::vector<int64_t> d(t->shape.begin() + (leading_one && !t->shape.empty() ? 1 : 0), t->shape.end());
    if (d.size() != dims.size()) continue;  // a rank that does not fit: left as zeros
    const std::vector<float> v = t->values<float>();
    std::vector<int64_t> idx(d.size(), 0);
    for (size_t k = 0; k < v.size(); ++k) {
      int64_t at = 0;
      for (size_t i = 0; i < d.size(); ++i) at = at * dims[i] + idx[i];
      out[r * static_cast<size_t>(per_row) + static_cast<size_t>(at)] = v[k];
      for (size_t i = d.size(); i-- > 0;) {
        if (++idx[i] < d[i]) break;
        idx[i] = 0;
      }
    }
  }
  std::vector<int64_t> shape = dims;
  shape.insert(shape.begin(), static_cast<int64_t>(rows.size()));
  return InferTensor::make(name, TensorType::kFp32, shape, out);
}

const InferTensor* find_output(const std::vector<InferTensor>& outs, const std::string& name) {
  for (const InferTensor& t : outs)
    if (t.name == name) return &t;
  return nullptr;
}

const char* const kLogOutputs[] = {"cum_log_probs", "output_log_probs", "context_logits",
                                   "generation_logits"};

// Whether an id has a string in the tokenizer. An engine's vocabulary is often padded past the tokenizer's
// (Phi-3: 32064 embedding rows, 32011 tokens), and a model can emit a padding id; Hugging Face's decode (the
// Python postprocessing) skips such ids, and so do the text models, rather than failing the whole request.
bool known_id(const Tokenizer& tok, int32_t id) { return id < tok.vocab_size(); }

// ===================================================================================================
// A model that answers a call at once on the caller's thread (tokenizer work only): one reply, counted.

class ImmediateModel : public Model {
 public:
  void shutdown(std::chrono::seconds) override {}

  Result<CancelFn> infer(InferCall call, ReplyFn on_reply) override {
    const auto t0 = Clock::now();
    auto out = run(call);
    if (!out.ok()) {
      record(false, ns_since(t0), 0, 0);
      return out.status();
    }
    // Rows: the leading (batch) dimension of the inputs when the model batches.
    uint64_t rows = 1;
    if (config_->max_batch_size() > 0 && !call.inputs.empty() && !call.inputs[0].shape.empty())
      rows = static_cast<uint64_t>(std::max<int64_t>(1, call.inputs[0].shape[0]));
    record(true, ns_since(t0), 0, ns_since(t0), rows);
    on_reply(InferReply{call.model, version_, call.id, {}, std::move(*out), true});
    return CancelFn([] {});
  }

 protected:
  using Model::Model;
  virtual Result<std::vector<InferTensor>> run(const InferCall& call) const = 0;
};

// ===================================================================================================
// preprocessing: text -> the tensorrt_llm model's token inputs.

class PreprocessingModel : public ImmediateModel {
 public:
  PreprocessingModel(std::string name, std::shared_ptr<inference::ModelConfig> c,
                     std::shared_ptr<const Tokenizer> tok, bool add_special)
      : ImmediateModel(std::move(name), std::move(c)), tok_(std::move(tok)), add_special_(add_special) {}

  ModelMetadata metadata() const override {
    return text_metadata(name_, version_, *config_, platform_of(*config_), kPreprocessingInputs,
                         kPreprocessingOutputs);
  }
 private:
  Result<std::vector<InferTensor>> run(const InferCall& call) const override {
    const int64_t mbs = config_->max_batch_size();
    KILN_ASSIGN_OR_RETURN(RowInputs in, parse_inputs(call.inputs, kPreprocessingInputs, mbs, name_));
    const int64_t B = in.batch;
    const bool batched = mbs > 0;
    auto shape = [&](std::vector<int64_t> inner) {
      if (batched) inner.insert(inner.begin(), B);
      return inner;
    };
    std::vector<std::vector<int32_t>> ids(B);
    std::vector<int32_t> lens(B), end_ids(B), pad_ids(B);
    std::vector<std::vector<std::vector<int32_t>>> bad(B), stop(B);
    std::vector<std::vector<float>> bias(B);
    size_t max_len = 0, bias_len = 0;
    for (int64_t r = 0; r < B; ++r) {
      const std::string where = row_note(in, r);
      const std::string query = in.strings("QUERY", r)[0];
      KILN_RETURN_IF_ERROR(check_utf8(query, "QUERY", where));
      KILN_ASSIGN_OR_RETURN(ids[r], tok_->encode(query, add_special_));
      lens[r] = static_cast<int32_t>(ids[r].size());
      max_len = std::max(max_len, ids[r].size());
      end_ids[r] = in.has("END_ID") ? in.one<int32_t>("END_ID", r) : default_end_id(*tok_);
      pad_ids[r] = in.has("PAD_ID") ? in.one<int32_t>("PAD_ID", r) : default_pad_id(*tok_);
      if (in.has("BAD_WORDS_DICT")) {
        KILN_ASSIGN_OR_RETURN(
            bad[r], tokenize_words(*tok_, in.strings("BAD_WORDS_DICT", r), "BAD_WORDS_DICT", where));
      }
      if (in.has("STOP_WORDS_DICT")) {
        KILN_ASSIGN_OR_RETURN(
            stop[r], tokenize_words(*tok_, in.strings("STOP_WORDS_DICT", r), "STOP_WORDS_DICT", where));
      }
      if (in.has("EMBEDDING_BIAS_WORDS") || in.has("EMBEDDING_BIAS_WEIGHTS")) {
        if (!in.has("EMBEDDING_BIAS_WORDS") || !in.has("EMBEDDING_BIAS_WEIGHTS"))
          return invalid_argument("give EMBEDDING_BIAS_WORDS and EMBEDDING_BIAS_WEIGHTS together");
        KILN_ASSIGN_OR_RETURN(
            bias[r], embedding_bias(*tok_, in.strings("EMBEDDING_BIAS_WORDS", r),
                                    in.list<float>("EMBEDDING_BIAS_WEIGHTS", r), "EMBEDDING_BIAS_WORDS",
                                    "EMBEDDING_BIAS_WEIGHTS", where));
        bias_len = std::max(bias_len, bias[r].size());
      }
    }
    std::vector<InferTensor> out;
    auto add = [&](InferTensor t) {
      if (wanted(call.requested_outputs, t.name)) out.push_back(std::move(t));
    };
    // Prompts of different lengths are right-padded with the row's pad id; REQUEST_INPUT_LEN says the real
    // length.
    std::vector<int32_t> flat;
    for (int64_t r = 0; r < B; ++r) {
      flat.insert(flat.end(), ids[r].begin(), ids[r].end());
      flat.insert(flat.end(), max_len - ids[r].size(), pad_ids[r]);
    }
    add(InferTensor::make("INPUT_ID", TensorType::kInt32, shape({static_cast<int64_t>(max_len)}), flat));
    add(InferTensor::make("REQUEST_INPUT_LEN", TensorType::kInt32, shape({1}), lens));
    int64_t n = 0;
    std::vector<int32_t> words;
    if (in.has("BAD_WORDS_DICT")) {
      words = word_lists(bad, n);
    } else {
      n = 0;  // none: an empty [2, 0] list, as the Python model sends
    }
    add(InferTensor::make("BAD_WORDS_IDS", TensorType::kInt32, shape({2, n}), words));
    words.clear();
    n = 0;
    if (in.has("STOP_WORDS_DICT")) words = word_lists(stop, n);
    add(InferTensor::make("STOP_WORDS_IDS", TensorType::kInt32, shape({2, n}), words));
    std::vector<float> b(static_cast<size_t>(B) * bias_len, 0.0f);
    for (int64_t r = 0; r < B; ++r) std::copy(bias[r].begin(), bias[r].end(), b.begin() + r * bias_len);
    add(InferTensor::make("EMBEDDING_BIAS", TensorType::kFp32, shape({static_cast<int64_t>(bias_len)}), b));
    InferTensor len = *in.in.at("REQUEST_OUTPUT_LEN").t;  // passed through as sent
    add(std::move(len));
    add(InferTensor::make("OUT_END_ID", TensorType::kInt32, shape({1}), end_ids));
    add(InferTensor::make("OUT_PAD_ID", TensorType::kInt32, shape({1}), pad_ids));
    return out;
  }

  std::shared_ptr<const Tokenizer> tok_;
  bool add_special_ = false;
};

// ===================================================================================================
// postprocessing: output ids -> text (each beam cut at its sequence length, special tokens skipped).

class PostprocessingModel : public ImmediateModel {
 public:
  PostprocessingModel(std::string name, std::shared_ptr<inference::ModelConfig> c,
                      std::shared_ptr<const Tokenizer> tok, bool skip_special)
      : ImmediateModel(std::move(name), std::move(c)), tok_(std::move(tok)), skip_special_(skip_special) {}

  ModelMetadata metadata() const override {
    return text_metadata(name_, version_, *config_, platform_of(*config_), kPostprocessingInputs,
                         kPostprocessingOutputs);
  }
 private:
  Result<std::vector<InferTensor>> run(const InferCall& call) const override {
    const int64_t mbs = config_->max_batch_size();
    KILN_ASSIGN_OR_RETURN(RowInputs in, parse_inputs(call.inputs, kPostprocessingInputs, mbs, name_));
    const InferTensor& tokens = *in.in.at("TOKENS_BATCH").t;
    std::vector<int64_t> row_shape = tokens.shape;
    if (mbs > 0) row_shape.erase(row_shape.begin());
    if (row_shape.empty() || row_shape.size() > 2)
      return invalid_argument("input 'TOKENS_BATCH': shape " + shape_string(tokens.shape) +
                              " is not [batch, beams, length]");
    const int64_t beams = row_shape.size() == 2 ? row_shape[0] : 1;
    const int64_t len = row_shape.back();
    if (in.has("SEQUENCE_LENGTH") && in.in.at("SEQUENCE_LENGTH").per_row != beams)
      return invalid_argument("input 'SEQUENCE_LENGTH' must hold one length per beam (" +
                              std::to_string(beams) + ")");
    std::vector<std::string> texts;
    for (int64_t r = 0; r < in.batch; ++r) {
      const std::vector<int32_t> ids = in.list<int32_t>("TOKENS_BATCH", r);
      const std::vector<int32_t> seq = in.has("SEQUENCE_LENGTH")
                                           ? in.list<int32_t>("SEQUENCE_LENGTH", r)
                                           : std::vector<int32_t>(beams, static_cast<int32_t>(len));
      for (int64_t b = 0; b < beams; ++b) {
        if (seq[b] < 0)
          return invalid_argument("input 'SEQUENCE_LENGTH' holds a negative length " +
                                  std::to_string(seq[b]) + row_note(in, r));
        const int64_t n = std::min<int64_t>(seq[b], len);  // as the Python model slices tokens[:seq_len]
        std::vector<int32_t> beam;  // negative ids stay in: decode refuses them by name
        for (int64_t k = 0; k < n; ++k)
          if (known_id(*tok_, ids[b * len + k])) beam.push_back(ids[b * len + k]);
        auto text = tok_->decode(beam, skip_special_);
        if (!text.ok()) return text.status().with_context("input 'TOKENS_BATCH'" + row_note(in, r));
        texts.push_back(std::move(*text));
      }
    }
    std::vector<InferTensor> out;
    // One flat list of every row's beams, as the Python model returns it (a client reads output[0]).
    if (wanted(call.requested_outputs, "OUTPUT"))
      out.push_back(InferTensor::make_strings("OUTPUT", {static_cast<int64_t>(texts.size())}, texts));
    for (const char* n : {"CUM_LOG_PROBS", "OUTPUT_LOG_PROBS", "CONTEXT_LOGITS", "GENERATION_LOGITS"}) {
      if (!in.has(n)) continue;
      InferTensor t = *in.in.at(n).t;
      t.name = std::string("OUT_") + n;
      if (wanted(call.requested_outputs, t.name)) out.push_back(std::move(t));
    }
    return out;
  }

  std::shared_ptr<const Tokenizer> tok_;
  bool skip_special_ = true;
};

// ===================================================================================================
// ensemble / tensorrt_llm_bls: text in, text out, through the tensorrt_llm model.

struct PipelineRow {
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  bool inner_stream = false;  // the tensorrt_llm call streams (client streaming, or stop strings to watch)
  bool echo = false;          // exclude_input_in_output false: the prompt leads the text
  std::vector<std::string> stops;
  std::unique_ptr<TextStream> stream;             // inner_stream: ids -> text, stop strings cut
  std::string text;                               // inner_stream: the text so far
  std::vector<std::string> beam_texts;            // the final text of each beam
  std::vector<InferTensor> extras;                // log-prob / logits outputs of the final reply
  bool finished = false;
  bool cancel_wanted = false;  // stopped before the tensorrt_llm call's CancelFn was known
  CancelFn cancel;
};

class TextGenerationModel;

// One call in flight. It holds all that its replies need, so that they reach the client even when the model
// is unloaded while its tensorrt_llm calls finish.
struct PipelineCall {
  std::mutex mu;
  std::weak_ptr<TextGenerationModel> owner;  // statistics only
  std::shared_ptr<const Tokenizer> tok;
  bool skip_special = true;
  std::string target;
  std::string model, version, id;
  std::set<std::string> wanted;
  ReplyFn reply;
  std::vector<PipelineRow> rows;
  size_t remaining = 0;
  bool done = false;  // the final reply went out (or the call failed before anything was queued)
  bool client_stream = false;
  bool accumulate = false;      // streamed replies carry the whole text so far (BLS accumulate_tokens)
  bool target_echoes = false;   // the tensorrt_llm model's output_ids start with the prompt
  bool target_batched = false;  // its tensors have a leading batch dimension
  bool cancelled = false;       // the client went away (the call's CancelFn): counted as a failure
  Clock::time_point start = Clock::now();
};

class TextGenerationModel : public Model {
 public:
  TextGenerationModel(std::string name, std::shared_ptr<inference::ModelConfig> c, TextModelKind kind,
                      ServerCore* core)
      : Model(std::move(name), std::move(c)), kind_(kind), core_(core) {}

  ModelMetadata metadata() const override {
    return text_metadata(name_, version_, *config_, platform_of(*config_), kPipelineInputs, kPipelineOutputs);
  }
  Result<CancelFn> infer(InferCall call, ReplyFn on_reply) override;
  void shutdown(std::chrono::seconds timeout) override;
  // A call's final reply went out.
  void call_ended(bool ok, uint64_t ns, uint64_t rows) {
    --pending_;
    record(ok, ns, 0, ok ? ns : 0, rows);
  }
  // A typed call (text_generation_model) ended.
  void typed_call_ended(bool ok, uint64_t ns) { record(ok, ns, 0, ok ? ns : 0, 1); }

  TextModelKind kind_;
  ServerCore* core_;
  std::string target_;
  std::shared_ptr<const Tokenizer> tok_;
  bool add_special_ = false, skip_special_ = true, exclude_input_ = true, decoupled_ = false,
       accumulate_ = false;

 private:
  std::atomic<bool> stopping_{false};
  std::mutex calls_mu_;
  std::vector<std::weak_ptr<PipelineCall>> calls_;  // in flight, for shutdown
};

// The scalar inputs passed to the tensorrt_llm model unchanged, under its names.
const std::pair<const char*, const char*> kPassThrough[] = {
    {"end_id", "end_id"},
    {"pad_id", "pad_id"},
    {"top_k", "runtime_top_k"},
    {"top_p", "runtime_top_p"},
    {"temperature", "temperature"},
    {"length_penalty", "len_penalty"},
    {"repetition_penalty", "repetition_penalty"},
    {"min_length", "min_length"},
    {"min_tokens", "min_length"},
    {"presence_penalty", "presence_penalty"},
    {"frequency_penalty", "frequency_penalty"},
    {"random_seed", "random_seed"},
    {"seed", "random_seed"},
    {"return_log_probs", "return_log_probs"},
    {"return_context_logits", "return_context_logits"},
    {"return_generation_logits", "return_generation_logits"},
    {"beam_width", "beam_width"},
};

void on_inner_reply(const std::shared_ptr<PipelineCall>& st, size_t index, InferReply r);

Result<CancelFn> TextGenerationModel::infer(InferCall call, ReplyFn on_reply) {
  const auto t0 = Clock::now();
  auto fail_now = [&](Status s) -> Result<CancelFn> {
    record(false, ns_since(t0), 0, 0);
    return s;
  };
  if (stopping_) return fail_now(unavailable("model '" + name_ + "' is shutting down"));
  auto parsed = parse_inputs(call.inputs, kPipelineInputs, config_->max_batch_size(), name_);
  if (!parsed.ok()) return fail_now(parsed.status());
  const RowInputs& in = *parsed;
  const int64_t B = in.batch;
  if (in.has("min_length") && in.has("min_tokens"))
    return fail_now(invalid_argument("give min_length or min_tokens, not both"));
  if (in.has("random_seed") && in.has("seed"))
    return fail_now(invalid_argument("give random_seed or seed, not both"));

  bool client_stream = false;
  for (int64_t r = 0; r < B; ++r) client_stream |= in.flag("stream", r);
  if (decoupled_ && !call.stream)
    return fail_now(invalid_argument(
        "model '" + name_ + "' is decoupled: use ModelStreamInfer (gRPC) or generate_stream (HTTP)"));
  if (client_stream) {
    if (!call.stream)
      return fail_now(invalid_argument(
          "stream=true needs a streaming call: gRPC ModelStreamInfer or HTTP generate_stream"));
    if (kind_ == TextModelKind::kBls && !decoupled_)
      return fail_now(invalid_argument(
          "stream=true needs a decoupled model (model_transaction_policy { decoupled: true })"));
    if (B > 1) return fail_now(invalid_argument("stream=true takes one prompt per call (batch size 1)"));
  }

  // The tensorrt_llm model, looked up now (it may have been loaded after this one, or reloaded).
  auto tc = core_->model_config(target_, "");
  if (!tc.ok())
    return fail_now(
        Status(tc.status().code() == StatusCode::kNotFound ? StatusCode::kUnavailable : tc.status().code(),
               "model '" + name_ + "' needs model '" + target_ + "': " + tc.status().message()));
  const inference::ModelConfig& target = **tc;
  const bool target_decoupled = target.model_transaction_policy().decoupled();
  auto target_exclude = bool_param(target, "exclude_input_in_output", false);
  if (!target_exclude.ok()) return fail_now(target_exclude.status());
  if (client_stream && !target_decoupled)
    return fail_now(invalid_argument(
        "stream=true needs model '" + target_ +
        "' to be decoupled (model_transaction_policy { decoupled: true } in its config.pbtxt)"));

  auto st = std::make_shared<PipelineCall>();
  st->tok = tok_;
  st->skip_special = skip_special_;
  st->target = target_;
  st->model = call.model;
  st->version = version_;
  st->id = call.id;
  st->wanted = call.requested_outputs;
  st->reply = std::move(on_reply);
  st->client_stream = client_stream;
  st->accumulate = accumulate_;
  st->target_echoes = !*target_exclude;
  st->target_batched = target.max_batch_size() > 0;
  st->start = t0;
  st->rows.resize(B);
  st->remaining = B;

  // Every row is checked and tokenized before anything is queued.
  std::vector<InferCall> inner(B);
  for (int64_t r = 0; r < B; ++r) {
    const std::string where = row_note(in, r);
    PipelineRow& row = st->rows[r];
    row.prompt = in.strings("text_input", r)[0];
    // An empty prompt would only generate from the BOS token (or from nothing): refused by name.
    if (row.prompt.empty()) return fail_now(invalid_argument("input 'text_input' is empty" + where));
    if (auto s = check_utf8(row.prompt, "text_input", where); !s.ok()) return fail_now(s);
    auto ids = tok_->encode(row.prompt, add_special_);
    if (!ids.ok()) return fail_now(ids.status().with_context("input 'text_input'" + where));
    if (ids->empty()) return fail_now(invalid_argument("input 'text_input' is empty (no tokens)" + where));
    row.prompt_ids = std::move(*ids);
    const int32_t max_tokens = in.one<int32_t>("max_tokens", r);
    if (max_tokens < 1)
      return fail_now(
          invalid_argument("max_tokens=" + std::to_string(max_tokens) + " must be at least 1" + where));
    const int32_t beam_width = in.has("beam_width") ? in.one<int32_t>("beam_width", r) : 1;
    if (in.has("num_return_sequences") && in.one<int32_t>("num_return_sequences", r) != 1)
      return fail_now(unimplemented(
          "input 'num_return_sequences': only 1 is supported (use beam_width for several beams)"));
    if (in.flag("return_perf_metrics", r))
      return fail_now(unimplemented("input 'return_perf_metrics' is not supported yet"));
    if (client_stream && beam_width > 1)
      return fail_now(unimplemented("stream=true with beam_width > 1 is not supported by the text models"));
    if (in.has("stop_words")) {
      for (std::string& s : in.strings("stop_words", r)) {
        if (auto u = check_utf8(s, "stop_words", where); !u.ok()) return fail_now(u);
        if (!s.empty()) row.stops.push_back(std::move(s));
      }
    }
    const bool logs = in.flag("return_log_probs", r) || in.flag("return_context_logits", r) ||
                      in.flag("return_generation_logits", r);
    row.echo = in.has("exclude_input_in_output") ? !in.flag("exclude_input_in_output", r) : !exclude_input_;
    // Watching the text as it grows lets a stop string end generation at once; without a decoupled
    // tensorrt_llm model (or with beams, or log-prob outputs to merge) the whole output is cut afterwards
    // instead.
    row.inner_stream = client_stream || (!row.stops.empty() && target_decoupled && beam_width == 1 && !logs);
    if (row.inner_stream) {
      row.stream = std::make_unique<TextStream>(tok_, row.prompt_ids, skip_special_, row.stops);
    }

    // The tensorrt_llm call, with the tensors the ensemble's preprocessing step would send.
    InferCall& c = inner[r];
    c.model = target_;
    c.id = call.id;
    c.stream = true;  // this side takes several replies (and a decoupled tensorrt_llm model insists on it)
    c.priority = call.priority;
    c.timeout_us = call.timeout_us;
    auto shape = [&](std::vector<int64_t> inner_dims) {
      if (st->target_batched) inner_dims.insert(inner_dims.begin(), 1);
      return inner_dims;
    };
    const int64_t L = static_cast<int64_t>(row.prompt_ids.size());
    c.inputs.push_back(InferTensor::make("input_ids", TensorType::kInt32, shape({L}), row.prompt_ids));
    c.inputs.push_back(InferTensor::make("input_lengths", TensorType::kInt32, shape({1}),
                                         std::vector<int32_t>{static_cast<int32_t>(L)}));
    c.inputs.push_back(InferTensor::make("request_output_len", TensorType::kInt32, shape({1}),
                                         std::vector<int32_t>{max_tokens}));
    for (const auto& [from, to] : kPassThrough) {
      if (!in.has(from)) continue;
      const RowInputs::Entry& e = in.in.at(from);
      const size_t size = tensor_type_size(e.t->type);
      InferTensor t{to, e.t->type, shape({1}), e.t->data.substr(static_cast<size_t>(r) * size, size)};
      c.inputs.push_back(std::move(t));
    }
    if (row.inner_stream)
      c.inputs.push_back(
          InferTensor::make("streaming", TensorType::kBool, shape({1}), std::vector<uint8_t>{1}));
    auto add_words = [&](const char* name, const std::vector<std::vector<int32_t>>& words) {
      if (words.empty()) return;
      int64_t n = 0;
      std::vector<int32_t> v = word_lists({words}, n);
      c.inputs.push_back(InferTensor::make(name, TensorType::kInt32, shape({2, n}), v));
    };
    if (in.has("bad_words")) {
      auto bad = tokenize_words(*tok_, in.strings("bad_words", r), "bad_words", where);
      if (!bad.ok()) return fail_now(bad.status());
      add_words("bad_words_list", *bad);
    }
    if (!row.stops.empty() && !row.inner_stream) {
      // Also as token sequences, so that generation usually ends there; the text is cut at the string either
      // way.
      auto stop = tokenize_words(*tok_, row.stops, "stop_words", where);
      if (!stop.ok()) return fail_now(stop.status());
      add_words("stop_words_list", *stop);
    }
    if (in.has("embedding_bias_words") || in.has("embedding_bias_weights")) {
      if (!in.has("embedding_bias_words") || !in.has("embedding_bias_weights"))
        return fail_now(invalid_argument("give embedding_bias_words and embedding_bias_weights together"));
      auto bias = embedding_bias(*tok_, in.strings("embedding_bias_words", r),
                                 in.list<float>("embedding_bias_weights", r), "embedding_bias_words",
                                 "embedding_bias_weights", where);
      if (!bias.ok()) return fail_now(bias.status());
      if (!bias->empty())
        c.inputs.push_back(InferTensor::make("embedding_bias", TensorType::kFp32,
                                             shape({static_cast<int64_t>(bias->size())}), *bias));
    }
  }

  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    std::erase_if(calls_, [](const std::weak_ptr<PipelineCall>& w) { return w.expired(); });
    calls_.push_back(st);
  }
  ++pending_;
  st->owner = std::static_pointer_cast<TextGenerationModel>(shared_from_this());
  for (int64_t r = 0; r < B; ++r) {
    auto started = core_->infer(std::move(inner[r]), [st, r](InferReply reply) {
      on_inner_reply(st, static_cast<size_t>(r), std::move(reply));
    });
    std::vector<CancelFn> cancels;
    bool already_replied = false;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      if (started.ok()) {
        PipelineRow& row = st->rows[r];
        row.cancel = std::move(*started);
        // Stopped by a stop string already, or the call failed while this row was being queued.
        if (row.cancel_wanted || (st->done && !row.finished)) cancels.push_back(row.cancel);
      } else {
        already_replied = st->done;  // another row failed first and its reply went out
        st->done = true;
        for (int64_t k = 0; k < r; ++k)
          if (st->rows[k].cancel && !st->rows[k].finished) cancels.push_back(st->rows[k].cancel);
      }
    }
    for (CancelFn& c : cancels) c();
    if (!started.ok()) {
      if (already_replied) return CancelFn([] {});
      --pending_;
      // The tensorrt_llm model's own check (e.g. a prompt over max_input_len), before anything was queued.
      return fail_now(started.status());
    }
  }
  return CancelFn([st] {
    std::vector<CancelFn> cancels;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      if (!st->done) st->cancelled = true;  // the statistics count it as a failure, as the tensorrt_llm model does
      for (PipelineRow& row : st->rows)
        if (row.cancel && !row.finished) cancels.push_back(row.cancel);
    }
    for (CancelFn& c : cancels)
      c();  // the tensorrt_llm calls end with "cancelled": their text so far is the answer
  });
}

// The final reply of a finished call (under st.mu).
InferReply final_reply(PipelineCall& st);

// A reply of row `index`'s tensorrt_llm call (on an engine thread).
void on_inner_reply(const std::shared_ptr<PipelineCall>& st, size_t index, InferReply r) {
  std::optional<InferReply> out;
  std::vector<CancelFn> cancels;
  bool ended = false, ok = true;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    if (st->done) return;
    ok = !st->cancelled;
    PipelineRow& row = st->rows[index];
    if (row.finished) return;
    auto fail = [&](Status s) {
      st->done = true;
      ended = true;
      ok = false;
      for (size_t k = 0; k < st->rows.size(); ++k)
        if (k != index && st->rows[k].cancel && !st->rows[k].finished) cancels.push_back(st->rows[k].cancel);
      row.finished = true;
      out = InferReply{st->model, st->version, st->id, std::move(s), {}, true};
    };
    const InferTensor* ids_t = find_output(r.outputs, "output_ids");
    if (!r.error.ok()) {
      fail(r.error);
    } else if (!row.inner_stream && r.final && !ids_t) {
      fail(internal_error("model '" + st->target + "' sent no output_ids"));
    } else if (row.inner_stream) {
      // A chunk of new tokens (beam width 1): text delta -> stop strings -> the client's stream or the total.
      Result<TextStream::Out> o = TextStream::Out{};
      if (ids_t) o = row.stream->add(ids_t->values<int32_t>());
      if (o.ok() && r.final && !o->stopped) {
        auto rest = row.stream->finish();
        if (rest.ok())
          o->text += *rest;
        else
          o = rest.status();
      }
      if (!o.ok()) {
        fail(o.status().with_context("decoding the output"));
      } else {
        std::string piece = std::move(o->text);
        const bool row_done = r.final || o->stopped;
        if (o->stopped && !r.final) {
          if (row.cancel)
            cancels.push_back(row.cancel);
          else
            row.cancel_wanted = true;
        }
        if (row.echo && row.text.empty() && !row.prompt.empty()) piece = row.prompt + piece;
        row.text += piece;
        if (st->client_stream) {
          std::vector<InferTensor> outs;
          const std::string& shown = st->accumulate ? row.text : piece;
          if (!piece.empty() || (st->accumulate && row_done)) {
            if (wanted(st->wanted, "text_output"))
              outs.push_back(InferTensor::make_strings("text_output", {1}, {shown}));
          }
          for (const char* n : kLogOutputs)
            if (const InferTensor* t = find_output(r.outputs, n); t && wanted(st->wanted, n))
              outs.push_back(*t);
          if (row_done) {
            row.finished = true;
            st->done = true;
            ended = true;
          }
          if (!outs.empty() || row_done)
            out = InferReply{st->model, st->version, st->id, {}, std::move(outs), row_done};
        } else if (row_done) {
          row.finished = true;
          row.beam_texts = {row.text};
          if (--st->remaining == 0) {
            st->done = true;
            ended = true;
            out = final_reply(*st);
          }
        }
      }
    } else if (r.final) {
      // The whole output: each beam's ids (after the prompt when the tensorrt_llm model echoes it) -> text.
      const std::vector<int32_t> ids = ids_t->values<int32_t>();
      const int64_t len = ids_t->shape.empty() ? 0 : ids_t->shape.back();
      const int64_t beams = ids_t->shape.size() >= 2 ? ids_t->shape[ids_t->shape.size() - 2] : 1;
      std::vector<int32_t> seq(static_cast<size_t>(beams), static_cast<int32_t>(len));
      if (const InferTensor* s = find_output(r.outputs, "sequence_length")) {
        auto v = s->values<int32_t>();
        for (size_t b = 0; b < seq.size() && b < v.size(); ++b)
          seq[b] = std::clamp<int32_t>(v[b], 0, static_cast<int32_t>(len));
      }
      Status err;
      for (int64_t b = 0; b < beams && err.ok(); ++b) {
        size_t from = static_cast<size_t>(b * len), to = from + static_cast<size_t>(seq[b]);
        if (st->target_echoes) from = std::min(to, from + row.prompt_ids.size());
        TextStream stream(st->tok, row.prompt_ids, st->skip_special, row.stops);
        auto o = stream.add(std::span<const int32_t>(ids.data() + from, to - from));
        if (!o.ok()) {
          err = o.status();
          break;
        }
        std::string text = std::move(o->text);
        if (!o->stopped) {
          auto rest = stream.finish();
          if (!rest.ok()) {
            err = rest.status();
            break;
          }
          text += *rest;
        }
        row.beam_texts.push_back(row.echo ? row.prompt + text : text);
      }
      if (!err.ok()) {
        fail(err.with_context("decoding the output"));
      } else {
        for (const char* n : kLogOutputs)
          if (const InferTensor* t = find_output(r.outputs, n)) row.extras.push_back(*t);
        row.finished = true;
        if (--st->remaining == 0) {
          st->done = true;
          ended = true;
          out = final_reply(*st);
        }
      }
    }
  }
  for (CancelFn& c : cancels) c();
  if (ended)
    if (auto owner = st->owner.lock()) owner->call_ended(ok, ns_since(st->start), st->rows.size());
  if (out) st->reply(std::move(*out));
}

InferReply final_reply(PipelineCall& st) {
  InferReply reply{st.model, st.version, st.id, {}, {}, true};
  std::vector<std::string> texts;
  for (const PipelineRow& row : st.rows)
    texts.insert(texts.end(), row.beam_texts.begin(), row.beam_texts.end());
  // One flat list of every row's beams, as the Python postprocessing returns it (a client reads output[0]).
  if (wanted(st.wanted, "text_output"))
    reply.outputs.push_back(
        InferTensor::make_strings("text_output", {static_cast<int64_t>(texts.size())}, texts));
  for (const char* n : kLogOutputs) {
    if (!wanted(st.wanted, n)) continue;
    std::vector<const InferTensor*> per_row;
    bool any = false;
    for (const PipelineRow& row : st.rows) {
      per_row.push_back(find_output(row.extras, n));
      any |= per_row.back() != nullptr;
    }
    if (!any) continue;
    if (per_row.size() == 1)
      reply.outputs.push_back(*per_row[0]);
    else
      reply.outputs.push_back(stack_rows(n, per_row, st.target_batched));
  }
  return reply;
}

void TextGenerationModel::shutdown(std::chrono::seconds timeout) {
  stopping_ = true;
  const auto deadline = Clock::now() + timeout;
  while (pending_ > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::vector<CancelFn> cancels;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& w : calls_) {
      auto st = w.lock();
      if (!st) continue;
      std::lock_guard<std::mutex> call_lock(st->mu);
      for (PipelineRow& row : st->rows)
        if (row.cancel && !row.finished) cancels.push_back(row.cancel);
    }
    calls_.clear();
  }
  for (CancelFn& c : cancels) c();
}

// ---- loading ----

// The tokenizer a model names with its own tokenizer_dir parameter, or nullptr when it names none.
Result<std::shared_ptr<const Tokenizer>> own_tokenizer(const std::string& dir, const std::string& name,
                                                       const inference::ModelConfig& c) {
  auto p = param(c, "tokenizer_dir");
  if (!p) return std::shared_ptr<const Tokenizer>();
  KILN_ASSIGN_OR_RETURN(std::string resolved, resolve_tokenizer_dir(dir, name, p));
  auto tok = shared_tokenizer(resolved);
  if (!tok.ok()) return tok.status().with_context("model '" + name + "': parameter tokenizer_dir");
  return tok;
}

Result<std::shared_ptr<const Tokenizer>> required_tokenizer(const std::string& dir, const std::string& name,
                                                            const inference::ModelConfig& c) {
  KILN_ASSIGN_OR_RETURN(auto tok, own_tokenizer(dir, name, c));
  if (!tok)
    return invalid_argument("model '" + name +
                            "': set the parameter tokenizer_dir (the folder with tokenizer.json)");
  return tok;
}

Result<std::shared_ptr<Model>> load_pipeline(ServerCore& core, const std::string& repo,
                                             const std::string& name,
                                             std::shared_ptr<inference::ModelConfig> config,
                                             TextModelKind kind) {
  const inference::ModelConfig& c = *config;
  const std::string dir = (fs::path(repo) / name).string();
  auto m = std::make_shared<TextGenerationModel>(name, config, kind, &core);
  // Which models play preprocessing / tensorrt_llm / postprocessing: an ensemble's steps say (by the tensors
  // they take); the BLS model names them by parameter, as the Python one does.
  std::string pre = "preprocessing", post = "postprocessing";
  m->target_ = param(c, "tensorrt_llm_model_name").value_or("tensorrt_llm");
  if (kind == TextModelKind::kEnsemble) {
    std::string from_steps;
    for (const auto& step : c.ensemble_scheduling().step()) {
      if (step.input_map().count("input_ids")) from_steps = step.model_name();
      if (step.input_map().count("QUERY")) pre = step.model_name();
      if (step.input_map().count("TOKENS_BATCH")) post = step.model_name();
    }
    if (from_steps.empty() && !param(c, "tensorrt_llm_model_name"))
      return unimplemented("ensemble '" + name +
                           "': kiln serves the TensorRT-LLM text pipeline (preprocessing -> "
                           "tensorrt_llm -> postprocessing), and no step of this one takes input_ids");
    if (!from_steps.empty()) m->target_ = from_steps;
  }
  KILN_RETURN_IF_ERROR(
      check_model_name(m->target_).with_context("model '" + name + "': the tensorrt_llm model's name"));
  std::error_code ec;
  if (!fs::exists(fs::path(repo) / m->target_ / "config.pbtxt", ec))
    return not_found("model '" + name + "' calls model '" + m->target_ + "', which is not in the repository");
  KILN_ASSIGN_OR_RETURN(auto pre_config, sibling_config(repo, pre));
  KILN_ASSIGN_OR_RETURN(auto post_config, sibling_config(repo, post));

  // The tokenizer: this model's own tokenizer_dir, else the preprocessing model's.
  KILN_ASSIGN_OR_RETURN(m->tok_, own_tokenizer(dir, name, c));
  if (!m->tok_ && pre_config) {
    KILN_ASSIGN_OR_RETURN(m->tok_, own_tokenizer((fs::path(repo) / pre).string(), pre, *pre_config));
  }
  if (!m->tok_)
    return invalid_argument(
        "model '" + name + "': no tokenizer: set the parameter tokenizer_dir here or in model '" + pre + "'");
  auto inherited_bool = [&](const std::string& key, const std::optional<inference::ModelConfig>& from,
                            bool fallback) -> Result<bool> {
    if (param(c, key)) return bool_param(c, key, fallback);
    if (from) return bool_param(*from, key, fallback);
    return fallback;
  };
  KILN_ASSIGN_OR_RETURN(m->add_special_, inherited_bool("add_special_tokens", pre_config, false));
  KILN_ASSIGN_OR_RETURN(m->skip_special_, inherited_bool("skip_special_tokens", post_config, true));
  KILN_ASSIGN_OR_RETURN(m->exclude_input_, bool_param(c, "exclude_input_in_output", true));
  KILN_ASSIGN_OR_RETURN(m->accumulate_, bool_param(c, "accumulate_tokens", false));
  m->decoupled_ = kind == TextModelKind::kBls && c.model_transaction_policy().decoupled();
  if (c.max_batch_size() < 0) return invalid_argument("max_batch_size must not be negative");
  report_unused(name, c,
                {"tokenizer_dir", "tokenizer_type", "add_special_tokens", "skip_special_tokens",
                 "exclude_input_in_output", "accumulate_tokens", "tensorrt_llm_model_name"});
  std::fprintf(stderr, "kiln serve: model '%s': text in, text out through model '%s'%s\n", name.c_str(),
               m->target_.c_str(), m->decoupled_ ? " (decoupled: streams)" : "");
  return std::shared_ptr<Model>(std::move(m));
}

}  // namespace

std::optional<TextModelKind> text_model_kind(const inference::ModelConfig& c, const std::string& name) {
  if (c.platform() == "ensemble") return TextModelKind::kEnsemble;
  if (!c.platform().empty()) return std::nullopt;
  if (c.backend() != "python" && c.backend() != "kiln_text" && !c.backend().empty()) return std::nullopt;
  for (const auto& in : c.input()) {
    if (in.name() == "QUERY") return TextModelKind::kPreprocessing;
    if (in.name() == "TOKENS_BATCH") return TextModelKind::kPostprocessing;
    if (in.name() == "text_input") return TextModelKind::kBls;
  }
  if (c.input_size() == 0) {
    if (name == "preprocessing") return TextModelKind::kPreprocessing;
    if (name == "postprocessing") return TextModelKind::kPostprocessing;
    if (name == "tensorrt_llm_bls") return TextModelKind::kBls;
  }
  return std::nullopt;
}

Result<std::shared_ptr<Model>> load_text_model(ServerCore& core, const std::string& repo,
                                               const std::string& name,
                                               std::shared_ptr<inference::ModelConfig> config) {
  auto kind = text_model_kind(*config, name);
  if (!kind) return invalid_argument("model '" + name + "' is not one of the TensorRT-LLM text models");
  const std::string dir = (fs::path(repo) / name).string();
  const inference::ModelConfig& c = *config;
  if (c.max_batch_size() < 0) return invalid_argument("max_batch_size must not be negative");
  switch (*kind) {
    case TextModelKind::kPreprocessing: {
      KILN_ASSIGN_OR_RETURN(auto tok, required_tokenizer(dir, name, c));
      KILN_ASSIGN_OR_RETURN(bool add_special, bool_param(c, "add_special_tokens", false));
      report_unused(name, c, {"tokenizer_dir", "tokenizer_type", "add_special_tokens"});
      return std::shared_ptr<Model>(
          std::make_shared<PreprocessingModel>(name, config, std::move(tok), add_special));
    }
    case TextModelKind::kPostprocessing: {
      KILN_ASSIGN_OR_RETURN(auto tok, required_tokenizer(dir, name, c));
      KILN_ASSIGN_OR_RETURN(bool skip_special, bool_param(c, "skip_special_tokens", true));
      report_unused(name, c, {"tokenizer_dir", "tokenizer_type", "skip_special_tokens"});
      return std::shared_ptr<Model>(
          std::make_shared<PostprocessingModel>(name, config, std::move(tok), skip_special));
    }
    case TextModelKind::kEnsemble:
    case TextModelKind::kBls:
      return load_pipeline(core, repo, name, std::move(config), *kind);
  }
  return internal_error("unknown text model kind");
}

Result<std::string> resolve_tokenizer_dir(const std::string& model_dir, const std::string& name,
                                          const std::optional<std::string>& tokenizer_dir) {
  if (!tokenizer_dir || tokenizer_dir->empty() || tokenizer_dir->find("${") != std::string::npos)
    return invalid_argument("parameter tokenizer_dir is not set");
  if (auto found = resolve_model_path(model_dir, name, *tokenizer_dir)) return *found;
  return not_found("parameter tokenizer_dir='" + *tokenizer_dir +
                   "': no such folder, as given or relative to the model's folder");
}

Result<TextModelInfo> text_generation_model(ServerCore& core, const std::string& name) {
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<Model> m, core.model(name));
  auto text = std::dynamic_pointer_cast<TextGenerationModel>(m);
  if (!text) return not_found("model '" + name + "' does not take text (the text models are ensemble and tensorrt_llm_bls)");
  auto target = core.model(text->target_);
  if (!target.ok())
    return unavailable("model '" + name + "' needs model '" + text->target_ + "': " + target.status().message());
  auto trtllm = std::dynamic_pointer_cast<TrtllmModel>(*target);
  if (!trtllm) return unavailable("model '" + name + "' needs model '" + text->target_ + "', which is not a tensorrt_llm model");
  TextModelInfo info;
  info.name = name;
  info.tok = text->tok_;
  info.add_special_tokens = text->add_special_;
  info.skip_special_tokens = text->skip_special_;
  info.target = std::move(trtllm);
  std::weak_ptr<TextGenerationModel> weak = text;
  info.record = [weak](bool ok, uint64_t ns) {
    if (auto t = weak.lock()) t->typed_call_ended(ok, ns);
  };
  return info;
}

Result<std::shared_ptr<const Tokenizer>> shared_tokenizer(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<const Tokenizer>> cache;
  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(dir, ec);
  if (ec) canonical = dir;
  // The key carries the file's modification time, so that a reload after the files changed reads them again.
  std::string key = canonical.string();
  for (const char* f : {"tokenizer.json", "tokenizer.json.gz"}) {
    struct stat s {};
    if (::stat((canonical / f).c_str(), &s) == 0)
      key += "|" + std::string(f) + "@" + std::to_string(s.st_mtim.tv_sec) + "." +
             std::to_string(s.st_mtim.tv_nsec);
  }
  std::lock_guard<std::mutex> lock(mu);
  if (auto t = cache[key].lock()) return t;
  KILN_ASSIGN_OR_RETURN(auto t, Tokenizer::from_dir(canonical.string()));
  cache[key] = t;
  return t;
}

}  // namespace kiln::server
