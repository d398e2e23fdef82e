#include "model/gguf_import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/quant.h"
#include "io/gguf.h"
#include "io/gguf_tokenizer.h"
#include "model/checkpoint.h"
#include "model/weight_names.h"

namespace kiln {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// GGUF architecture name -> the Hugging Face class Kiln's config reader knows.
const std::map<std::string, std::string>& gguf_architectures() {
  static const std::map<std::string, std::string> m = {
      {"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"}};
  return m;
}

// An HF-style config.json from the file's metadata, so that ModelConfig::from_hf validates it as it does
// any other model.
Result<json> hf_config_from_metadata(const GgufFile& f, const std::string& arch) {
  const std::string p = arch + ".";
  json c;
  c["architectures"] = {gguf_architectures().at(arch)};
  c["model_type"] = arch;
  c["hidden_act"] = "silu";
  KILN_ASSIGN_OR_RETURN(uint64_t hidden, f.get_uint(p + "embedding_length"));
  KILN_ASSIGN_OR_RETURN(uint64_t layers, f.get_uint(p + "block_count"));
  KILN_ASSIGN_OR_RETURN(uint64_t ffn, f.get_uint(p + "feed_forward_length"));
  KILN_ASSIGN_OR_RETURN(uint64_t heads, f.get_uint(p + "attention.head_count"));
  uint64_t kv_heads = heads;
  if (f.find(p + "attention.head_count_kv")) {
    KILN_ASSIGN_OR_RETURN(kv_heads, f.get_uint(p + "attention.head_count_kv"));
  }
  KILN_ASSIGN_OR_RETURN(uint64_t ctx, f.get_uint(p + "context_length"));
  KILN_ASSIGN_OR_RETURN(double eps, f.get_float(p + "attention.layer_norm_rms_epsilon"));
  double theta = 10000.0;
  if (f.find(p + "rope.freq_base")) {
    KILN_ASSIGN_OR_RETURN(theta, f.get_float(p + "rope.freq_base"));
  }
  if (heads == 0) return invalid_argument(f.path() + ": " + p + "attention.head_count is 0");
  uint64_t head_dim = hidden / heads;
  if (f.find(p + "attention.key_length")) {
    KILN_ASSIGN_OR_RETURN(head_dim, f.get_uint(p + "attention.key_length"));
  }
  if (f.find(p + "rope.dimension_count")) {
    KILN_ASSIGN_OR_RETURN(uint64_t rot, f.get_uint(p + "rope.dimension_count"));
    if (rot != head_dim)
      return unimplemented(f.path() + ": " + p + "rope.dimension_count " + std::to_string(rot) +
                           " differs from the head size " + std::to_string(head_dim) +
                           " (partial rotary); not supported for GGUF " + arch + " files yet");
  }
  if (f.find(p + "rope.scaling.type")) {
    KILN_ASSIGN_OR_RETURN(std::string type, f.get_string(p + "rope.scaling.type"));
    if (type != "none")
      return unimplemented(f.path() + ": RoPE scaling '" + type + "' (" + p + "rope.scaling.type) is not supported for GGUF files yet");
  }
  if (f.find_tensor("rope_freqs.weight"))
    return unimplemented(f.path() + ": the file carries rope_freqs.weight (Llama 3.1-style RoPE scaling), which Kiln "
                                    "does not read from GGUF files yet");
  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  if (!embd || embd->dims.size() != 2) return invalid_argument(f.path() + ": token_embd.weight is missing or not 2-D");
  uint64_t vocab = static_cast<uint64_t>(embd->dims[1]);
  if (f.find(p + "vocab_size")) {
    KILN_ASSIGN_OR_RETURN(vocab, f.get_uint(p + "vocab_size"));
  }
  c["hidden_size"] = hidden;
  c["num_hidden_layers"] = layers;
  c["intermediate_size"] = ffn;
  c["num_attention_heads"] = heads;
  c["num_key_value_heads"] = kv_heads;
  c["head_dim"] = head_dim;
  c["max_position_embeddings"] = ctx;
  c["rms_norm_eps"] = eps;
  c["rope_theta"] = theta;
  c["vocab_size"] = vocab;
  c["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  if (arch == "qwen2") c["attention_bias"] = true;
  if (f.find(p + "attention.sliding_window")) {
    KILN_ASSIGN_OR_RETURN(uint64_t window, f.get_uint(p + "attention.sliding_window"));
    c["sliding_window"] = window;
  }
  if (f.find("tokenizer.ggml.bos_token_id")) {
    KILN_ASSIGN_OR_RETURN(uint64_t bos, f.get_uint("tokenizer.ggml.bos_token_id"));
    c["bos_token_id"] = bos;
  }
  if (f.find("tokenizer.ggml.eos_token_id")) {
    KILN_ASSIGN_OR_RETURN(uint64_t eos, f.get_uint("tokenizer.ggml.eos_token_id"));
    c["eos_token_id"] = eos;
  }
  return c;
}

// The GGUF tensors that make canonical tensor `spec` (concatenated along rows), by llama.cpp's names.
std::vector<std::string> gguf_sources(const WeightSpec& spec) {
  const std::string& n = spec.name;
  if (n == "embed.weight") return {"token_embd.weight"};
  if (n == "final_norm.weight") return {"output_norm.weight"};
  if (n == "lm_head.weight") return {"output.weight"};
  // layers.L.<part>
  const size_t dot = n.find('.', 7);
  const std::string blk = "blk." + n.substr(7, dot - 7) + ".";
  const std::string part = n.substr(dot + 1);
  if (part == "attn_norm.weight") return {blk + "attn_norm.weight"};
  if (part == "attn.qkv.weight") return {blk + "attn_q.weight", blk + "attn_k.weight", blk + "attn_v.weight"};
  if (part == "attn.qkv.bias") return {blk + "attn_q.bias", blk + "attn_k.bias", blk + "attn_v.bias"};
  if (part == "attn.q_norm.weight") return {blk + "attn_q_norm.weight"};
  if (part == "attn.k_norm.weight") return {blk + "attn_k_norm.weight"};
  if (part == "attn.o.weight") return {blk + "attn_output.weight"};
  if (part == "attn.o.bias") return {blk + "attn_output.bias"};
  if (part == "mlp_norm.weight") return {blk + "ffn_norm.weight"};
  if (part == "mlp.gate_up.weight") return {blk + "ffn_gate.weight", blk + "ffn_up.weight"};
  if (part == "mlp.gate_up.bias") return {blk + "ffn_gate.bias", blk + "ffn_up.bias"};
  if (part == "mlp.down.weight") return {blk + "ffn_down.weight"};
  if (part == "mlp.down.bias") return {blk + "ffn_down.bias"};
  return {};
}

// Rows (or elements, for 1-D tensors) of a GGUF tensor: dims[0] is the row length.
int64_t gguf_rows(const GgufTensorInfo& t) {
  int64_t rows = 1;
  for (size_t i = 1; i < t.dims.size(); ++i) rows *= t.dims[i];
  return rows;
}

// llama.cpp stores the q/k rows of a llama-architecture model interleaved per head (for its GPT-J-style
// RoPE): GGUF row h*hd + 2i + half holds Hugging Face row h*hd + half*hd/2 + i. Returns, for each HF row,
// the GGUF row to read; identity when `heads` is 0.
std::vector<int64_t> hf_row_order(int64_t rows, int64_t heads) {
  std::vector<int64_t> src(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) src[r] = r;
  if (heads <= 0) return src;
  const int64_t hd = rows / heads, half_hd = hd / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = r / hd, j = r % hd, half = j / half_hd, i = j % half_hd;
    src[r] = h * hd + 2 * i + half;
  }
  return src;
}

bool all_finite(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// The float type the file's own float weights use (its most common 2-D float type), else float32: when
// every matrix is quantized, the float dtype only sets the KV cache's (and float32 keeps it more exact than
// llama.cpp's float16 cache).
DType default_float_dtype(const GgufFile& f) {
  std::map<DType, int> count;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.dims.size() < 2) continue;
    if (t.type == GgmlType::kF32) ++count[DType::kF32];
    if (t.type == GgmlType::kF16) ++count[DType::kF16];
    if (t.type == GgmlType::kBF16) ++count[DType::kBF16];
  }
  DType best = DType::kF32;
  int n = 0;
  for (auto [t, c] : count)
    if (c > n) best = t, n = c;
  return best;
}

