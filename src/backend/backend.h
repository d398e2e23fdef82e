// The backend interface: the few ops a Llama-family forward needs, over backend-owned memory.
// The model's forward (model/llama_model.cpp) is written once against this; CPU and CUDA are peers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/quant.h"
#include "core/status.h"
#include "core/tensor.h"

namespace kiln {

// Memory owned by a backend (host memory on the CPU, device memory on a GPU).
struct DeviceBuffer {
  std::shared_ptr<void> mem;
  size_t bytes = 0;
  Tensor view(DType dtype, Shape shape) const {
    Tensor t{mem.get(), dtype, shape};
    KILN_CHECK(t.nbytes() <= bytes, "view larger than buffer");
    return t;
  }
};

// A linear layer's weight W [out_features, in_features], pre-packed at build time in the layout
// the backend's GEMM wants (`data` holds the packed bytes).
struct LinearWeight {
  Tensor data;
  DType dtype = DType::kF32;       // element type of a float weight
  std::optional<GgmlType> quant;   // set: W is block-quantized (Q8_0/Q4_0/Q4_1) in the backend's packed layout
  int64_t out_features = 0;
  int64_t in_features = 0;
};

// The token embedding table [vocab, hidden]: float rows, or rows of GGUF blocks when `quant` is set
// (kept quantized, as in the GGUF file; rows are dequantized as they are gathered).
struct EmbeddingWeight {
  Tensor data;
  std::optional<GgmlType> quant;
  int64_t vocab = 0;        // rows held
  int64_t hidden = 0;
  int64_t vocab_start = 0;  // id of the first row: a vocab-parallel rank's slice; ids outside it embed as zeros
};

// Paged KV cache storage for one layer: K and V pools, each [num_blocks, num_kv_heads, block_size, head_dim].
struct KvLayer {
  Tensor k, v;
};

struct KvCacheSpec {
  int num_layers = 0;
  int num_blocks = 0;
  int block_size = 64;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF32;
  size_t bytes_per_block() const;  // K and V of every layer
};

struct KvStorage {
  KvCacheSpec spec;
  std::vector<KvLayer> layers;
  std::vector<DeviceBuffer> buffers;  // owns the memory behind `layers`
};

// One sequence's part of a flattened token batch.
struct SequenceView {
  int32_t first_token = 0;  // index of its first new token in the batch
  int32_t num_new = 0;      // tokens it adds in this forward
  int32_t context_len = 0;  // tokens in its KV after this forward; new tokens sit at [context_len - num_new, context_len)
  std::span<const int32_t> block_table;  // physical block of each logical KV block
};

struct AttentionBatch {
  std::vector<SequenceView> seqs;
  int32_t num_tokens = 0;
  int32_t block_size = 0;
};

struct QkvLayout {
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;                // leading dims of each head that RoPE rotates (rotate-half pairs)
  float norm_eps = 0;                // per-head RMSNorm of q and k (Qwen3), when the weights are given
  const Tensor* q_norm = nullptr;    // [head_dim] or null
  const Tensor* k_norm = nullptr;    // [head_dim] or null
};

struct AttentionParams {
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;       // softmax scale, usually 1/sqrt(head_dim)
  int32_t window = 0;    // sliding window in tokens (a query sees keys p - window < j <= p); 0 = none
};

// What a forward hands back to the host: logits [R, vocab], or one token id per logit row (argmax_rows, or
// sample_rows after begin_sampling), so that only R ids leave the device.
enum class ForwardOutput { kLogits, kArgmax, kSample };

// --- Sampling on the device (Backend::sample_rows): one logit row's settings, as the executor's LogitsProcessor
// (penalties and bans) and TokenSampler (temperature, top-k, top-p, the Philox draw) would apply them on the host.
struct PenaltyEntry {
  int32_t token = 0;
  int32_t output_count = 0;  // occurrences in the output so far (presence and frequency penalties)
  bool repetition = false;   // in the prompt or the output: the repetition penalty applies
  bool banned = false;       // a bad word's token or an end id under min_length: -inf
};
struct SamplingRow {
  float temperature = 1.0f;  // 0: greedy (argmax); 0 and 1: no division
  int32_t top_k = 0;         // 0 or >= vocab: off; 1: greedy
  float top_p = 0.0f;        // the step's (decayed) top_p; 0 or 1: off (top_k 0 and top_p 0: greedy)
  uint64_t seed = 0;         // the draw is philox_uniform(seed, step)
  uint64_t step = 0;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalties_begin = 0, penalties_end = 0;  // this row's entries of SamplingBatch::penalties
};
struct SamplingBatch {
  std::vector<SamplingRow> rows;  // one per logit row
  std::vector<PenaltyEntry> penalties;
  bool log_probs = false;         // also each drawn token's log-prob (Sample::log_prob's definition)
};

class Backend {
 protected:
  DeviceBuffer forward_inputs_;  // begin_forward's default keeps the inputs here

 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Element type of the activations of a model whose float weights are `weights`: f32 on the CPU; the GPU
  // computes in the weights' f16 / bf16 (f32 weights: f32).
  virtual DType activation_dtype(DType weights) const { return DType::kF32; }
  // Bytes the KV cache may draw from (kv_cache_free_gpu_mem_fraction is of this): device memory still free
  // on a GPU, available host memory on the CPU.
  virtual uint64_t free_memory() const = 0;
  // Which memory free_memory() is of: backends with the same id share it (the CPU's: the host; a GPU's: its
  // device), so that ranks of one engine sharing a memory split it instead of each taking a fraction of all of it.
  virtual int memory_id() const { return -1; }

