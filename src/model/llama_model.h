// The Llama-family forward pass (Llama, Mistral, Qwen2, Qwen3, Phi-3), written once against the
// Backend interface, over a flattened batch of tokens from any number of sequences with paged KV.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/engine.h"
#include "model/rope.h"

namespace kiln {

struct LayerWeights {
  Tensor attn_norm;          // [hidden] f32
  LinearWeight qkv;          // [(H + 2*KVH) * D, hidden]
  Tensor qkv_bias;           // [(H + 2*KVH) * D] f32, or empty
  Tensor q_norm, k_norm;     // [D] f32, or empty (Qwen3)
  LinearWeight o;            // [hidden, H * D]
  Tensor o_bias;             // [hidden] or empty
  Tensor mlp_norm;           // [hidden]
  LinearWeight gate_up;      // [2 * inter, hidden] (gate rows, then up rows)
  Tensor gate_up_bias;       // [2 * inter] or empty
  LinearWeight down;         // [hidden, inter]
  Tensor down_bias;          // [hidden] or empty
};

struct ForwardBatch {
  std::vector<int32_t> token_ids;  // [T]
  AttentionBatch attention;        // sequences, their new tokens and block tables
  std::vector<int32_t> logit_rows; // tokens (indices into token_ids) whose logits are wanted
  // Per sequence (optional): the length that length-dependent RoPE (dynamic NTK, LongRoPE) picks its
  // frequencies from, when larger than context_len. A chunked prefill passes the whole prompt length so
  // that every chunk rotates as the unchunked prompt would.
  std::vector<int32_t> rope_seq_len;
};

// Not thread-safe (one activation workspace): one executor drives a model at a time.
class LlamaModel {
 public:
  static Result<std::unique_ptr<LlamaModel>> load(const Engine& engine, Backend& backend);
  // The model's linear layers (qkv, o, gate_up, down, LM head), for tuning at build.
  static std::vector<Backend::LinearShape> linear_shapes(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  const BuildConfig& build() const { return build_; }
  KvCacheSpec kv_cache_spec(int num_blocks) const;
  // max_attention_window_size: caps every layer's attention window (0 = the model's own windows).
  void set_attention_window_cap(int32_t tokens) { window_cap_ = tokens; }
  // The window layer l attends over (0 = the whole sequence).
  int32_t attention_window(size_t layer) const;

  // Allocates the activation workspace for the largest step the build allows (max_num_tokens tokens, a
  // logit row per sequence and beam), so that memory left for the KV cache is really free.
  Status reserve_workspace();

  // Runs the batch, writing each sequence's new K/V into `kv`, and returns f32 logits
  // [logit_rows.size(), vocab] in `logits` (host) — or, when `argmax` is given, only each logit row's argmax
  // token (computed where the logits are: a GPU sends R ids instead of R x vocab floats; `logits` unused).
  Status forward(const ForwardBatch& batch, KvStorage& kv, std::vector<float>* logits,
                 std::vector<int32_t>* argmax = nullptr);

 private:
  LlamaModel(const Engine& engine, Backend& backend) : config_(engine.model), build_(engine.build), backend_(backend) {}
  Status ensure_workspace(int64_t tokens, int64_t logit_rows);
  void fill_cos_sin(const ForwardBatch& batch, std::vector<float>& cos_sin);

  ModelConfig config_;
  BuildConfig build_;
  Backend& backend_;
  DType act_ = DType::kF32;  // activation type (backend_.activation_dtype of the weights)
  int32_t window_cap_ = 0;
  std::shared_ptr<EngineFile> file_;  // keeps the mapped weights alive
  EmbeddingWeight embed_;              // [vocab, hidden]
  std::vector<LayerWeights> layers_;
  Tensor final_norm_;                  // [hidden]
  LinearWeight lm_head_;               // [vocab, hidden]
  RopeCosSinCache cos_sin_cache_;
  std::optional<RopeFrequencies> freqs_;  // the frequencies of key freqs_key_ (fill_cos_sin)
  int64_t freqs_key_ = 0;

  // Activation workspace, grown on demand; views are [T, ...] of the current batch.
  int64_t ws_tokens_ = 0, ws_logit_rows_ = 0;
  DeviceBuffer ws_;
  Tensor ids_, logit_rows_, argmax_, cos_sin_, x_, h_, qkv_, q_, attn_, proj_, gate_up_, mlp_act_, final_h_, logits_;
};

}  // namespace kiln
