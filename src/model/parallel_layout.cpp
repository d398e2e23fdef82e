#include "model/parallel_layout.h"

#include <algorithm>

namespace kiln {

std::string RankLayout::to_string() const {
  return "rank " + std::to_string(rank()) + " (tp " + std::to_string(tp_rank) + "/" + std::to_string(tp_size) + ", pp " +
         std::to_string(pp_rank) + "/" + std::to_string(pp_size) + ": layers " + std::to_string(first_layer) + "-" +
         std::to_string(first_layer + num_layers - 1) + ")";
}

Status check_parallel(const ModelConfig& m, int tp, int pp) {
  if (tp < 1 || pp < 1) return invalid_argument("--tp_size and --pp_size must be >= 1");
  if (tp > 64 || pp > 64) return invalid_argument("--tp_size and --pp_size must be <= 64");
  auto divides = [&](int64_t n, const char* what) -> Status {
    if (n % tp != 0)
      return invalid_argument("--tp_size " + std::to_string(tp) + " does not divide " + what + "=" + std::to_string(n) +
                              " of this model; use a tp_size that divides the head counts and the intermediate size");
    return {};
  };
  KILN_RETURN_IF_ERROR(divides(m.num_heads, "num_attention_heads"));
  KILN_RETURN_IF_ERROR(divides(m.num_kv_heads, "num_key_value_heads"));
  KILN_RETURN_IF_ERROR(divides(m.intermediate_size, "intermediate_size"));
  if (m.num_layers < pp)
    return invalid_argument("--pp_size " + std::to_string(pp) + " exceeds num_hidden_layers=" +
                            std::to_string(m.num_layers) + ": every pipeline stage needs at least one layer");
  return {};
}

RankLayout rank_layout(const ModelConfig& m, int tp, int pp, int rank) {
  RankLayout r;
  r.tp_size = tp;
  r.pp_size = pp;
  r.tp_rank = rank % tp;
  r.pp_rank = rank / tp;
  const int64_t base = m.num_layers / pp, extra = m.num_layers % pp;
  r.num_layers = base + (r.pp_rank < extra ? 1 : 0);
  r.first_layer = r.pp_rank * base + std::min<int64_t>(r.pp_rank, extra);
  r.vocab_rows = (m.vocab_size + tp - 1) / tp;
  r.vocab_start = r.tp_rank * r.vocab_rows;
  return r;
}

ModelConfig rank_model(const ModelConfig& m, const RankLayout& r) {
  if (r.single()) return m;
  ModelConfig c = m;
  c.num_heads = m.num_heads / r.tp_size;
  c.num_kv_heads = m.num_kv_heads / r.tp_size;
  c.intermediate_size = m.intermediate_size / r.tp_size;
  c.num_layers = r.num_layers;
  c.layer_window.assign(m.layer_window.begin() + r.first_layer, m.layer_window.begin() + r.first_layer + r.num_layers);
  c.vocab_size = r.vocab_rows;
  return c;
}

}  // namespace kiln
