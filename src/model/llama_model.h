// The Llama-family forward pass (Llama, Mistral, Qwen2, Qwen3, Phi-3), written once against the
// Backend interface, over a flattened batch of tokens from any number of sequences with paged KV.
#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
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
  // (token index, logit row of the forward launched last): that token is the id the previous forward picked on
  // the device (argmax or sampled) and the host has not seen yet (token_ids holds any valid id there). Lets
  // the host launch step N+1 before it collects step N.
  std::vector<std::pair<int32_t, int32_t>> previous_tokens;
};

// A forward's output on the host (ForwardOutput says which part is filled).
struct ForwardResult {
  std::vector<float> logits;     // kLogits: [R, vocab] f32
  std::vector<int32_t> ids;      // kArgmax / kSample: [R]
  std::vector<float> log_probs;  // kSample with SamplingBatch::log_probs: [R]
};

// Not thread-safe (one activation workspace): one executor drives a model at a time.
class LlamaModel {
 public:
  // One rank of the engine (engine.layout): with several, `comm` connects it to the others (every rank runs the
  // same forwards in lockstep; see RankGroup).
  static Result<std::unique_ptr<LlamaModel>> load(const Engine& engine, Backend& backend, Communicator* comm = nullptr);
  // The model's linear layers (qkv, o, gate_up, down, LM head), for tuning at build.
  static std::vector<Backend::LinearShape> linear_shapes(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }  // the whole model
  const RankLayout& layout() const { return layout_; }
  const BuildConfig& build() const { return build_; }
  KvCacheSpec kv_cache_spec(int num_blocks) const;
  // max_attention_window_size: caps every layer's attention window (0 = the model's own windows).
  void set_attention_window_cap(int32_t tokens) { window_cap_ = tokens; }
  // The window layer l (of this rank's layers) attends over (0 = the whole sequence).
  int32_t attention_window(size_t layer) const;

  // Allocates the activation workspace for the largest step the build allows (max_num_tokens tokens, a
  // logit row per sequence and beam), so that memory left for the KV cache is really free.
  Status reserve_workspace();

  // Queues the batch's forward (each sequence's new K/V written into `kv`) and returns, on a GPU before it ran;
  // collect() waits for the oldest forward queued and hands back its output: the f32 logits of its logit rows,
  // or only one id per row (kArgmax; kSample with `sampling`, one SamplingRow per logit row; both computed where
  // the logits are: a GPU sends R ids instead of R x vocab floats). At most two forwards are queued, so the host
  // can prepare and launch step N+1 while step N runs, then collect N; a kLogits forward must be collected before
  // the next launch (its logits buffer is reused).
  Status launch(const ForwardBatch& batch, KvStorage& kv, ForwardOutput output, const SamplingBatch* sampling = nullptr);
  // What launch checks of a batch, except previous_tokens (which depend on the forwards queued): token ids, limits,
  // the sequences' layout, block ids within `kv`. Every rank of a group takes the same batch: checked once, before
  // any rank starts (a rank that refused it alone would leave the others waiting in a collective).
  Status validate(const ForwardBatch& batch, const KvCacheSpec& kv) const;
  Status collect(ForwardResult& out);
  int in_flight() const { return static_cast<int>(queued_.size()); }

  // launch + collect: f32 logits [logit_rows.size(), vocab] in `logits` — or, when `argmax` is given, only each
  // logit row's argmax token (`logits` unused).
  Status forward(const ForwardBatch& batch, KvStorage& kv, std::vector<float>* logits,
                 std::vector<int32_t>* argmax = nullptr);

 private:
  LlamaModel(const Engine& engine, Backend& backend, Communicator* comm)
      : config_(engine.model), local_(rank_model(engine.model, engine.layout)), layout_(engine.layout),
        build_(engine.build), backend_(backend), comm_(comm) {}
  Status ensure_workspace(int64_t tokens, int64_t logit_rows);
  Status check_batch(const ForwardBatch& batch, const KvStorage& kv) const;  // validate + previous tokens
  void fill_cos_sin(const ForwardBatch& batch, float* cos_sin);  // [T, rotary_dim]

  ModelConfig config_;  // the whole model
  ModelConfig local_;   // this rank's part of it (rank_model): the shapes of its weights and activations
  RankLayout layout_;
  BuildConfig build_;
  Backend& backend_;
  Communicator* comm_;  // null with one rank
  DType act_ = DType::kF32;  // activation type (backend_.activation_dtype of the weights)
  int32_t window_cap_ = 0;
  std::shared_ptr<EngineFile> file_;  // keeps the mapped weights alive
  EmbeddingWeight embed_;              // [vocab rows, hidden] (first stage)
  std::vector<LayerWeights> layers_;
  Tensor final_norm_;                  // [hidden] (last stage)
  LinearWeight lm_head_;               // [vocab rows, hidden] (last stage)
  RopeCosSinCache cos_sin_cache_;
  std::optional<RopeFrequencies> freqs_;  // the frequencies of key freqs_key_ (fill_cos_sin)
  int64_t freqs_key_ = 0;

  // Activation workspace, grown on demand; views are [T, ...] of the current batch.
  int64_t ws_tokens_ = 0, ws_logit_rows_ = 0;
  DeviceBuffer ws_;
  Tensor argmax_, log_probs_, x_, h_, qkv_, q_, attn_, proj_, gate_up_, mlp_act_, final_h_, logits_;
  Tensor rank_logits_;  // [R, vocab rows] this tp rank's logits before the all-gather (tp > 1)
  std::vector<int32_t> packed_;  // the inputs on the host

  // Forwards launched and not collected, oldest first. Ids and log-probs come back through two pinned host slots
  // (forward N's while N+1 is queued); logits through a synchronous download at collect.
  struct Queued {
    bool outputs = true;  // false on a pipeline stage before the last: nothing to hand back
    ForwardOutput output = ForwardOutput::kLogits;
    int64_t rows = 0;
    bool log_probs = false;
    int slot = 0;
    uint64_t fence = 0;
  };
  std::vector<Queued> queued_;
  std::shared_ptr<void> host_slots_[2];  // [ws_logit_rows_] i32 ids then [ws_logit_rows_] f32 log-probs
  int next_slot_ = 0;
  ForwardOutput last_output_ = ForwardOutput::kLogits;  // of the forward launched last (previous_tokens)
  int64_t last_rows_ = 0;
};

}  // namespace kiln