  // --- memory
  virtual Result<DeviceBuffer> allocate(size_t bytes) = 0;
  virtual void upload(const void* host, const Tensor& dst) = 0;
  virtual void download(const Tensor& src, void* host) = 0;
  // Makes a backend tensor of host data that stays valid for the backend's life (weights):
  // the CPU may use `host` in place (e.g. an mmap'd engine file); a GPU copies it.
  virtual Result<Tensor> adopt_weight(const Tensor& host, std::shared_ptr<void> keep_alive) = 0;
  // K and V pools of every layer, allocated and zeroed (backend.cpp: allocate + zero).
  virtual Result<std::unique_ptr<KvStorage>> create_kv_storage(const KvCacheSpec& spec);
  // Copies whole KV blocks (every layer, K and V): (src, dst) pairs, e.g. a beam's private copy of a
  // block it shared with its parent beam.
  void copy_kv_blocks(KvStorage& kv, std::span<const std::pair<int32_t, int32_t>> src_dst);
  // --- Overlap of host and device. A GPU queues work and returns; these let the host go on preparing the next
  // forward while one runs (the CPU runs everything at once: the defaults are already complete).
  // Host memory that download_async copies into without staging (pinned on a GPU).
  virtual std::shared_ptr<void> allocate_host(size_t bytes);
  // Queues a copy of `src` into `host` (from allocate_host); the bytes are there once wait_fence returns for a
  // fence recorded after this call.
  virtual void download_async(const Tensor& src, void* host) { download(src, host); }
  // A mark after all work queued so far; wait_fence(f) returns once that work is done.
  virtual uint64_t record_fence() { return 0; }
  virtual void wait_fence(uint64_t fence) {}
  // ids[pairs[1 + 2i]] = src[pairs[2 + 2i]] for i < P = pairs[0]: a forward's input tokens taken from the ids the
  // previous forward picked on the device, before the host has seen them. P is read where the data is (a GPU
  // graph replays the op for any P <= ids.numel()).   src [R] i32, pairs [1 + 2 * cap] i32, ids [T] i32
  virtual void scatter_tokens(const Tensor& src, const Tensor& pairs, Tensor& ids) = 0;

  // Sets `bytes` bytes at `dst` (backend memory) to zero / copies them from `src` (backend memory); queued.
  virtual void zero_bytes(void* dst, size_t bytes) = 0;
  virtual void copy_bytes(void* dst, const void* src, size_t bytes) = 0;

  // Called once per forward, before its ops, with the batch layout they will all get (a GPU uploads the
  // block tables and positions here once instead of per layer), the number of logit rows it computes, what it
  // ends with (argmax_rows or sample_rows: then only token ids leave the device), and the forward's own inputs
  // (host words its ops read: ids, cos/sin...). Returns where those inputs are in backend memory (a GPU copies
  // them with the layout in one transfer): valid until the next begin_forward, and at the same place for
  // forwards with the same number of input words as long as nothing is allocated in between.
  virtual Result<Tensor> begin_forward(const AttentionBatch& batch, int32_t num_logit_rows, ForwardOutput output,
                                       std::span<const int32_t> inputs);
  // Runs the forward's ops (`ops` calls this backend's ops only: no uploads, downloads or waits, and only
  // buffers allocated before). A GPU may record them into a graph for the batch shape begin_forward saw
  // and replay it for later forwards of that shape, which must then touch the same buffers.
  virtual void run_forward_ops(const std::function<void()>& ops) { ops(); }

