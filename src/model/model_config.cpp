#include "model/model_config.h"

#include <fstream>
#include <sstream>

namespace kiln {

using nlohmann::json;

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> k = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                             "Qwen3ForCausalLM", "Phi3ForCausalLM"};
  return k;
}

Result<json> read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    try {
      (void)json::parse(ss.str());
    } catch (const json::parse_error& e) {
      return invalid_argument(path + ": not valid JSON: " + e.what());
    }
    return invalid_argument(path + ": not valid JSON");
  }
  return j;
}

namespace {

// Typed field readers that name the field in their errors.
Result<int64_t> get_int(const json& j, const char* key, std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return invalid_argument(std::string("config.json: missing required field '") + key + "'");
  }
  if (!it->is_number_integer()) return invalid_argument(std::string("config.json: field '") + key + "' must be an integer");
  return it->get<int64_t>();
}
Result<double> get_double(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return invalid_argument(std::string("config.json: field '") + key + "' must be a number");
  return it->get<double>();
}
Result<bool> get_bool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return invalid_argument(std::string("config.json: field '") + key + "' must be true or false");
  return it->get<bool>();
}
// An int, a list of ints, or null.
Result<std::vector<int64_t>> get_id_list(const json& j, const char* key, const char* file) {
  std::vector<int64_t> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (it->is_number_integer()) return std::vector<int64_t>{it->get<int64_t>()};
  if (it->is_array()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer()) return invalid_argument(std::string(file) + ": '" + key + "' must hold integers");
      out.push_back(v.get<int64_t>());
    }
    return out;
  }
  return invalid_argument(std::string(file) + ": '" + key + "' must be an integer or a list of integers");
}

}  // namespace

Status ModelConfig::validate() const {
  auto positive = [](int64_t v, const char* name) -> Status {
    if (v <= 0) return invalid_argument(std::string(name) + "=" + std::to_string(v) + " must be positive");
    return {};
  };
  KILN_RETURN_IF_ERROR(positive(vocab_size, "vocab_size"));
  KILN_RETURN_IF_ERROR(positive(hidden_size, "hidden_size"));
  KILN_RETURN_IF_ERROR(positive(intermediate_size, "intermediate_size"));
  KILN_RETURN_IF_ERROR(positive(num_layers, "num_hidden_layers"));
  KILN_RETURN_IF_ERROR(positive(num_heads, "num_attention_heads"));
  KILN_RETURN_IF_ERROR(positive(num_kv_heads, "num_key_value_heads"));
  KILN_RETURN_IF_ERROR(positive(head_dim, "head_dim"));
  KILN_RETURN_IF_ERROR(positive(max_position_embeddings, "max_position_embeddings"));
  if (num_heads % num_kv_heads != 0)
    return invalid_argument("num_attention_heads=" + std::to_string(num_heads) +
                            " is not a multiple of num_key_value_heads=" + std::to_string(num_kv_heads));
  if (head_dim % 2 != 0) return invalid_argument("head_dim=" + std::to_string(head_dim) + " must be even for RoPE");
  if (static_cast<int64_t>(layer_window.size()) != num_layers)
    return invalid_argument("layer_window has " + std::to_string(layer_window.size()) + " entries, expected " +
                            std::to_string(num_layers));
  for (int64_t w : layer_window)
    if (w < 0) return invalid_argument("sliding window must be >= 0");
  if (!(rms_norm_eps > 0)) return invalid_argument("rms_norm_eps must be positive");
  for (int64_t id : eos_token_ids)
    if (id < 0 || id >= vocab_size)
      return invalid_argument("eos_token_id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(vocab_size) + ")");
  // Bound sizes so that later products (weights, KV) cannot overflow 64 bits.
  if (vocab_size > (1 << 24) || hidden_size > (1 << 20) || intermediate_size > (1 << 22) || num_layers > 4096 ||
      num_heads > 4096 || head_dim > 4096)
    return invalid_argument("model dimensions are implausibly large");
  return {};
}

