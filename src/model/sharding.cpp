#include "model/sharding.h"

#include <cstring>
#include <map>

namespace kiln {

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

struct RowRange {
  int64_t begin, count;
};

}  // namespace

Result<HostBuffer> shard_weight(const ModelConfig& m, const RankLayout& r, const WeightSpec& local,
                                const WholeTensor& whole) {
  if (!dtype_is_float(whole.dtype) || whole.dtype == DType::kF64)
    return unimplemented("tensor '" + whole.name + "' is " + dtype_name(whole.dtype) +
                         ": only float32/float16/bfloat16 checkpoints split over ranks (convert block-quantized "
                         "GGUF weights with --dtype float16 first)");
  const size_t es = dtype_size(whole.dtype);
  const int64_t rows = whole.shape[0], cols = whole.shape.ndim == 2 ? whole.shape[1] : 1;
  const int64_t out_rows = local.shape[0], out_cols = local.shape.ndim == 2 ? local.shape[1] : 1;
  if (local.shape.ndim != whole.shape.ndim)
    return internal_error("shard " + local.name + ": rank and whole tensors differ in rank");
  HostBuffer out(static_cast<size_t>(out_rows * out_cols) * es);
  std::memset(out.data(), 0, out.size());
  const char* src = static_cast<const char*>(whole.data);
  char* dst = static_cast<char*>(out.data());
  const int tr = r.tp_rank;

  // Row ranges of the whole tensor, concatenated in order, make the rank's tensor.
  auto take_rows = [&](const std::vector<RowRange>& ranges) -> Status {
    int64_t at = 0;
    for (const RowRange& g : ranges) {
      const int64_t n = std::max<int64_t>(0, std::min(g.count, rows - g.begin));  // past the end: zeros (padding)
      std::memcpy(dst + at * cols * es, src + g.begin * cols * es, static_cast<size_t>(n * cols) * es);
      at += g.count;
    }
    if (at != out_rows || cols != out_cols)
      return internal_error("shard " + local.name + ": " + std::to_string(at) + " rows for " + local.shape.to_string());
    return {};
  };
  const int64_t D = m.head_dim, Hl = m.num_heads / r.tp_size, Kl = m.num_kv_heads / r.tp_size;
  const int64_t Il = m.intermediate_size / r.tp_size;
  const std::string& n = local.name;
  if (ends_with(n, "attn.qkv.weight") || ends_with(n, "attn.qkv.bias")) {
    const int64_t q = m.num_heads * D, k = m.num_kv_heads * D;
    KILN_RETURN_IF_ERROR(take_rows({{tr * Hl * D, Hl * D}, {q + tr * Kl * D, Kl * D}, {q + k + tr * Kl * D, Kl * D}}));
  } else if (ends_with(n, "mlp.gate_up.weight") || ends_with(n, "mlp.gate_up.bias")) {
    KILN_RETURN_IF_ERROR(take_rows({{tr * Il, Il}, {m.intermediate_size + tr * Il, Il}}));
  } else if (ends_with(n, "attn.o.weight") || ends_with(n, "mlp.down.weight")) {
    // Row-parallel: this rank's input columns [c0, c0 + out_cols) of every row.
    const int64_t c0 = tr * out_cols;
    if (out_rows != rows || c0 + out_cols > cols)
      return internal_error("shard " + n + ": columns do not fit " + whole.shape.to_string());
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + i * out_cols * es, src + (i * cols + c0) * es, static_cast<size_t>(out_cols) * es);
  } else if (ends_with(n, "attn.o.bias") || ends_with(n, "mlp.down.bias")) {
    if (tr == 0) KILN_RETURN_IF_ERROR(take_rows({{0, rows}}));
  } else if (n == "embed.weight" || n == "lm_head.weight") {
    KILN_RETURN_IF_ERROR(take_rows({{r.vocab_start, r.vocab_rows}}));
  } else {
    if (local.shape != whole.shape)
      return internal_error("shard " + n + ": replicated tensor " + local.shape.to_string() + " vs " + whole.shape.to_string());
    KILN_RETURN_IF_ERROR(take_rows({{0, rows}}));
  }
  return out;
}

Result<std::vector<SafetensorsTensorToWrite>> shard_rank(const ModelConfig& m, const RankLayout& r,
                                                         const std::vector<WholeTensor>& whole,
                                                         std::vector<HostBuffer>& keep) {
  std::map<std::string, const WholeTensor*> by_name;
  for (const WholeTensor& t : whole) by_name[t.name] = &t;
  std::vector<SafetensorsTensorToWrite> out;
  for (const WeightSpec& s : rank_weight_specs(m, r)) {
    const std::string source = whole_model_weight_name(m, r, s.name);
    auto it = by_name.find(source);
    if (it == by_name.end()) return not_found("tensor '" + source + "' (for " + r.to_string() + ") is missing");
    KILN_ASSIGN_OR_RETURN(HostBuffer part, shard_weight(m, r, s, *it->second));
    out.push_back({s.name, it->second->dtype, s.shape, part.data()});
    keep.push_back(std::move(part));
  }
  return out;
}

}  // namespace kiln