  // --- ops (activations are of activation_dtype(); logits may be f32 where activations are not)
  // out[t, :] = table[ids[t] - vocab_start, :], zeros when outside the table (a vocab-parallel slice)
  //                                                   table [vocab, hidden], ids [T] i32, out [T, hidden]
  virtual void embedding(const EmbeddingWeight& table, const Tensor& ids, Tensor& out) = 0;
  // out = x / rms(x) * weight, row-wise            x, out [rows, dim], weight [dim]
  virtual void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  // residual += delta; out = rmsnorm(residual)     [rows, dim]
  virtual void add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out) = 0;
  // y = x W^T + bias                                x [T, in], y [T, out] (x's type or f32), bias [out] f32 or null
  virtual void linear(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& y) = 0;
  // Splits qkv [T, (H + 2*KVH) * D] into q_out [T, H * D] and the layer's KV cache slots of each token:
  // optional per-head q/k RMSNorm, then RoPE with cos_sin [T, rotary_dim] (cos | sin halves, pre-scaled).
  virtual void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                                 const AttentionBatch& batch, KvLayer& kv, Tensor& q_out) = 0;
  // Causal attention of each new token over its sequence's paged KV.  q, out [T, H * D]
  virtual void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                               const AttentionParams& params, Tensor& out) = 0;
  // qkv_rope_kv_write then paged_attention (q_scratch: the q between them). A GPU folds a decode step's RoPE
  // and KV write into the attention kernel, with the same results; q_scratch may then stay unwritten.
  virtual void rope_kv_write_attention(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                                       const AttentionBatch& batch, KvLayer& kv, Tensor& q_scratch,
                                       const AttentionParams& params, Tensor& out) {
    qkv_rope_kv_write(qkv, layout, cos_sin, batch, kv, q_scratch);
    paged_attention(q_scratch, kv, batch, params, out);
  }
  // out = silu(gate) * up                           gate_up [T, 2 * I] (gate | up), out [T, I]
  virtual void silu_mul(const Tensor& gate_up, Tensor& out) = 0;
  // residual += delta (the sum rounded to the activation type)   [rows, dim]
  virtual void add(Tensor& residual, const Tensor& delta) = 0;

  // --- A transformer block as fused pairs. When fuses_block_linears(T) says so, the model runs its blocks of a
  // T-token forward through these three instead of norm / linear / add ops (a GPU at decode sizes makes each one
  // kernel: the norm or SiLU as the GEMV's prologue, the residual add as its epilogue, with the unfused ops'
  // roundings). The defaults run the separate ops; scratch tensors (h, act, tmp) may stay unwritten when fused.
  virtual bool fuses_block_linears(int64_t num_tokens) const { return false; }
  // y = rmsnorm(x) W^T + bias                        x [T, hidden], h scratch [T, hidden], y [T, out]
  virtual void rmsnorm_linear(const Tensor& x, const Tensor& norm_w, float eps, Tensor& h, const LinearWeight& w,
                              const Tensor* bias, Tensor& y) {
    rmsnorm(x, norm_w, eps, h);
    linear(h, w, bias, y);
  }
  // residual += x W^T + bias (the product rounded first)   x [T, in], tmp scratch [T, out], residual [T, out]
  virtual void linear_add(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& tmp, Tensor& residual) {
    linear(x, w, bias, tmp);
    add(residual, tmp);
  }
  // residual += (silu(gate) * up) W^T + bias         gate_up [T, 2 * I], act scratch [T, I], tmp as linear_add
  virtual void silu_mul_linear_add(const Tensor& gate_up, Tensor& act, const LinearWeight& w, const Tensor* bias,
                                   Tensor& tmp, Tensor& residual) {
    silu_mul(gate_up, act);
    linear_add(act, w, bias, tmp, residual);
  }
  // out[i, :] = x[rows[i], :]                       rows [n] i32 (backend memory), out [n, ...]
  virtual void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) = 0;
  // ids[r] = the first index of the largest value of logits row r (NaN never wins but at index 0, as the
  // host sampler's argmax).                           logits [R, vocab] f32, ids [R] i32
  virtual void argmax_rows(const Tensor& logits, Tensor& ids) = 0;
  // Sampling where the logits are (a GPU: only ids leave it). samples_on_device() false: the host samples.
  virtual bool samples_on_device() const { return false; }
  // Uploads the settings the next sample_rows uses (called outside run_forward_ops, like begin_forward).
  virtual Status begin_sampling(const SamplingBatch& batch) {
    return unimplemented(name() + " backend: sampling on the device is not supported");
  }
  // ids[r] = the token that LogitsProcessor::apply then TokenSampler::sample draw from row r with the settings
  // of begin_sampling's row r (greedy rows: the argmax of the processed row); log_probs[r] its log-prob when
  // the batch asked.                                 logits [R, vocab] f32 (overwritten), ids [R] i32, log_probs [R] f32
  virtual void sample_rows(Tensor& logits, Tensor& ids, Tensor& log_probs) {
    KILN_CHECK(false, name() + " backend: sample_rows is not supported");
  }
  // Waits for all queued work (no-op on the CPU).
  virtual void synchronize() = 0;

  // --- Tuning at `kiln build`: the backend times its choices for the engine's linear layers at the token
  // counts a forward can have (1..max_tokens; the LM head 1..max_logit_rows) and returns them as a record
  // the engine keeps (empty: nothing to tune, as on the CPU); at load, use_tuning(record) makes it use them
  // (a record from another device or library version is ignored with a note on stderr).
  struct LinearShape {
    int64_t n = 0, k = 0;  // y [m, n] = x [m, k] W^T
    bool bias = false;
    bool lm_head = false;  // f32 output, m up to max_logit_rows
  };
  virtual Result<std::string> tune_linears(const std::vector<LinearShape>& shapes, DType weights, int64_t max_tokens,
                                           int64_t max_logit_rows) {
    return std::string();
  }
  virtual Status use_tuning(const std::string& record) { return {}; }
};

}  // namespace kiln
