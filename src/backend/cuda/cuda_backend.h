// The CUDA backend: device memory, one stream, activations in the weights' f16/bf16 (f32 in the fp32 mode),
// GEMMs through cuBLASLt (batch 1..4: Kiln's bandwidth-bound gemv.cu), the rest in Kiln's own kernels
// (kernels.h). Ops only enqueue work on the stream;
// download() and synchronize() wait. Not thread-safe: one model/executor drives it.
//
// Decode steps run as CUDA graphs: a forward whose sequences each add one token (T <= kMaxGraphTokens)
// gets a fixed device layout — block tables padded to a power-of-two number of blocks, max_context_len
// that bucket's capacity — so that every step of that shape launches the same kernels with the same
// arguments; its ops are captured once per (T, logit rows, bucket) and replayed (one launch instead of
// ~10 per layer). Any allocation drops the graphs, as a graph holds the buffers it was recorded with.
#pragma once

#include <cuda_runtime.h>

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublaslt_gemm.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/pinned_staging.h"

namespace kiln {

class CudaBackend final : public Backend {
 public:
  static constexpr int32_t kMaxGraphTokens = 512;
  // Uses CUDA device `device` (of those CUDA_VISIBLE_DEVICES shows); fails with a clear error when there is none.
  static Result<std::unique_ptr<CudaBackend>> create(int device = 0);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  DType activation_dtype(DType weights) const override { return weights; }
  uint64_t free_memory() const override;
  int memory_id() const override { return device_; }
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)".
  std::string device_description() const;

  Result<DeviceBuffer> allocate(size_t bytes) override;
  void upload(const void* host, const Tensor& dst) override;
  void download(const Tensor& src, void* host) override;
  std::shared_ptr<void> allocate_host(size_t bytes) override;
  void download_async(const Tensor& src, void* host) override;
  uint64_t record_fence() override;
  void wait_fence(uint64_t fence) override;
  void scatter_tokens(const Tensor& src, const Tensor& pairs, Tensor& ids) override;
  Result<Tensor> adopt_weight(const Tensor& host, std::shared_ptr<void> keep_alive) override;
  Result<std::unique_ptr<KvStorage>> create_kv_storage(const KvCacheSpec& spec) override;
  void zero_bytes(void* dst, size_t bytes) override;
  void copy_bytes(void* dst, const void* src, size_t bytes) override;
  Result<Tensor> begin_forward(const AttentionBatch& batch, int32_t num_logit_rows, ForwardOutput output,
                               std::span<const int32_t> inputs) override;
  void run_forward_ops(const std::function<void()>& ops) override;

