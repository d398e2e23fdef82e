// The text-level models of a TensorRT-LLM model repository, served natively (no Python): `preprocessing`
// (text -> input ids), `postprocessing` (ids -> text), and the text-in/text-out pipeline used for both the
// `ensemble` (platform "ensemble": preprocessing -> tensorrt_llm -> postprocessing) and `tensorrt_llm_bls`.
// Tensor names, types and dims are those of the tensorrtllm_backend's all_models/inflight_batcher_llm configs
// (docs/PROTOCOL.md); older and newer spellings (min_length/min_tokens, random_seed/seed) are both taken.
//
// The pipeline model does not chain three models: it tokenizes itself, calls the tensorrt_llm model through
// ServerCore::infer with the token tensors an ensemble would send (so that model's checks, limits, statistics
// and metrics apply unchanged), and detokenizes with TextStream (text_stream.h): streamed deltas are complete
// UTF-8 and concatenate to the non-streamed text. Stop words given as text are matched on that text, not as
// token sequences. The target model is looked up at call time, so load order does not matter.
// text_generation_model() hands the same tokenizer, settings and tensorrt_llm model to typed callers (the
// OpenAI API, through text_generation.h).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "server/model.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

enum class TextModelKind { kPreprocessing, kPostprocessing, kEnsemble, kBls };

// Which text model a config describes, or nullopt: platform "ensemble"; otherwise (backend "python" or
// "kiln_text") the config's tensor names (QUERY -> preprocessing, TOKENS_BATCH -> postprocessing,
// text_input -> BLS), else the folder name (preprocessing, postprocessing, tensorrt_llm_bls).
std::optional<TextModelKind> text_model_kind(const inference::ModelConfig& config, const std::string& name);

// Loads the text model in `repo`/`name`. The pipeline models keep `core` to call their tensorrt_llm model;
// the core must outlive them (it shuts its models down before it goes).
Result<std::shared_ptr<Model>> load_text_model(ServerCore& core, const std::string& repo,
                                               const std::string& name,
                                               std::shared_ptr<inference::ModelConfig> config);

// A model's `tokenizer_dir` parameter: the path as given when it is a folder; else relative to the model's
// folder (also a path written for another machine, ".../<name>/<rest>", by its part after the model's name).
Result<std::string> resolve_tokenizer_dir(const std::string& model_dir, const std::string& name,
                                          const std::optional<std::string>& tokenizer_dir);

// Tokenizers are shared by every model that names the same folder (loaded once).
Result<std::shared_ptr<const Tokenizer>> shared_tokenizer(const std::string& dir);

class TrtllmModel;

// A text-generation model (ensemble or tensorrt_llm_bls) for typed callers (the OpenAI API, through
// text_generation.h): its tokenizer and settings, and the tensorrt_llm model it runs on, looked up now.
struct TextModelInfo {
  std::string name;
  std::shared_ptr<const Tokenizer> tok;
  bool add_special_tokens = false;  // when a prompt's text is encoded (the preprocessing model's setting)
  bool skip_special_tokens = true;  // when the output is decoded (the postprocessing model's setting)
  std::shared_ptr<TrtllmModel> target;
  // Counts one call in the text model's statistics (the tensorrt_llm model counts its own).
  std::function<void(bool ok, uint64_t duration_ns)> record;
};

// NotFound for an unknown model and for a model that does not take text (tensorrt_llm, preprocessing,
// postprocessing); Unavailable when its tensorrt_llm model is not loaded.
Result<TextModelInfo> text_generation_model(ServerCore& core, const std::string& name);

}  // namespace kiln::server