json ModelConfig::to_json() const {
  return json{{"architecture", architecture},
              {"model_type", model_type},
              {"vocab_size", vocab_size},
              {"hidden_size", hidden_size},
              {"intermediate_size", intermediate_size},
              {"num_layers", num_layers},
              {"num_heads", num_heads},
              {"num_kv_heads", num_kv_heads},
              {"head_dim", head_dim},
              {"rms_norm_eps", rms_norm_eps},
              {"max_position_embeddings", max_position_embeddings},
              {"tie_word_embeddings", tie_word_embeddings},
              {"qkv_bias", qkv_bias},
              {"o_bias", o_bias},
              {"mlp_bias", mlp_bias},
              {"qk_norm", qk_norm},
              {"layer_window", layer_window},
              {"rope", rope.to_json()},
              {"weights_dtype", dtype_name(weights_dtype)},
              {"bos_token_id", bos_token_id},
              {"eos_token_ids", eos_token_ids},
              {"pad_token_id", pad_token_id}};
}

Result<ModelConfig> ModelConfig::from_json(const json& j) {
  if (!j.is_object()) return invalid_argument("model config must be a JSON object");
  ModelConfig c;
  try {
    c.architecture = j.at("architecture").get<std::string>();
    c.model_type = j.at("model_type").get<std::string>();
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_layers = j.at("num_layers").get<int64_t>();
    c.num_heads = j.at("num_heads").get<int64_t>();
    c.num_kv_heads = j.at("num_kv_heads").get<int64_t>();
    c.head_dim = j.at("head_dim").get<int64_t>();
    c.rms_norm_eps = j.at("rms_norm_eps").get<double>();
    c.max_position_embeddings = j.at("max_position_embeddings").get<int64_t>();
    c.tie_word_embeddings = j.at("tie_word_embeddings").get<bool>();
    c.qkv_bias = j.at("qkv_bias").get<bool>();
    c.o_bias = j.at("o_bias").get<bool>();
    c.mlp_bias = j.at("mlp_bias").get<bool>();
    c.qk_norm = j.at("qk_norm").get<bool>();
    c.layer_window = j.at("layer_window").get<std::vector<int64_t>>();
    c.bos_token_id = j.at("bos_token_id").get<int64_t>();
    c.eos_token_ids = j.at("eos_token_ids").get<std::vector<int64_t>>();
    c.pad_token_id = j.at("pad_token_id").get<int64_t>();
    auto dt = dtype_from_name(j.at("weights_dtype").get<std::string>());
    if (!dt) return invalid_argument("model config: unknown weights_dtype");
    c.weights_dtype = *dt;
    KILN_ASSIGN_OR_RETURN(c.rope, RopeConfig::from_json(j.at("rope")));
  } catch (const json::exception& e) {
    return invalid_argument(std::string("model config: ") + e.what());
  }
  KILN_RETURN_IF_ERROR(c.validate().with_context("model config"));
  return c;
}

