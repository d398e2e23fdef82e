// All ranks of a tensor/pipeline-parallel engine in one process: a thread, a backend, a LlamaModel and a KV cache
// per rank, connected by the backend's communicators (host memory on the CPU, NCCL between GPUs). Every rank runs
// every forward; the executor sees one model.
//
//   launch(batch) -> each rank's thread: [KV block copies] -> for each micro-batch: launch + collect; a step of
//                    one batch whose ids stay on the device stays in flight until the next step is launched
//                    behind it (a GPU always has queued work while the host prepares the next step)
//   collect()     -> waits for the oldest launched step; the logits / ids come from the last stage's tp rank 0
//
// With pipeline stages a batch is cut into micro-batches of whole sequences (micro_batches.h) that flow through
// the stages in order, so that stage s works on micro-batch m + 1 while stage s + 1 works on m.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/communicator_factory.h"
#include "model/micro_batches.h"
#include "model/model_runner.h"

namespace kiln {

class RankGroup final : public ModelRunner {
 public:
  // Loads every rank of the engine dir `dir` (tp_size x pp_size from its config.json), each on its own thread
  // with its own backend (cuda: rank r on GPU r).
  static Result<std::unique_ptr<RankGroup>> load(const std::string& dir);
  ~RankGroup() override;

  const ModelConfig& config() const override { return config_; }
  const BuildConfig& build() const override { return build_; }
  std::string backend_name() const override { return build_.backend; }
  int num_ranks() const override { return static_cast<int>(ranks_.size()); }
  uint64_t kv_bytes_per_block() const override;
  uint64_t free_memory() override;
  Status reserve_workspace() override;
  Status create_kv_cache(int num_blocks) override;
  void copy_kv_blocks(std::span<const std::pair<int32_t, int32_t>> src_dst) override;
  bool samples_on_device() const override { return samples_on_device_; }
  bool accepts_previous_tokens() const override { return build_.pp_size == 1; }
  void set_attention_window_cap(int32_t tokens) override;
  int32_t attention_window(int64_t layer) const override;
  Status launch(const ForwardBatch& batch, ForwardOutput output, const SamplingBatch* sampling) override;
  Status collect(ForwardResult& out) override;

  // Micro-batches per step with pipeline stages (default 2 x pp_size; 1 turns the overlap off).
  void set_micro_batches(int n) { micro_batches_ = std::max(1, n); }

 private:
  struct Step;
  struct Rank {
    Engine engine;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<LlamaModel> model;
    std::unique_ptr<KvStorage> kv;
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> tasks;
    bool stop = false;
    std::deque<std::shared_ptr<Step>> in_flight;  // launched on this rank, not collected (its thread only)
  };
  // One launch: what every rank runs, and what comes back.
  struct Step {
    std::vector<MicroBatch> parts;
    std::vector<std::vector<int32_t>> block_tables;  // the parts' SequenceView::block_table point here, not into
                                                     // the executor's tables, which change once launch returns
    ForwardOutput output = ForwardOutput::kLogits;
    const SamplingBatch* sampling = nullptr;  // pp == 1 only (one part); owned by `sampling_copy`
    SamplingBatch sampling_copy;
    std::vector<std::pair<int32_t, int32_t>> copies;
    int64_t rows = 0;
    std::vector<ForwardResult> results;  // [parts] from the output rank
    std::vector<Status> status;          // [ranks]
    std::mutex mu;
    std::condition_variable cv;
    int remaining = 0;
  };

  RankGroup() = default;
  void serve(Rank& r);                                              // a rank's thread
  void post(Rank& r, std::function<void()> task);
  Status on_every_rank(const std::function<Status(Rank&)>& fn);     // runs fn on each rank's thread, waits
  void run_step(Rank& r, int index, const std::shared_ptr<Step>& step);
  void collect_oldest(Rank& r, int index);  // the rank's oldest forward in flight: collected, its step told
  void finish(Step& step, int index, Status st);
  int output_rank() const { return (build_.pp_size - 1) * build_.tp_size; }

  ModelConfig config_;
  BuildConfig build_;
  bool samples_on_device_ = false;
  int micro_batches_ = 0;
  std::vector<std::unique_ptr<Rank>> ranks_;
  Communicators comms_;
  std::vector<std::pair<int32_t, int32_t>> pending_copies_;
  std::deque<std::shared_ptr<Step>> steps_;  // launched, not collected
  int64_t last_rows_ = 0;                    // of the step collected last
  bool last_ids_ = false;                    // it handed back ids (previous tokens may refer to them)
};

}  // namespace kiln
