#include "model/engine.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"
#include "core/cpu_features.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/weight_names.h"

namespace kiln {

namespace fs = std::filesystem;
using nlohmann::json;

Status BuildConfig::finalize(const ModelConfig& m) {
  auto positive = [](int64_t v, const char* flag) -> Status {
    if (v <= 0) return invalid_argument(std::string(flag) + "=" + std::to_string(v) + " must be positive");
    return {};
  };
  KILN_RETURN_IF_ERROR(positive(max_batch_size, "--max_batch_size"));
  KILN_RETURN_IF_ERROR(positive(max_beam_width, "--max_beam_width"));
  if (max_beam_width > 64) return invalid_argument("--max_beam_width must be at most 64");
  KILN_RETURN_IF_ERROR(positive(max_input_len, "--max_input_len"));
  KILN_RETURN_IF_ERROR(positive(max_seq_len, "--max_seq_len"));
  if (max_batch_size > 65536) return invalid_argument("--max_batch_size must be at most 65536");
  if (max_input_len > max_seq_len)
    return invalid_argument("--max_input_len=" + std::to_string(max_input_len) + " exceeds --max_seq_len=" +
                            std::to_string(max_seq_len));
  if (max_seq_len > m.max_position_embeddings)
    return invalid_argument("--max_seq_len=" + std::to_string(max_seq_len) + " exceeds the model's max_position_embeddings=" +
                            std::to_string(m.max_position_embeddings));
  if (max_num_tokens == 0) max_num_tokens = std::min<int64_t>(8192, max_batch_size * max_input_len);
  KILN_RETURN_IF_ERROR(positive(max_num_tokens, "--max_num_tokens"));
  if (max_num_tokens > (1 << 20)) return invalid_argument("--max_num_tokens must be at most 1048576");
  KILN_RETURN_IF_ERROR(check_parallel(m, tp_size, pp_size));
  if (tokens_per_block <= 0 || (tokens_per_block & (tokens_per_block - 1)) != 0 || tokens_per_block > 1024)
    return invalid_argument("--tokens_per_block must be a power of two in [1, 1024]");
  if (gemm_plugin != "auto" && gemm_plugin != "disable") {
    auto g = dtype_from_name(gemm_plugin);
    if (!g) return invalid_argument("--gemm_plugin '" + gemm_plugin + "': expected auto, disable, float32, float16 or bfloat16");
    if (*g != dtype)
      return invalid_argument("--gemm_plugin " + gemm_plugin + " does not match the checkpoint dtype " + dtype_name(dtype) +
                              "; convert with --dtype " + gemm_plugin + " or pass --gemm_plugin auto");
  }
  if (backend != "cpu" && backend != "cuda") return invalid_argument("--backend '" + backend + "': expected cpu or cuda");
  kv_cache_dtype = dtype;
  return {};
}

json BuildConfig::to_json() const {
  return json{{"max_batch_size", max_batch_size}, {"max_input_len", max_input_len},   {"max_seq_len", max_seq_len},
              {"max_num_tokens", max_num_tokens}, {"max_beam_width", max_beam_width}, {"gemm_plugin", gemm_plugin},       {"tp_size", tp_size},
              {"pp_size", pp_size},               {"tokens_per_block", tokens_per_block}, {"dtype", dtype_name(dtype)},
              {"kv_cache_dtype", dtype_name(kv_cache_dtype)}, {"backend", backend}, {"quantized", quantized_json()},
              {"weight_format", weight_format()}};
}

json BuildConfig::quantized_json() const {
  json q = json::object();
  for (const auto& [name, type] : quantized) q[name] = ggml_type_lower_name(type);
  return q;
}

std::string BuildConfig::weight_format() const {
  if (quantized.empty()) return dtype_name(dtype);
  std::map<std::string, int> per_type;
  for (const auto& [name, type] : quantized) ++per_type[ggml_type_lower_name(type)];
  std::string s;
  for (const auto& [type, n] : per_type) s += (s.empty() ? "" : ", ") + type + " (" + std::to_string(n) + ")";
  return s + "; " + dtype_name(dtype) + " otherwise";
}

Result<BuildConfig> BuildConfig::from_json(const json& j) {
  BuildConfig b;
  try {
    b.max_batch_size = j.at("max_batch_size").get<int64_t>();
    b.max_input_len = j.at("max_input_len").get<int64_t>();
    b.max_seq_len = j.at("max_seq_len").get<int64_t>();
    b.max_num_tokens = j.at("max_num_tokens").get<int64_t>();
    b.max_beam_width = j.value("max_beam_width", 1);  // engines built before beam search: 1
    b.gemm_plugin = j.at("gemm_plugin").get<std::string>();
    b.tp_size = j.at("tp_size").get<int>();
    b.pp_size = j.at("pp_size").get<int>();
    b.tokens_per_block = j.at("tokens_per_block").get<int>();
    b.backend = j.at("backend").get<std::string>();
    auto dt = dtype_from_name(j.at("dtype").get<std::string>());
    auto kv = dtype_from_name(j.at("kv_cache_dtype").get<std::string>());
    if (!dt || !kv) return invalid_argument("build config: unknown dtype");
    b.dtype = *dt;
    b.kv_cache_dtype = *kv;
    if (j.contains("quantized")) {
      for (const auto& [name, type] : j.at("quantized").items()) {
        auto t = ggml_type_from_lower_name(type.get<std::string>());
        if (!t || !is_kept_quant(*t)) return invalid_argument("build config: tensor '" + name + "' has unknown format " + type.dump());
        b.quantized[name] = *t;
      }
    }
  } catch (const json::exception& e) {
    return invalid_argument(std::string("build config: ") + e.what());
  }
  return b;
}

namespace {

// The CUDA backend reads linear weights as they are ([out, in] row major: cuBLASLt's transposed A); the
// CPU's GEMMs want them packed in panels.
bool packs_for_cpu(const BuildConfig& b) { return b.backend == "cpu"; }

size_t stored_bytes(const WeightSpec& s, const BuildConfig& b, std::optional<GgmlType> quant) {
  if (quant) {
    if (s.kind == WeightKind::kLinear) return cpu::packed_qweight_bytes(*quant, s.shape[0], s.shape[1]);
    return static_cast<size_t>(s.shape[0]) * *ggml_row_bytes(*quant, s.shape[1]);
  }
  const DType t = s.kind == WeightKind::kVector ? DType::kF32 : b.dtype;
  if (s.kind == WeightKind::kLinear && packs_for_cpu(b)) return cpu::packed_weight_bytes(t, s.shape[0], s.shape[1]);
  return static_cast<size_t>(s.shape.numel()) * dtype_size(t);
}

std::optional<GgmlType> quant_of(const BuildConfig& b, const std::string& name) {
  auto it = b.quantized.find(name);
  return it == b.quantized.end() ? std::nullopt : std::optional<GgmlType>(it->second);
}

// How an engine tensor is stored: element type and layout.
std::pair<DType, std::string> storage_of(const WeightSpec& s, const BuildConfig& b, std::optional<GgmlType> quant) {
  if (quant) return {DType::kU8, s.kind == WeightKind::kLinear ? kCpuQuantLinearLayout : kGgmlRowsLayout};
  if (s.kind == WeightKind::kVector) return {DType::kF32, "plain"};
  return {b.dtype, s.kind == WeightKind::kLinear && packs_for_cpu(b) ? kCpuLinearLayout : "plain"};
}

// Tensors of a rank's engine file: its checkpoint's, plus (one rank) a packed LM head made from the embedding when
// tied; a rank of several has its own LM head tensor already.
std::vector<WeightSpec> engine_specs(const ModelConfig& m, const RankLayout& r) {
  std::vector<WeightSpec> specs = rank_weight_specs(m, r);
  if (r.single() && m.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {m.vocab_size, m.hidden_size}, WeightKind::kLinear, {}});
  return specs;
}

std::string engine_rank_file(const std::string& dir, int rank) {
  return (fs::path(dir) / ("rank" + std::to_string(rank) + ".engine")).string();
}

}  // namespace

