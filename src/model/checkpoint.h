// Kiln checkpoint dir (output of `kiln convert`): config.json + rank<N>.safetensors with canonical names.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/quant.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "model/model_config.h"

namespace kiln {

constexpr int kCheckpointFormatVersion = 1;

struct ConvertOptions {
  std::string model_dir;
  std::string output_dir;
  DType dtype = DType::kF32;  // weights of linear layers and embeddings; norms and biases stay f32
  int tp_size = 1;
  int pp_size = 1;
  // Speed and memory work without real weights: `config_path` is an HF-style config.json (e.g. a
  // *.shape.json) and weights are drawn at the model's init scale (normal, std = initializer_range,
  // default 0.02; norms 1, biases 0), so activations stay finite. model_dir is not read.
  bool random_weights = false;
  std::string config_path;
  uint64_t seed = 1234;
};

struct CheckpointInfo {
  ModelConfig model;
  DType dtype = DType::kF32;  // float weights
  // Tensors kept block-quantized (Q8_0/Q4_0/Q4_1, from a GGUF file), stored as uint8 [rows, row bytes].
  std::map<std::string, GgmlType> quantized;
  int tp_size = 1;
  int pp_size = 1;
};

// HF folder -> checkpoint dir. Refuses unknown architectures, bad configs and weights that do not match
// the config (missing tensors, wrong shapes, non-float dtypes, values that overflow the target dtype).
Status convert_hf_checkpoint(const ConvertOptions& options);

// Writes a checkpoint dir: rank0.safetensors with `tensors` (canonical names) and config.json. `source`
// says where it came from (recorded in config.json).
Status write_checkpoint(const std::string& output_dir, const CheckpointInfo& info, bool random_weights,
                        const std::vector<SafetensorsTensorToWrite>& tensors, const nlohmann::json& source = {});

// Copies the tokenizer files present in `from` (tokenizer.json, tokenizer_config.json,
// generation_config.json, special_tokens_map.json) into `to`, so that checkpoint and engine dirs carry their
// tokenizer. Returns whether a tokenizer.json was copied.
Result<bool> copy_tokenizer_files(const std::string& from, const std::string& to);

// Reads and checks a checkpoint dir's config.json.
Result<CheckpointInfo> read_checkpoint_info(const std::string& dir);
std::string checkpoint_rank_file(const std::string& dir, int rank);

}  // namespace kiln
