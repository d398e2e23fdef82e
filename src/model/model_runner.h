// What the executor drives: a model's forwards over its paged KV cache, whether one rank runs it
// (SingleRankRunner: a LlamaModel on one backend) or several (RankGroup: tensor and pipeline parallelism).
// The executor hands out KV block ids; every rank keeps its own part of each block (its layers, its KV heads).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <utility>

#include "backend/backend.h"
#include "model/llama_model.h"

namespace kiln {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;  // the whole model
  virtual const BuildConfig& build() const = 0;
  virtual std::string backend_name() const = 0;   // "cpu", "cuda"
  virtual int num_ranks() const = 0;

  // The KV cache gets the same number of blocks on every rank: a block's bytes on the rank that holds the most,
  // and the memory free on the rank with the least (ranks sharing one memory split it: Backend::memory_id).
  virtual uint64_t kv_bytes_per_block() const = 0;
  virtual uint64_t free_memory() = 0;
  // Every rank's activation workspace for the largest step the build allows (LlamaModel::reserve_workspace).
  virtual Status reserve_workspace() = 0;
  virtual Status create_kv_cache(int num_blocks) = 0;
  // Whole-block copies (src, dst) on every rank, ordered after the forwards launched so far and before the next.
  virtual void copy_kv_blocks(std::span<const std::pair<int32_t, int32_t>> src_dst) = 0;

  // Whether kSample forwards pick on the device, and whether ForwardBatch::previous_tokens is accepted (a forward
  // may be launched before the last one is collected, taking its picks as inputs).
  virtual bool samples_on_device() const = 0;
  virtual bool accepts_previous_tokens() const = 0;
  // max_attention_window_size (0: the model's own windows), and the window of the whole model's layer l.
  virtual void set_attention_window_cap(int32_t tokens) = 0;
  virtual int32_t attention_window(int64_t layer) const = 0;

  // LlamaModel::launch / collect over the runner's KV cache (create_kv_cache first).
  virtual Status launch(const ForwardBatch& batch, ForwardOutput output, const SamplingBatch* sampling) = 0;
  virtual Status collect(ForwardResult& out) = 0;
};

// One LlamaModel on one backend (both outlive the runner).
class SingleRankRunner : public ModelRunner {
 public:
  SingleRankRunner(LlamaModel& model, Backend& backend) : model_(model), backend_(backend) {}
  const ModelConfig& config() const override { return model_.config(); }
  const BuildConfig& build() const override { return model_.build(); }
  std::string backend_name() const override { return backend_.name(); }
  int num_ranks() const override { return 1; }
  uint64_t kv_bytes_per_block() const override { return model_.kv_cache_spec(1).bytes_per_block(); }
  uint64_t free_memory() override { return backend_.free_memory(); }
  Status reserve_workspace() override { return model_.reserve_workspace(); }
  Status create_kv_cache(int num_blocks) override;
  void copy_kv_blocks(std::span<const std::pair<int32_t, int32_t>> src_dst) override;
  bool samples_on_device() const override { return backend_.samples_on_device(); }
  bool accepts_previous_tokens() const override { return true; }
  void set_attention_window_cap(int32_t tokens) override { model_.set_attention_window_cap(tokens); }
  int32_t attention_window(int64_t layer) const override { return model_.attention_window(static_cast<size_t>(layer)); }
  Status launch(const ForwardBatch& batch, ForwardOutput output, const SamplingBatch* sampling) override;
  Status collect(ForwardResult& out) override { return model_.collect(out); }

 private:
  LlamaModel& model_;
  Backend& backend_;
  std::unique_ptr<KvStorage> kv_;
};

}  // namespace kiln
