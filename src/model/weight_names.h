// Kiln's canonical weight names and shapes, and where each comes from in a Hugging Face checkpoint.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"
#include "model/parallel_layout.h"

namespace kiln {

enum class WeightKind {
  kLinear,     // [out, in], packed for the backend's GEMM at build time
  kEmbedding,  // [vocab, hidden], rows gathered
  kVector,     // norms and biases, always f32
};

struct WeightSpec {
  std::string name;                      // canonical, e.g. "layers.3.attn.qkv.weight"
  Shape shape;                           // canonical shape
  WeightKind kind;
  std::vector<std::string> hf_sources;   // HF tensors concatenated along dim 0 to make it
};

// Every tensor a checkpoint of this config holds, in a fixed order.
std::vector<WeightSpec> weight_specs(const ModelConfig& config);

// The tensors of one rank's checkpoint and engine file, with that rank's shapes (rank_model) and names local to
// it: its stage's layers numbered from 0, the embedding on the first stage only, the final norm and the LM head
// on the last stage only (the LM head always its own tensor, also when the model ties it to the embedding).
// For a single rank: weight_specs(config).
std::vector<WeightSpec> rank_weight_specs(const ModelConfig& config, const RankLayout& layout);

// The whole-model tensor a rank-local name is cut from: "layers.2.attn.o.weight" on a stage that starts at layer
// 16 -> "layers.18.attn.o.weight"; a tied LM head -> "embed.weight".
std::string whole_model_weight_name(const ModelConfig& config, const RankLayout& layout, const std::string& local);

}  // namespace kiln
