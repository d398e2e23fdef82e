#include "model/checkpoint.h"

#include "core/thread_pool.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "io/hf_checkpoint.h"
#include "io/safetensors.h"
#include "model/sharding.h"
#include "model/weight_names.h"

namespace kiln {

namespace fs = std::filesystem;
using nlohmann::json;

std::string checkpoint_rank_file(const std::string& dir, int rank) {
  return (fs::path(dir) / ("rank" + std::to_string(rank) + ".safetensors")).string();
}

namespace {

Status write_text_file(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return invalid_argument(path + ": cannot write");
    out << text;
    if (!out) return data_loss(path + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return data_loss(path + ": " + ec.message());
  return {};
}

// True if every value is finite (a narrowing conversion may overflow float16).
bool all_finite(const HostBuffer& buf, DType t, int64_t n) {
  if (t == DType::kF32) {
    const float* p = static_cast<const float*>(buf.data());
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  }
  const uint16_t* p = static_cast<const uint16_t*>(buf.data());
  const uint16_t exp_mask = t == DType::kF16 ? 0x7c00 : 0x7f80;
  for (int64_t i = 0; i < n; ++i)
    if ((p[i] & exp_mask) == exp_mask) return false;
  return true;
}

}  // namespace

namespace {

Status write_checkpoint(const ConvertOptions& o, const ModelConfig& config, const std::vector<SafetensorsTensorToWrite>& out) {
  CheckpointInfo info;
  info.model = config;
  info.dtype = o.dtype;
  info.tp_size = o.tp_size;
  info.pp_size = o.pp_size;
  return kiln::write_checkpoint(o.output_dir, info, o.random_weights, out);
}

// Fast deterministic normal samples (xorshift + Box-Muller); quality is ample for random test weights.
class NormalSampler {
 public:
  explicit NormalSampler(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = (static_cast<double>(bits() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = static_cast<double>(bits() >> 11) / 9007199254740992.0;
    double r = std::sqrt(-2.0 * std::log(u1)), t = 6.283185307179586 * u2;
    spare_ = static_cast<float>(r * std::sin(t));
    has_spare_ = true;
    return static_cast<float>(r * std::cos(t));
  }

 private:
  uint64_t bits() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return s_;
  }
  uint64_t s_;
  float spare_ = 0;
  bool has_spare_ = false;
};

Status convert_random(const ConvertOptions& o) {
  KILN_ASSIGN_OR_RETURN(json hf_config, read_json_file(o.config_path));
  KILN_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::from_hf(hf_config, nullptr));
  KILN_RETURN_IF_ERROR(check_parallel(config, o.tp_size, o.pp_size));
  const double stddev = hf_config.value("initializer_range", 0.02);
  std::vector<HostBuffer> buffers;
  std::vector<SafetensorsTensorToWrite> out;
  // Chunks of 64K values, each with its own sampler seeded by (seed, tensor, chunk): the same weights for
  // any thread count, drawn on every core (an 8B-parameter model in seconds, not minutes).
  constexpr int64_t kChunk = 1 << 16;
  uint64_t tensor_index = 0;
  for (const WeightSpec& spec : weight_specs(config)) {
    const DType to = spec.kind == WeightKind::kVector ? DType::kF32 : o.dtype;
    const int64_t n = spec.shape.numel();
    HostBuffer buf(static_cast<size_t>(n) * dtype_size(to));
    const bool is_norm = spec.name.find("norm") != std::string::npos;
    const uint64_t t = tensor_index++;
    ThreadPool::global().parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c0, int64_t c1) {
      std::vector<float> row(static_cast<size_t>(kChunk));
      for (int64_t c = c0; c < c1; ++c) {
        NormalSampler rng(o.seed ^ (t << 40) ^ static_cast<uint64_t>(c));
        const int64_t i = c * kChunk, len = std::min(kChunk, n - i);
        for (int64_t j = 0; j < len; ++j)
          row[j] = spec.kind == WeightKind::kVector ? (is_norm ? 1.0f : 0.0f) : static_cast<float>(stddev) * rng.next();
        convert_floats(row.data(), DType::kF32, static_cast<char*>(buf.data()) + i * dtype_size(to), to, len);
      }
    });
    out.push_back({spec.name, to, spec.shape, buf.data()});
    buffers.push_back(std::move(buf));
  }
  return write_checkpoint(o, config, out);
}

}  // namespace