Result<ModelConfig> ModelConfig::from_hf(const json& j, const json* gen) {
  if (!j.is_object()) return invalid_argument("config.json must be a JSON object");
  auto archs = j.find("architectures");
  if (archs == j.end() || !archs->is_array() || archs->size() != 1 || !(*archs)[0].is_string())
    return invalid_argument("config.json: 'architectures' must be a list with one class name");
  ModelConfig c;
  c.architecture = (*archs)[0].get<std::string>();
  const auto& supported = supported_architectures();
  if (std::find(supported.begin(), supported.end(), c.architecture) == supported.end()) {
    std::string list;
    for (const auto& a : supported) list += (list.empty() ? "" : ", ") + a;
    return unimplemented("architecture '" + c.architecture + "' is not supported; Kiln runs: " + list);
  }
  c.model_type = j.value("model_type", "");
  const bool is_qwen = c.architecture == "Qwen2ForCausalLM" || c.architecture == "Qwen3ForCausalLM";

  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null() && *act != "silu")
    return unimplemented("hidden_act '" + act->dump() + "' is not supported (only silu)");

  KILN_ASSIGN_OR_RETURN(c.vocab_size, get_int(j, "vocab_size"));
  KILN_ASSIGN_OR_RETURN(c.hidden_size, get_int(j, "hidden_size"));
  KILN_ASSIGN_OR_RETURN(c.intermediate_size, get_int(j, "intermediate_size"));
  KILN_ASSIGN_OR_RETURN(c.num_layers, get_int(j, "num_hidden_layers"));
  KILN_ASSIGN_OR_RETURN(c.num_heads, get_int(j, "num_attention_heads"));
  KILN_ASSIGN_OR_RETURN(c.num_kv_heads, get_int(j, "num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) return invalid_argument("config.json: num_attention_heads must be positive");
  KILN_ASSIGN_OR_RETURN(c.head_dim, get_int(j, "head_dim", c.hidden_size / c.num_heads));
  KILN_ASSIGN_OR_RETURN(c.rms_norm_eps, get_double(j, "rms_norm_eps", 1e-6));
  KILN_ASSIGN_OR_RETURN(c.max_position_embeddings, get_int(j, "max_position_embeddings"));
  KILN_ASSIGN_OR_RETURN(c.tie_word_embeddings, get_bool(j, "tie_word_embeddings", false));

  if (c.architecture == "LlamaForCausalLM") {
    KILN_ASSIGN_OR_RETURN(bool attention_bias, get_bool(j, "attention_bias", false));
    c.qkv_bias = c.o_bias = attention_bias;
    KILN_ASSIGN_OR_RETURN(c.mlp_bias, get_bool(j, "mlp_bias", false));
  } else if (c.architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;
  } else if (c.architecture == "Qwen3ForCausalLM") {
    KILN_ASSIGN_OR_RETURN(bool attention_bias, get_bool(j, "attention_bias", false));
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = true;
  }

  // Sliding windows: `layer_types` (transformers 5) says per layer; otherwise Mistral and Phi-3 apply
  // `sliding_window` to every layer, and Qwen applies it from max_window_layers on when use_sliding_window.
  c.layer_window.assign(c.num_layers, 0);
  int64_t window = 0;
  auto sw = j.find("sliding_window");
  if (sw != j.end() && !sw->is_null()) {
    if (!sw->is_number_integer() || sw->get<int64_t>() <= 0)
      return invalid_argument("config.json: 'sliding_window' must be a positive integer or null");
    window = sw->get<int64_t>();
  }
  bool qwen_sliding = false;
  if (is_qwen) {
    KILN_ASSIGN_OR_RETURN(qwen_sliding, get_bool(j, "use_sliding_window", false));
  }
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) {
    if (!lt->is_array() || static_cast<int64_t>(lt->size()) != c.num_layers)
      return invalid_argument("config.json: 'layer_types' must list one type per layer");
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const json& t = (*lt)[i];
      if (t == "sliding_attention") {
        if (window <= 0) return invalid_argument("config.json: 'layer_types' names sliding_attention but 'sliding_window' is unset");
        c.layer_window[i] = window;
      } else if (t != "full_attention") {
        return unimplemented("config.json: layer type " + t.dump() + " is not supported");
      }
    }
  } else if (window > 0) {
    if (!is_qwen) {
      c.layer_window.assign(c.num_layers, window);
    } else if (qwen_sliding) {
      KILN_ASSIGN_OR_RETURN(int64_t from, get_int(j, "max_window_layers", c.num_layers));
      for (int64_t i = from; i < c.num_layers; ++i) c.layer_window[i] = window;
    }
  }

  // Weight dtype: `dtype` (transformers 5) or `torch_dtype` (4).
  std::string dt = "float32";
  for (const char* key : {"dtype", "torch_dtype"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string()) {
      dt = it->get<std::string>();
      break;
    }
  }
  auto parsed = dtype_from_name(dt);
  if (!parsed || !dtype_is_float(*parsed) || *parsed == DType::kF64)
    return unimplemented("config.json: weights dtype '" + dt + "' is not supported (float32, float16, bfloat16)");
  c.weights_dtype = *parsed;

  KILN_ASSIGN_OR_RETURN(c.rope, rope_config_from_hf(j, static_cast<int>(c.head_dim)));

  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> bos, get_id_list(j, "bos_token_id", "config.json"));
  c.bos_token_id = bos.empty() ? -1 : bos[0];
  KILN_ASSIGN_OR_RETURN(c.eos_token_ids, get_id_list(j, "eos_token_id", "config.json"));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> pad, get_id_list(j, "pad_token_id", "config.json"));
  c.pad_token_id = pad.empty() ? -1 : pad[0];
  if (gen && gen->is_object()) {
    KILN_ASSIGN_OR_RETURN(std::vector<int64_t> eos, get_id_list(*gen, "eos_token_id", "generation_config.json"));
    if (!eos.empty()) c.eos_token_ids = eos;
    KILN_ASSIGN_OR_RETURN(std::vector<int64_t> gbos, get_id_list(*gen, "bos_token_id", "generation_config.json"));
    if (!gbos.empty()) c.bos_token_id = gbos[0];
  }
  KILN_RETURN_IF_ERROR(c.validate().with_context("config.json"));
  return c;
}

}  // namespace kiln