  void embedding(const EmbeddingWeight& table, const Tensor& ids, Tensor& out) override;
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out) override;
  void linear(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& y) override;
  void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                         const AttentionBatch& batch, KvLayer& kv, Tensor& q_out) override;
  void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                       const AttentionParams& params, Tensor& out) override;
  // Decode steps (one new token per sequence, f16/bf16, full rotary, no q/k norm): one attention kernel that
  // also applies RoPE and writes the KV (attention.cu); otherwise the two ops.
  void rope_kv_write_attention(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                               const AttentionBatch& batch, KvLayer& kv, Tensor& q_scratch,
                               const AttentionParams& params, Tensor& out) override;
  void silu_mul(const Tensor& gate_up, Tensor& out) override;
  void add(Tensor& residual, const Tensor& delta) override;
  // Decode sizes (T <= 4 tokens, 16-bit): each pair is one GEMV (gemv.cu: norm / SiLU as its prologue, the
  // residual add as its epilogue); where a call cannot be fused, the two ops.
  bool fuses_block_linears(int64_t num_tokens) const override;
  void rmsnorm_linear(const Tensor& x, const Tensor& norm_w, float eps, Tensor& h, const LinearWeight& w,
                      const Tensor* bias, Tensor& y) override;
  void linear_add(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& tmp, Tensor& residual) override;
  void silu_mul_linear_add(const Tensor& gate_up, Tensor& act, const LinearWeight& w, const Tensor* bias, Tensor& tmp,
                           Tensor& residual) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void argmax_rows(const Tensor& logits, Tensor& ids) override;
  // Sampling on the device (cuda_backend_sampling.cpp, sampling.cu).
  bool samples_on_device() const override;
  Status begin_sampling(const SamplingBatch& batch) override;
  void sample_rows(Tensor& logits, Tensor& ids, Tensor& log_probs) override;
  void synchronize() override;
  Result<std::string> tune_linears(const std::vector<LinearShape>& shapes, DType weights, int64_t max_tokens,
                                   int64_t max_logit_rows) override;
  Status use_tuning(const std::string& record) override;

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  // Every forward launches its ops one by one from now on (no decode graphs): for ranks whose communicator
  // cannot be recorded into a graph (cuda_communicators.h). Call between forwards.
  void disable_graphs() {
    graphs_enabled_ = false;
    drop_graphs();
  }

 private:
  CudaBackend(int device, cudaStream_t stream);
  cuda::DeviceKv device_kv(const KvLayer& kv) const;
  void drop_graphs();
  void run_forward_ops_untimed(const std::function<void()>& ops);
  // Grows a device scratch buffer to at least `bytes`, zeroed (waits for the stream first: it may be in use).
  void* scratch(DeviceBuffer& buf, size_t bytes);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::LtGemm> gemm_;
  // Uploads and the batch layout go through pinned staging (uploads larger than kMaxStagedUpload do not).
  static constexpr size_t kMaxStagedUpload = size_t{64} << 20;
  cuda::PinnedStaging staging_;
  // Fences: events reused round-robin (record_fence).
  static constexpr uint64_t kFenceRing = 64;
  std::vector<cudaEvent_t> fences_;
  uint64_t last_fence_ = 0;
  // The current forward's layout (begin_forward): its device copy and the view.
  DeviceBuffer batch_dev_;
  cuda::DeviceBatch batch_;
  const AttentionBatch* batch_src_ = nullptr;  // which AttentionBatch batch_ describes (checked by the ops)
  DeviceBuffer attn_workspace_;
  std::vector<DeviceBuffer> weights_;
  // Graphs of decode forwards by shape key (0: this forward is not graphed), and the attention's shape seen
  // on the last ungraphed forward (its workspace is sized before a capture, which must not allocate).
  uint64_t graph_key_ = 0;
  std::map<uint64_t, cudaGraphExec_t> graphs_;
  std::optional<cuda::AttentionParams> attention_shape_;
  bool capturing_ = false;
  // begin_sampling's settings (sampling.h's layout) and the number of rows they cover.
  DeviceBuffer sampling_settings_;
  int64_t sampling_rows_ = 0;
  bool graphs_enabled_ = true;  // KILN_CUDA_GRAPHS=0 turns graphs off (for comparisons)
  bool gemv_enabled_ = true;    // KILN_CUDA_GEMV=0: batch 1..4 linears through cuBLASLt (for comparisons)
  bool fusion_enabled_ = true;  // KILN_CUDA_FUSION=0: decode blocks as separate ops (for comparisons)
  bool rope_fusion_enabled_ = true;  // KILN_CUDA_ROPE_FUSION=0: decode RoPE / KV write as its own kernel
  // Runs y = fused(x) W^T as one GEMV over m rows when gemv.cu can; false (nothing enqueued) otherwise.
  bool fused_gemv(const Tensor& x, int64_t m, const LinearWeight& w, const Tensor* bias, Tensor& y,
                  const cuda::GemvFusion& fusion);
  // KILN_CUDA_TIMING=1: GPU time of every forward's ops (events around run_forward_ops), summed per kind
  // (graphed decode steps, other forwards) and printed when the backend goes, next to the wall time between
  // forwards: the gap is host time the GPU waited for.
  struct ForwardTimes {
    std::vector<float> gpu_ms;    // event to event on the stream, per forward
    std::vector<float> host_ms;   // the host's time to enqueue (or replay) the forward's ops
    void print(const char* name) const;
  };
  bool timing_ = false;
  struct TimedForward {
    cudaEvent_t begin = nullptr, end = nullptr;
    bool graphed = false;
    float host_ms = 0;
  };
  std::deque<TimedForward> timed_;
  ForwardTimes graphed_times_, other_times_;
  void collect_timing(bool wait);
};

}  // namespace kiln
