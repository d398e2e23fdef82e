// How a model is split over tp_size x pp_size ranks, and what one rank holds.
//
// rank = pp_rank * tp_size + tp_rank. Tensor parallelism (Megatron-style) splits every layer over the tp ranks of
// a stage: q/k/v heads and the MLP's intermediate columns (column-parallel qkv and gate_up, row-parallel o and
// down, whose partial outputs are summed by an all-reduce), and the vocabulary (each rank embeds and scores
// ceil(vocab / tp) ids; embeddings are all-reduced, logits all-gathered). Pipeline parallelism gives each stage a
// contiguous run of layers; the first stage embeds, the last one holds the final norm and the LM head.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "model/model_config.h"

namespace kiln {

struct RankLayout {
  int tp_size = 1, pp_size = 1;
  int tp_rank = 0, pp_rank = 0;
  int64_t first_layer = 0, num_layers = 0;  // this stage's layers [first_layer, first_layer + num_layers)
  int64_t vocab_start = 0, vocab_rows = 0;  // embedding / LM head rows [vocab_start, +vocab_rows) (last rank padded)

  int rank() const { return pp_rank * tp_size + tp_rank; }
  int world_size() const { return tp_size * pp_size; }
  bool single() const { return world_size() == 1; }
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }
  std::string to_string() const;  // "rank 3 (tp 1/2, pp 1/2: layers 16-31)"
};

// Checks that `model` splits over tp x pp: heads, KV heads and the intermediate size divide by tp, at least one
// layer per stage. The error names the sizes that do not divide.
Status check_parallel(const ModelConfig& model, int tp_size, int pp_size);

// The layout of `rank` (0 <= rank < tp_size * pp_size); layers are split as evenly as possible, earlier stages
// taking one more when they do not divide. Call check_parallel first.
RankLayout rank_layout(const ModelConfig& model, int tp_size, int pp_size, int rank);

// The model as one rank sees it: num_heads / tp, num_kv_heads / tp, intermediate_size / tp, the stage's layers
// (layer_window sliced), vocab_size = vocab_rows. head_dim, hidden_size and RoPE are unchanged. For one rank:
// the model itself.
ModelConfig rank_model(const ModelConfig& model, const RankLayout& layout);

}  // namespace kiln
