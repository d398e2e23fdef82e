#include <cstdio>
#include <map>

#include "cli/args.h"
#include "cli/commands.h"
#include "model/checkpoint.h"
#include "model/gguf_import.h"

namespace kiln::cli {

int cmd_convert(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"model_dir", true, "Hugging Face model folder (config.json + safetensors)"},
      {"gguf", true, "a GGUF file (llama.cpp's format) instead of --model_dir; its tokenizer is written too"},
      {"output_dir", true, "checkpoint dir to write"},
      {"dtype", true, "float32 | float16 | bfloat16 (default: the model's own dtype; with --gguf, given: "
                      "dequantize every weight, else Q8_0/Q4_0/Q4_1 stay quantized)"},
      {"tp_size", true, "tensor-parallel ranks (1)"},
      {"pp_size", true, "pipeline-parallel ranks (1)"},
      {"random_weights", false, "draw weights at init scale instead of reading them (needs --config)"},
      {"config", true, "HF-style config.json / *.shape.json for --random_weights"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("convert", "Reads a Hugging Face checkpoint (or a GGUF file) and writes a Kiln checkpoint dir.", specs).c_str(), stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    if (auto gguf = a.get("gguf")) {
      for (const char* other : {"model_dir", "random_weights", "config"})
        if (a.has(other)) return invalid_argument(std::string("--gguf replaces --") + other);
      KILN_ASSIGN_OR_RETURN(int64_t tp, a.get_int("tp_size", 1));
      KILN_ASSIGN_OR_RETURN(int64_t pp, a.get_int("pp_size", 1));
      GgufConvertOptions g;
      g.tp_size = static_cast<int>(tp);
      g.pp_size = static_cast<int>(pp);
      g.gguf_path = *gguf;
      KILN_ASSIGN_OR_RETURN(g.output_dir, a.require("output_dir"));
      if (auto d = a.get("dtype")) {
        auto t = dtype_from_name(*d);
        if (!t || (*t != DType::kF32 && *t != DType::kF16 && *t != DType::kBF16))
          return invalid_argument("--dtype '" + *d + "': expected float32, float16 or bfloat16");
        g.dtype = *t;
      }
      KILN_RETURN_IF_ERROR(convert_gguf(g));
      KILN_ASSIGN_OR_RETURN(CheckpointInfo info, read_checkpoint_info(g.output_dir));
      std::string formats = dtype_name(info.dtype);
      std::map<std::string, int> per;
      for (const auto& [name, type] : info.quantized) ++per[ggml_type_lower_name(type)];
      for (const auto& [type, n] : per) formats += ", " + type + " (" + std::to_string(n) + " tensors)";
      std::printf("kiln convert: wrote %s (%s, %s) with its tokenizer\n", g.output_dir.c_str(),
                  info.model.architecture.c_str(), formats.c_str());
      return {};
    }
    ConvertOptions o;
    o.random_weights = a.has("random_weights");
    if (o.random_weights) {
      KILN_ASSIGN_OR_RETURN(o.config_path, a.require("config"));
      if (!a.has("dtype")) return invalid_argument("--random_weights needs --dtype");
    } else {
      if (a.has("config")) return invalid_argument("--config is only used with --random_weights");
      KILN_ASSIGN_OR_RETURN(o.model_dir, a.require("model_dir"));
    }
    KILN_ASSIGN_OR_RETURN(o.output_dir, a.require("output_dir"));
    KILN_ASSIGN_OR_RETURN(int64_t tp, a.get_int("tp_size", 1));
    KILN_ASSIGN_OR_RETURN(int64_t pp, a.get_int("pp_size", 1));
    o.tp_size = static_cast<int>(tp);
    o.pp_size = static_cast<int>(pp);
    if (auto d = a.get("dtype")) {
      auto t = dtype_from_name(*d);
      if (!t || (*t != DType::kF32 && *t != DType::kF16 && *t != DType::kBF16))
        return invalid_argument("--dtype '" + *d + "': expected float32, float16 or bfloat16");
      o.dtype = *t;
    } else {
      // Default: keep the dtype the model was published in.
      KILN_ASSIGN_OR_RETURN(auto cfg, read_json_file(o.model_dir + "/config.json"));
      KILN_ASSIGN_OR_RETURN(ModelConfig m, ModelConfig::from_hf(cfg, nullptr));
      o.dtype = m.weights_dtype;
    }
    KILN_RETURN_IF_ERROR(convert_hf_checkpoint(o));
    std::printf("kiln convert: wrote %s (%s)\n", o.output_dir.c_str(), dtype_name(o.dtype));
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("convert", s);
}

}  // namespace kiln::cli