std::string human_bytes(uint64_t b) {
  std::ostringstream os;
  os.precision(3);
  if (b >= (1ull << 30)) os << b / double(1ull << 30) << " GiB";
  else if (b >= (1ull << 20)) os << b / double(1ull << 20) << " MiB";
  else os << b / 1024.0 << " KiB";
  return os.str();
}

std::string MemoryPlan::to_string() const {
  std::ostringstream os;
  if (ranks > 1) os << "per rank (rank 0 of " << ranks << "):\n";
  os << "weights:            " << human_bytes(weights_bytes) << " (" << weights_bytes << " bytes)\n"
     << "KV cache per token: " << kv_bytes_per_token << " bytes\n"
     << "KV budget:          " << human_bytes(kv_budget_bytes) << " -> " << kv_tokens << " tokens\n"
     << "full batch needs:   " << tokens_for_full_batch << " tokens (max_batch_size x max_seq_len)"
     << (kv_tokens >= tokens_for_full_batch ? ", fits" : ", does NOT fit: requests will wait for KV blocks") << "\n";
  return os.str();
}

MemoryPlan plan_memory(const ModelConfig& m, const BuildConfig& b, double kv_fraction) {
  MemoryPlan p;
  const RankLayout r0 = rank_layout(m, b.tp_size, b.pp_size, 0);  // the first rank holds the most layers
  const ModelConfig local = rank_model(m, r0);
  p.ranks = r0.world_size();
  for (const WeightSpec& s : engine_specs(m, r0)) p.weights_bytes += stored_bytes(s, b, quant_of(b, s.name));
  p.kv_bytes_per_token = 2ull * local.num_layers * local.num_kv_heads * local.head_dim * dtype_size(b.kv_cache_dtype);
  uint64_t avail = available_host_memory();
  uint64_t free_after = avail > p.weights_bytes ? avail - p.weights_bytes : 0;
  p.kv_budget_bytes = static_cast<uint64_t>(static_cast<double>(free_after) * kv_fraction);
  p.kv_tokens = p.kv_bytes_per_token ? p.kv_budget_bytes / p.kv_bytes_per_token : 0;
  p.tokens_for_full_batch = static_cast<uint64_t>(b.max_batch_size) * b.max_seq_len;
  return p;
}

