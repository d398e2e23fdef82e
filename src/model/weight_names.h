// Kiln's canonical weight names and shapes, and where each comes from in a Hugging Face checkpoint.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

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

}  // namespace kiln
