// The CPU backend: host memory, f32 activations, SIMD kernels chosen at run time, both cores.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace kiln {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(ThreadPool& pool = ThreadPool::global()) : pool_(pool) {}
  // With a pool of its own of `threads` threads (ranks of a multi-rank engine run side by side, each on its share
  // of the cores, instead of taking turns on the shared pool).
  explicit CpuBackend(int threads) : owned_pool_(std::make_unique<ThreadPool>(threads)), pool_(*owned_pool_) {}
  std::string name() const override { return "cpu"; }
  uint64_t free_memory() const override;

  Result<DeviceBuffer> allocate(size_t bytes) override;
  void upload(const void* host, const Tensor& dst) override;
  void download(const Tensor& src, void* host) override;
  Result<Tensor> adopt_weight(const Tensor& host, std::shared_ptr<void> keep_alive) override;
  void zero_bytes(void* dst, size_t bytes) override;
  void copy_bytes(void* dst, const void* src, size_t bytes) override;

  void embedding(const EmbeddingWeight& table, const Tensor& ids, Tensor& out) override;
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out) override;
  void linear(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& y) override;
  void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                         const AttentionBatch& batch, KvLayer& kv, Tensor& q_out) override;
  void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                       const AttentionParams& params, Tensor& out) override;
  void silu_mul(const Tensor& gate_up, Tensor& out) override;
  void add(Tensor& residual, const Tensor& delta) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void argmax_rows(const Tensor& logits, Tensor& ids) override;
  void scatter_tokens(const Tensor& src, const Tensor& pairs, Tensor& ids) override;
  void synchronize() override {}

 private:
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool& pool_;
};

}  // namespace kiln