namespace {

// Packs one rank's checkpoint file into its engine file.
Status build_rank(const std::string& checkpoint_dir, const std::string& output_dir, const ModelConfig& m,
                  const BuildConfig& build, int rank) {
  const std::string rank_file = checkpoint_rank_file(checkpoint_dir, rank);
  KILN_ASSIGN_OR_RETURN(SafetensorsFile ckpt, SafetensorsFile::open(rank_file));
  EngineFileWriter writer;
  std::vector<HostBuffer> packed;  // keeps packed data alive until write()
  for (const WeightSpec& s : engine_specs(m, rank_layout(m, build.tp_size, build.pp_size, rank))) {
    const std::string& src_name = s.hf_sources.empty() ? std::string("embed.weight") : s.name;
    const SafetensorsEntry* e = ckpt.find(src_name);
    if (!e) return not_found(rank_file + ": tensor '" + src_name + "' is missing; re-run `kiln convert`");
    const std::optional<GgmlType> quant = quant_of(build, s.name);
    if (quant) {
      // Checkpoint rows of GGUF blocks: U8 [rows, row bytes].
      const Shape want_shape{s.shape[0], static_cast<int64_t>(*ggml_row_bytes(*quant, s.shape[1]))};
      if (e->dtype != DType::kU8 || e->shape != want_shape)
        return invalid_argument(rank_file + ": tensor '" + src_name + "' is " + dtype_name(e->dtype) + " " +
                                e->shape.to_string() + ", expected " + ggml_type_lower_name(*quant) + " rows uint8 " +
                                want_shape.to_string() + "; re-run `kiln convert`");
      if (s.kind == WeightKind::kLinear) {
        packed.emplace_back(cpu::packed_qweight_bytes(*quant, s.shape[0], s.shape[1]));
        cpu::pack_qweight(e->data, *quant, s.shape[0], s.shape[1], packed.back().data());
        writer.add({s.name, DType::kU8, s.shape, kCpuQuantLinearLayout, packed.back().data(), packed.back().size()});
      } else {
        writer.add({s.name, DType::kU8, s.shape, kGgmlRowsLayout, e->data, e->nbytes});
      }
      continue;
    }
    const DType want = s.kind == WeightKind::kVector ? DType::kF32 : build.dtype;
    if (e->dtype != want || e->shape != s.shape)
      return invalid_argument(rank_file + ": tensor '" + src_name + "' is " + dtype_name(e->dtype) + " " +
                              e->shape.to_string() + ", expected " + dtype_name(want) + " " + s.shape.to_string() +
                              "; re-run `kiln convert`");
    if (s.kind == WeightKind::kLinear && packs_for_cpu(build)) {
      packed.emplace_back(cpu::packed_weight_bytes(want, s.shape[0], s.shape[1]));  // 64-byte aligned
      cpu::pack_weight(e->data, e->dtype, s.shape[0], s.shape[1], want, packed.back().data());
      writer.add({s.name, want, s.shape, kCpuLinearLayout, packed.back().data(), packed.back().size()});
    } else {
      writer.add({s.name, want, s.shape, "plain", e->data, e->nbytes});
    }
  }
  return writer.write(engine_rank_file(output_dir, rank));
}

}  // namespace