Result<GgufTokenizerData> tokenizer_data(const GgufFile& f) {
  GgufTokenizerData d;
  KILN_ASSIGN_OR_RETURN(d.model, f.get_string("tokenizer.ggml.model"));
  if (f.find("tokenizer.ggml.pre")) {
    KILN_ASSIGN_OR_RETURN(d.pre, f.get_string("tokenizer.ggml.pre"));
  }
  KILN_ASSIGN_OR_RETURN(d.tokens, f.get_string_array("tokenizer.ggml.tokens"));
  if (f.find("tokenizer.ggml.token_type")) {
    KILN_ASSIGN_OR_RETURN(auto types, f.get_int_array("tokenizer.ggml.token_type"));
    for (int64_t t : types) d.token_types.push_back(static_cast<int32_t>(t));
  }
  if (f.find("tokenizer.ggml.scores")) {
    KILN_ASSIGN_OR_RETURN(d.scores, f.get_float_array("tokenizer.ggml.scores"));
  }
  if (f.find("tokenizer.ggml.merges")) {
    KILN_ASSIGN_OR_RETURN(d.merges, f.get_string_array("tokenizer.ggml.merges"));
  }
  auto id = [&](const char* key, std::optional<int64_t>& out) -> Status {
    if (!f.find(key)) return {};
    KILN_ASSIGN_OR_RETURN(uint64_t v, f.get_uint(key));
    out = static_cast<int64_t>(v);
    return {};
  };
  KILN_RETURN_IF_ERROR(id("tokenizer.ggml.bos_token_id", d.bos_id));
  KILN_RETURN_IF_ERROR(id("tokenizer.ggml.eos_token_id", d.eos_id));
  KILN_RETURN_IF_ERROR(id("tokenizer.ggml.unknown_token_id", d.unk_id));
  KILN_RETURN_IF_ERROR(id("tokenizer.ggml.padding_token_id", d.pad_id));
  KILN_RETURN_IF_ERROR(id("tokenizer.ggml.eot_token_id", d.eot_id));
  auto flag = [&](const char* key, std::optional<bool>& out) -> Status {
    if (!f.find(key)) return {};
    KILN_ASSIGN_OR_RETURN(bool v, f.get_bool(key));
    out = v;
    return {};
  };
  KILN_RETURN_IF_ERROR(flag("tokenizer.ggml.add_bos_token", d.add_bos));
  KILN_RETURN_IF_ERROR(flag("tokenizer.ggml.add_eos_token", d.add_eos));
  KILN_RETURN_IF_ERROR(flag("tokenizer.ggml.add_space_prefix", d.add_space_prefix));
  if (f.find("tokenizer.chat_template")) {
    KILN_ASSIGN_OR_RETURN(d.chat_template, f.get_string("tokenizer.chat_template"));
  }
  return d;
}

