// GGUF file -> Kiln checkpoint dir (`kiln convert --gguf FILE --output_dir CKPT [--dtype ...]`).
//
// The model config comes from the file's metadata (Llama-family architectures: llama, qwen2, qwen3), the
// weights are renamed and fused into Kiln's canonical tensors, and the tokenizer metadata becomes the
// Hugging Face tokenizer files that Kiln's tokenizer reads (tokenizer.json, tokenizer_config.json with the
// chat template, generation_config.json), written into the checkpoint dir, which is then also a
// --tokenizer_dir.
//
// Weights: Q8_0, Q4_0 and Q4_1 linear layers and embeddings stay quantized (rows of GGUF blocks) unless a
// --dtype asks for floats; every other type (F16, BF16, Q5_*, Q*_K, ...) is dequantized exactly to the
// float dtype (--dtype, else the file's own float type, else bfloat16). llama-architecture files store the
// rows of q and k permuted for llama.cpp's interleaved RoPE; they are put back in Hugging Face's order.
#pragma once

#include <optional>
#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace kiln {

struct GgufConvertOptions {
  std::string gguf_path;
  std::string output_dir;
  std::optional<DType> dtype;  // set: dequantize every weight to this float type
  // Split over ranks (checkpoint.h's ConvertOptions); float weights only: with block-quantized tensors kept,
  // give `dtype` to dequantize them first.
  int tp_size = 1;
  int pp_size = 1;
};

Status convert_gguf(const GgufConvertOptions& options);

}  // namespace kiln