Status build_engine(const std::string& checkpoint_dir, const std::string& output_dir, BuildConfig build,
                    std::string* plan_text) {
  KILN_ASSIGN_OR_RETURN(CheckpointInfo info, read_checkpoint_info(checkpoint_dir));
  // The checkpoint's split rules (convert made it); 0 = not given.
  if ((build.tp_size != 0 && build.tp_size != info.tp_size) || (build.pp_size != 0 && build.pp_size != info.pp_size))
    return invalid_argument("--tp_size " + std::to_string(build.tp_size) + " --pp_size " + std::to_string(build.pp_size) +
                            ": the checkpoint was converted for tp_size " + std::to_string(info.tp_size) + ", pp_size " +
                            std::to_string(info.pp_size) + "; run `kiln convert` again with the sizes you want");
  build.tp_size = info.tp_size;
  build.pp_size = info.pp_size;
  build.dtype = info.dtype;
  KILN_RETURN_IF_ERROR(build.finalize(info.model));
  const ModelConfig& m = info.model;
  // Quantized checkpoint tensors stay quantized; a tied LM head takes the embedding's format.
  build.quantized.clear();
  for (const WeightSpec& s : engine_specs(m, rank_layout(m, 1, 1, 0))) {
    const std::string& src_name = s.hf_sources.empty() ? std::string("embed.weight") : s.name;
    if (auto it = info.quantized.find(src_name); it != info.quantized.end()) build.quantized[s.name] = it->second;
  }
  if (!build.quantized.empty() && build.tp_size * build.pp_size != 1)
    return unimplemented("block-quantized weights are single-rank");
  if (!build.quantized.empty() && build.backend != "cpu")
    return unimplemented("the checkpoint keeps " + build.weight_format() + " weights, which only the cpu backend runs; "
                         "for --backend " + build.backend + ", convert with --dtype float16 or bfloat16 (dequantizes)");
  MemoryPlan plan = plan_memory(m, build, 0.5);
  if (plan_text) *plan_text = plan.to_string();

  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) return invalid_argument("--output_dir " + output_dir + ": " + ec.message());
  for (int rank = 0; rank < build.tp_size * build.pp_size; ++rank)
    KILN_RETURN_IF_ERROR(build_rank(checkpoint_dir, output_dir, m, build, rank));
  json cfg = {{"kiln_engine_format_version", kEngineFormatVersion},
              {"kiln_version", KILN_VERSION},
              {"model", m.to_json()},
              {"build", build.to_json()},
              {"plan", {{"weights_bytes", plan.weights_bytes}, {"kv_bytes_per_token", plan.kv_bytes_per_token}}}};
  const std::string cfg_path = (fs::path(output_dir) / "config.json").string();
  std::ofstream out(cfg_path + ".tmp", std::ios::trunc);
  out << cfg.dump(2) << "\n";
  out.close();
  if (!out) return data_loss(cfg_path + ": write failed");
  fs::rename(cfg_path + ".tmp", cfg_path, ec);
  if (ec) return data_loss(cfg_path + ": " + ec.message());
  return copy_tokenizer_files(checkpoint_dir, output_dir).status();  // the engine dir carries its tokenizer
}

