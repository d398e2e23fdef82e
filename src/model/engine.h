// Engine dir (output of `kiln build`): config.json (model + build config + versions) and rank<N>.engine
// holding the weights pre-packed for the backend. `kiln run` / `kiln serve` only load it.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/quant.h"
#include "core/status.h"
#include "io/engine_file.h"
#include "model/model_config.h"
#include "model/parallel_layout.h"

namespace kiln {

// Bump when the engine dir's meaning changes; older engines are refused with "rebuild".
constexpr int kEngineFormatVersion = 1;
// Packed layout of linear weights written by this build for the CPU backend.
constexpr const char* kCpuLinearLayout = "cpu_panel_v1";
// Block-quantized linear weights packed for the CPU's quantized GEMM (backend/cpu/qgemm.h).
constexpr const char* kCpuQuantLinearLayout = "cpu_qpanel_v1";
// A block-quantized embedding table: GGUF rows as they were in the file.
constexpr const char* kGgmlRowsLayout = "ggml_rows";

struct BuildConfig {
  int64_t max_batch_size = 8;
  int64_t max_input_len = 1024;
  int64_t max_seq_len = 0;      // max_input_len + max_output_len
  int64_t max_num_tokens = 0;   // tokens in one forward (prefill chunks + decode); 0 = default
  int64_t max_beam_width = 1;   // widest beam search a request may ask for
  std::string gemm_plugin = "auto";  // "auto", "disable" or the engine dtype (accepted for trtllm-build parity)
  int tp_size = 1;  // from the checkpoint (build_engine: 0 = take the checkpoint's, otherwise must match it)
  int pp_size = 1;
  int tokens_per_block = 64;
  DType dtype = DType::kF32;     // float weights (from the checkpoint)
  // Weights kept block-quantized (from the checkpoint), by engine tensor name: Q8_0, Q4_0 or Q4_1.
  std::map<std::string, GgmlType> quantized;
  DType kv_cache_dtype = DType::kF32;
  std::string backend = "cpu";

  // Fills defaults and checks the limits against the model (e.g. max_seq_len <= max_position_embeddings).
  Status finalize(const ModelConfig& model);
  // What the weights are, for people: "bfloat16", or "q4_1 (120 tensors), q8_0 (2); float32 otherwise".
  std::string weight_format() const;
  nlohmann::json to_json() const;
  nlohmann::json quantized_json() const;
  static Result<BuildConfig> from_json(const nlohmann::json& j);
};

// "1.5 GiB", "320 KiB".
std::string human_bytes(uint64_t bytes);

struct MemoryPlan {
  uint64_t weights_bytes = 0;
  uint64_t kv_bytes_per_token = 0;
  uint64_t kv_budget_bytes = 0;
  uint64_t kv_tokens = 0;              // tokens of KV that fit the budget
  uint64_t tokens_for_full_batch = 0;  // max_batch_size * max_seq_len
  int ranks = 1;                       // tp_size x pp_size: weights and KV are those of rank 0 (the most layers)
  std::string to_string() const;
};

// Weight bytes and KV bytes per token of this model at this build config; the KV budget is
// `kv_fraction` of the host memory available after the weights.
MemoryPlan plan_memory(const ModelConfig& model, const BuildConfig& build, double kv_fraction);

// checkpoint dir -> engine dir. Prints the plan to `log` when given.
Status build_engine(const std::string& checkpoint_dir, const std::string& output_dir, BuildConfig build,
                    std::string* plan_text);

struct Engine {
  ModelConfig model;                 // the whole model (rank_model(model, layout) is this rank's part)
  BuildConfig build;
  RankLayout layout;                 // which rank `file` is
  std::shared_ptr<EngineFile> file;  // that rank's weights
  std::string gemm_tuning;           // the backend's tuning record (kGemmTuningFile), empty when none
};

// The file in an engine dir that keeps the backend's GEMM tuning made by `kiln build` on the GPU.
inline constexpr const char* kGemmTuningFile = "gemm_tuning.json";

// Loads and checks an engine dir: versions, config, every tensor present with the expected shape,
// dtype, layout and size. Errors say what is wrong and what to run.
// `rank` of an engine of several (tp_size x pp_size) ranks: its rank<N>.engine.
Result<Engine> load_engine(const std::string& dir, int rank = 0);

}  // namespace kiln
