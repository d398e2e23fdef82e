// ModelConfig: one Llama-family model's hyper-parameters, read from a Hugging Face config.json
// (transformers 4 and 5 formats) and stored in Kiln's checkpoint and engine dirs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "model/rope.h"

namespace kiln {

// The Hugging Face architectures Kiln runs; everything else is refused by name.
const std::vector<std::string>& supported_architectures();

struct ModelConfig {
  std::string architecture;  // HF class name, e.g. "Phi3ForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2", "qwen3", "phi3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;      // Qwen2, or Llama's attention_bias
  bool o_bias = false;        // Llama's attention_bias
  bool mlp_bias = false;      // Llama's mlp_bias
  bool qk_norm = false;       // Qwen3: per-head RMSNorm of q and k
  std::vector<int64_t> layer_window;  // [num_layers]: sliding window in tokens, 0 = full attention
  RopeConfig rope;
  DType weights_dtype = DType::kF32;  // as stored in the source checkpoint
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  // Checks internal consistency (head counts divide, sizes positive, window lengths...).
  Status validate() const;

  nlohmann::json to_json() const;
  static Result<ModelConfig> from_json(const nlohmann::json& j);
  // `generation_config` may be null; when present its eos_token_id (int or list) wins.
  static Result<ModelConfig> from_hf(const nlohmann::json& config, const nlohmann::json* generation_config);
};

// Reads a JSON file, with errors that name the file and the parse position.
Result<nlohmann::json> read_json_file(const std::string& path);

}  // namespace kiln