Status convert_hf_checkpoint(const ConvertOptions& o) {
  if (o.dtype != DType::kF32 && o.dtype != DType::kF16 && o.dtype != DType::kBF16)
    return invalid_argument(std::string("--dtype ") + dtype_name(o.dtype) + " is not supported (float32, float16, bfloat16)");
  if (o.tp_size < 1 || o.pp_size < 1) return invalid_argument("--tp_size and --pp_size must be >= 1");
  if (o.random_weights) return convert_random(o);
  const fs::path dir(o.model_dir);
  if (!fs::is_directory(dir)) return not_found("--model_dir " + o.model_dir + " is not a directory");
  if (!fs::exists(dir / "config.json")) return not_found(o.model_dir + " has no config.json (is it a Hugging Face model folder?)");
  KILN_ASSIGN_OR_RETURN(json hf_config, read_json_file((dir / "config.json").string()));
  json gen;
  const json* gen_ptr = nullptr;
  if (fs::exists(dir / "generation_config.json")) {
    KILN_ASSIGN_OR_RETURN(gen, read_json_file((dir / "generation_config.json").string()));
    gen_ptr = &gen;
  }
  KILN_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::from_hf(hf_config, gen_ptr));
  KILN_RETURN_IF_ERROR(check_parallel(config, o.tp_size, o.pp_size));
  KILN_ASSIGN_OR_RETURN(HfCheckpoint hf, HfCheckpoint::open(o.model_dir));

  std::vector<WeightSpec> specs = weight_specs(config);
  std::vector<HostBuffer> buffers;
  std::vector<SafetensorsTensorToWrite> out;
  std::set<std::string> used;
  for (const WeightSpec& spec : specs) {
    const DType to = spec.kind == WeightKind::kVector ? DType::kF32 : o.dtype;
    // Check each source's shape, then concatenate them along dim 0.
    int64_t rows = 0;
    const int64_t row_elems = spec.shape.ndim == 2 ? spec.shape[1] : 1;
    for (const std::string& src : spec.hf_sources) {
      const SafetensorsEntry* e = hf.find(src);
      if (!e) return not_found(o.model_dir + ": tensor '" + src + "' is missing (needed for " + spec.name + ")");
      if (!dtype_is_float(e->dtype) || e->dtype == DType::kF64)
        return invalid_argument(o.model_dir + ": tensor '" + src + "' has dtype " + dtype_name(e->dtype) +
                                ", expected float32, float16 or bfloat16");
      if (e->shape.ndim != spec.shape.ndim || (spec.shape.ndim == 2 && e->shape[1] != row_elems))
        return invalid_argument(o.model_dir + ": tensor '" + src + "' has shape " + e->shape.to_string() +
                                ", which does not fit " + spec.name + " " + spec.shape.to_string() + " of this config");
      rows += e->shape[0];
      used.insert(src);
    }
    if (rows != spec.shape[0])
      return invalid_argument(o.model_dir + ": tensors for " + spec.name + " have " + std::to_string(rows) +
                              " rows in all, config.json implies " + std::to_string(spec.shape[0]));
    HostBuffer buf(static_cast<size_t>(spec.shape.numel()) * dtype_size(to));
    size_t offset = 0;
    for (const std::string& src : spec.hf_sources) {
      KILN_ASSIGN_OR_RETURN(HostBuffer part, hf.read_as(src, to));
      const size_t bytes = static_cast<size_t>(hf.find(src)->shape.numel()) * dtype_size(to);
      std::memcpy(static_cast<char*>(buf.data()) + offset, part.data(), bytes);
      offset += bytes;
    }
    if (!all_finite(buf, to, spec.shape.numel()))
      return invalid_argument(o.model_dir + ": " + spec.name + " has values that are not finite in " + dtype_name(to) +
                              " (out of range for --dtype?)");
    out.push_back({spec.name, to, spec.shape, buf.data()});
    buffers.push_back(std::move(buf));
  }
  // Anything left over means the config and the weights disagree (except buffers HF never needs).
  for (const std::string& name : hf.names()) {
    if (used.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;
    return invalid_argument(o.model_dir + ": unexpected tensor '" + name + "' for " + config.architecture +
                            " with this config.json");
  }

  KILN_RETURN_IF_ERROR(write_checkpoint(o, config, out));
  return copy_tokenizer_files(o.model_dir, o.output_dir).status();
}