Status write_json(const fs::path& path, const json& j) {
  std::ofstream out(path, std::ios::trunc);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return data_loss(path.string() + ": write failed");
  return {};
}

}  // namespace

Status convert_gguf(const GgufConvertOptions& o) {
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<GgufFile> file, GgufFile::open(o.gguf_path));
  const GgufFile& f = *file;
  KILN_ASSIGN_OR_RETURN(std::string arch, f.get_string("general.architecture"));
  if (!gguf_architectures().count(arch)) {
    std::string list;
    for (const auto& [a, hf] : gguf_architectures()) list += (list.empty() ? "" : ", ") + a;
    return unimplemented(o.gguf_path + ": architecture '" + arch + "' is not supported (GGUF architectures Kiln reads: " +
                         list + ")");
  }
  KILN_ASSIGN_OR_RETURN(json hf_config, hf_config_from_metadata(f, arch));
  // Files without a tokenizer (rare; test fixtures) convert too: the checkpoint then has no tokenizer files.
  const bool has_tokenizer = f.find("tokenizer.ggml.model") != nullptr;
  GgufTokenizerData tok;
  if (has_tokenizer) {
    KILN_ASSIGN_OR_RETURN(tok, tokenizer_data(f));
  }
  // End-of-generation ids as llama.cpp picks them (eos, eot and the control tokens it treats as ends).
  const json generation = has_tokenizer ? gguf_to_hf_generation_config(tok) : json::object();
  KILN_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::from_hf(hf_config, &generation));
  if (static_cast<int64_t>(tok.tokens.size()) > config.vocab_size)
    return invalid_argument(o.gguf_path + ": the tokenizer has " + std::to_string(tok.tokens.size()) +
                            " tokens but the embedding only " + std::to_string(config.vocab_size) + " rows");

  KILN_RETURN_IF_ERROR(check_parallel(config, o.tp_size, o.pp_size));
  CheckpointInfo info;
  info.model = config;
  info.dtype = o.dtype.value_or(default_float_dtype(f));
  info.tp_size = o.tp_size;
  info.pp_size = o.pp_size;
  const bool llama_rope_order = arch == "llama";
  std::vector<HostBuffer> buffers;
  std::vector<SafetensorsTensorToWrite> out;
  std::set<std::string> used;
  std::vector<float> row;
  for (const WeightSpec& spec : weight_specs(config)) {
    const std::vector<std::string> names = gguf_sources(spec);
    std::vector<const GgufTensorInfo*> src;
    for (const std::string& n : names) {
      const GgufTensorInfo* t = f.find_tensor(n);
      if (!t) return not_found(o.gguf_path + ": tensor '" + n + "' is missing (needed for " + spec.name + ")");
      src.push_back(t);
      used.insert(n);
    }
    // Shapes: 2-D [rows, cols] with matching cols (GGUF dims are {cols, rows}), concatenated along rows;
    // 1-D vectors concatenated.
    const bool two_d = spec.shape.ndim == 2;
    const int64_t cols = two_d ? spec.shape[1] : 0;
    int64_t rows = 0;
    for (const GgufTensorInfo* t : src) {
      if (two_d ? (t->dims.size() != 2 || t->dims[0] != cols) : t->dims.size() != 1) {
        std::string dims;
        for (int64_t d : t->dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
        return invalid_argument(o.gguf_path + ": tensor '" + t->name + "' has dims {" + dims + "}, which does not fit " +
                                spec.name + " " + spec.shape.to_string() + " of this model's metadata");
      }
      rows += two_d ? t->dims[1] : t->dims[0];
    }
    if (rows != spec.shape[0])
      return invalid_argument(o.gguf_path + ": the tensors of " + spec.name + " add up to " + std::to_string(rows) +
                              (two_d ? " rows" : " values") + ", the metadata implies " + spec.shape.to_string());

    // q and k rows back in Hugging Face order (llama files only); which source is q / k by position.
    auto heads_of = [&](size_t i) -> int64_t {
      if (!llama_rope_order || spec.name.find("attn.qkv") == std::string::npos) return 0;
      if (i == 0) return config.num_heads;
      if (i == 1) return config.num_kv_heads;
      return 0;
    };

    const GgmlType first = src[0]->type;
    const bool same_type = std::all_of(src.begin(), src.end(), [&](const GgufTensorInfo* t) { return t->type == first; });
    const bool keep = !o.dtype && spec.kind != WeightKind::kVector && same_type && is_kept_quant(first);
    if (keep) {
      // Rows of GGUF blocks, copied (reordered for q/k): uint8 [rows, row bytes].
      const uint64_t row_bytes = *ggml_row_bytes(first, cols);
      HostBuffer buf(static_cast<size_t>(rows) * row_bytes);
      char* dst = static_cast<char*>(buf.data());
      for (size_t i = 0; i < src.size(); ++i) {
        const int64_t n = src[i]->dims[1];
        const std::vector<int64_t> order = hf_row_order(n, heads_of(i));
        const char* base = static_cast<const char*>(src[i]->data);
        for (int64_t r = 0; r < n; ++r, dst += row_bytes) std::memcpy(dst, base + order[r] * row_bytes, row_bytes);
      }
      info.quantized[spec.name] = first;
      out.push_back({spec.name, DType::kU8, Shape{rows, static_cast<int64_t>(row_bytes)}, buf.data()});
      buffers.push_back(std::move(buf));
      continue;
    }
    // Dequantized (exactly, to f32) and converted to the float type.
    const DType to = spec.kind == WeightKind::kVector ? DType::kF32 : info.dtype;
    const int64_t total = spec.shape.numel();
    HostBuffer buf(static_cast<size_t>(total) * dtype_size(to));
    int64_t at = 0;
    for (size_t i = 0; i < src.size(); ++i) {
      const GgufTensorInfo& t = *src[i];
      const int64_t n = gguf_rows(t), len = t.dims[0];
      const uint64_t row_bytes = *ggml_row_bytes(t.type, len);
      const std::vector<int64_t> order = hf_row_order(n, heads_of(i));
      row.resize(static_cast<size_t>(len));
      for (int64_t r = 0; r < n; ++r) {
        dequantize_row(t.type, static_cast<const char*>(t.data) + order[r] * row_bytes, row.data(), len);
        if (!all_finite(row.data(), len))
          return invalid_argument(o.gguf_path + ": tensor '" + t.name + "' row " + std::to_string(order[r]) +
                                  " has values that are not finite");
        convert_floats(row.data(), DType::kF32, static_cast<char*>(buf.data()) + at * dtype_size(to), to,
                       static_cast<size_t>(len));
        at += len;
      }
    }
    if (at != total) return internal_error("gguf import: " + spec.name + " filled " + std::to_string(at) + " of " +
                                           std::to_string(total) + " values");
    out.push_back({spec.name, to, spec.shape, buf.data()});
    buffers.push_back(std::move(buf));
  }
  for (const GgufTensorInfo& t : f.tensors())
    if (!used.count(t.name))
      return invalid_argument(o.gguf_path + ": unexpected tensor '" + t.name + "' for a " + arch +
                              " model with this metadata");

  json source = {{"gguf", fs::absolute(o.gguf_path).string()}, {"architecture", arch}};
  if (f.find("general.name")) {
    KILN_ASSIGN_OR_RETURN(std::string name, f.get_string("general.name"));
    source["general.name"] = name;
  }
  KILN_RETURN_IF_ERROR(write_checkpoint(o.output_dir, info, false, out, source));
  // The tokenizer, as Hugging Face files in the checkpoint dir.
  if (!has_tokenizer) return {};
  KILN_ASSIGN_OR_RETURN(json tokenizer_json, gguf_to_hf_tokenizer_json(tok));
  const fs::path dir(o.output_dir);
  KILN_RETURN_IF_ERROR(write_json(dir / "tokenizer.json", tokenizer_json));
  KILN_RETURN_IF_ERROR(write_json(dir / "tokenizer_config.json", gguf_to_hf_tokenizer_config(tok)));
  KILN_RETURN_IF_ERROR(write_json(dir / "generation_config.json", generation));
  return {};
}

}  // namespace kiln
