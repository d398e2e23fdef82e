// Cuts whole-model tensors into one rank's parts (parallel_layout.h says who holds what).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/parallel_layout.h"
#include "model/weight_names.h"

namespace kiln {

// A whole-model tensor by its canonical name (row-major, f32 / f16 / bf16).
struct WholeTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;
};

// `local` (a spec of rank_weight_specs) cut from `whole` (the tensor whole_model_weight_name names):
//   qkv weight / bias   rows of this rank's q heads, then of its k heads, then of its v heads
//   gate_up weight/bias rows of its intermediate slice of gate, then of up
//   o / down weight     columns of its q heads / intermediate slice (row-parallel: partial sums)
//   o / down bias       whole on tp rank 0, zeros elsewhere (added once after the all-reduce)
//   embed / lm_head     rows [vocab_start, vocab_start + vocab_rows), zero past the vocabulary
//   norms               whole
Result<HostBuffer> shard_weight(const ModelConfig& model, const RankLayout& layout, const WeightSpec& local,
                                const WholeTensor& whole);

// Every tensor of `rank` cut from `whole` (all of rank_weight_specs); `keep` holds the data the returned entries
// point to.
Result<std::vector<SafetensorsTensorToWrite>> shard_rank(const ModelConfig& model, const RankLayout& layout,
                                                         const std::vector<WholeTensor>& whole,
                                                         std::vector<HostBuffer>& keep);

}  // namespace kiln