Status write_checkpoint(const std::string& output_dir, const CheckpointInfo& c, bool random_weights,
                        const std::vector<SafetensorsTensorToWrite>& tensors, const json& source) {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) return invalid_argument("--output_dir " + output_dir + ": " + ec.message());
  if (c.tp_size * c.pp_size == 1) {
    KILN_RETURN_IF_ERROR(write_safetensors(checkpoint_rank_file(output_dir, 0), tensors, {{"format", "kiln-checkpoint"}}));
  } else {
    // One file per rank, each with that rank's part of every tensor it holds (sharding.h).
    if (!c.quantized.empty())
      return unimplemented("block-quantized weights (" + std::to_string(c.quantized.size()) +
                           " tensors) are single-rank: give --dtype float16 (or bfloat16, float32) to dequantize "
                           "them, then they split over --tp_size/--pp_size");
    KILN_RETURN_IF_ERROR(check_parallel(c.model, c.tp_size, c.pp_size));
    std::vector<WholeTensor> whole;
    for (const SafetensorsTensorToWrite& t : tensors) whole.push_back({t.name, t.dtype, t.shape, t.data});
    for (int rank = 0; rank < c.tp_size * c.pp_size; ++rank) {
      std::vector<HostBuffer> keep;
      KILN_ASSIGN_OR_RETURN(auto parts, shard_rank(c.model, rank_layout(c.model, c.tp_size, c.pp_size, rank), whole, keep));
      KILN_RETURN_IF_ERROR(write_safetensors(checkpoint_rank_file(output_dir, rank), parts, {{"format", "kiln-checkpoint"}}));
    }
  }
  json quantized = json::object();
  for (const auto& [name, type] : c.quantized) quantized[name] = ggml_type_lower_name(type);
  json info = {{"kiln_checkpoint_version", kCheckpointFormatVersion},
               {"kiln_version", KILN_VERSION},
               {"dtype", dtype_name(c.dtype)},
               {"quantized", quantized},
               {"tp_size", c.tp_size},
               {"pp_size", c.pp_size},
               {"random_weights", random_weights},
               {"model", c.model.to_json()}};
  if (!source.is_null()) info["source"] = source;
  return write_text_file((fs::path(output_dir) / "config.json").string(), info.dump(2) + "\n");
}

Result<bool> copy_tokenizer_files(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (fs::equivalent(from, to, ec)) return fs::exists(fs::path(to) / "tokenizer.json");
  bool copied = false;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) continue;
    fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return data_loss("copying " + src.string() + " to " + to + ": " + ec.message());
    copied |= std::string(name) == "tokenizer.json";
  }
  return copied;
}

Result<CheckpointInfo> read_checkpoint_info(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(path)) return not_found(dir + " has no config.json; make a checkpoint with `kiln convert`");
  KILN_ASSIGN_OR_RETURN(json j, read_json_file(path));
  if (!j.is_object() || !j.contains("kiln_checkpoint_version"))
    return invalid_argument(path + " is not a Kiln checkpoint config (a Hugging Face folder? run `kiln convert` first)");
  if (j["kiln_checkpoint_version"] != kCheckpointFormatVersion)
    return failed_precondition(path + ": checkpoint format version " + j["kiln_checkpoint_version"].dump() +
                               ", this kiln reads " + std::to_string(kCheckpointFormatVersion) + "; re-run `kiln convert`");
  CheckpointInfo info;
  try {
    auto dt = dtype_from_name(j.at("dtype").get<std::string>());
    if (!dt) return invalid_argument(path + ": unknown dtype");
    info.dtype = *dt;
    info.tp_size = j.at("tp_size").get<int>();
    info.pp_size = j.at("pp_size").get<int>();
    KILN_ASSIGN_OR_RETURN(info.model, ModelConfig::from_json(j.at("model")));
    if (j.contains("quantized")) {
      for (const auto& [name, type] : j.at("quantized").items()) {
        auto t = type.is_string() ? ggml_type_from_lower_name(type.get<std::string>()) : std::nullopt;
        if (!t || !is_kept_quant(*t))
          return invalid_argument(path + ": tensor '" + name + "' has format " + type.dump() +
                                  ", expected q8_0, q4_0 or q4_1");
        info.quantized[name] = *t;
      }
    }
  } catch (const json::exception& e) {
    return invalid_argument(path + ": " + e.what());
  }
  if (Status split = check_parallel(info.model, info.tp_size, info.pp_size); !split.ok())
    return invalid_argument(path + ": " + split.message());
  return info;
}

}  // namespace kiln