Result<Engine> load_engine(const std::string& dir, int rank) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  const std::string rebuild = "; rebuild it with `kiln build`";
  if (!fs::is_directory(dir)) return not_found("engine dir " + dir + " does not exist");
  if (!fs::exists(cfg_path)) return not_found(dir + " has no config.json; is it an engine dir made by `kiln build`?");
  KILN_ASSIGN_OR_RETURN(json j, read_json_file(cfg_path));
  if (!j.is_object() || !j.contains("kiln_engine_format_version"))
    return invalid_argument(cfg_path + " is not a Kiln engine config (a checkpoint dir? run `kiln build` on it)");
  if (j["kiln_engine_format_version"] != kEngineFormatVersion)
    return failed_precondition(dir + ": engine format version " + j["kiln_engine_format_version"].dump() + " (built by kiln " +
                               j.value("kiln_version", "?") + "), this kiln " KILN_VERSION " loads version " +
                               std::to_string(kEngineFormatVersion) + rebuild);
  Engine engine;
  if (!j.contains("model") || !j.contains("build")) return invalid_argument(cfg_path + ": missing model or build section" + rebuild);
  KILN_ASSIGN_OR_RETURN(engine.model, ModelConfig::from_json(j["model"]));
  KILN_ASSIGN_OR_RETURN(engine.build, BuildConfig::from_json(j["build"]));
  const int world = engine.build.tp_size * engine.build.pp_size;
  if (engine.build.tp_size < 1 || engine.build.pp_size < 1 || rank < 0 || rank >= world)
    return invalid_argument(dir + ": rank " + std::to_string(rank) + " of an engine of tp_size " +
                            std::to_string(engine.build.tp_size) + " x pp_size " + std::to_string(engine.build.pp_size));
  KILN_RETURN_IF_ERROR(check_parallel(engine.model, engine.build.tp_size, engine.build.pp_size));
  engine.layout = rank_layout(engine.model, engine.build.tp_size, engine.build.pp_size, rank);
  const std::string rank0 = engine_rank_file(dir, rank);
  if (!fs::exists(rank0)) return not_found(dir + " has no " + fs::path(rank0).filename().string() + rebuild);
  KILN_ASSIGN_OR_RETURN(engine.file, EngineFile::open(rank0));
  if (const fs::path tuning = fs::path(dir) / kGemmTuningFile; fs::exists(tuning)) {
    std::ifstream in(tuning, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) return data_loss(tuning.string() + ": cannot be read");
    engine.gemm_tuning = text.str();
  }
  for (const WeightSpec& s : engine_specs(engine.model, engine.layout)) {
    const EngineTensor* t = engine.file->find(s.name);
    if (!t) return data_loss(rank0 + ": tensor '" + s.name + "' is missing" + rebuild);
    const std::optional<GgmlType> quant = quant_of(engine.build, s.name);
    const auto [want, layout] = storage_of(s, engine.build, quant);
    if (t->dtype != want || t->shape != s.shape || t->layout != layout ||
        t->nbytes != stored_bytes(s, engine.build, quant))
      return data_loss(rank0 + ": tensor '" + s.name + "' is " + dtype_name(t->dtype) + " " + t->shape.to_string() + " " +
                       t->layout + " (" + std::to_string(t->nbytes) + " bytes), expected " + dtype_name(want) + " " +
                       s.shape.to_string() + " " + layout + rebuild);
  }
  return engine;
}

}  // namespace kiln
