// An engine dir loaded for running: one rank (its backend and LlamaModel) or every rank of a tensor/pipeline
// parallel engine (RankGroup). What `kiln run`, `serve`, `bench` and `chat` start from.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "model/engine.h"
#include "model/llama_model.h"
#include "model/model_runner.h"

namespace kiln {

struct LoadedModel {
  Engine engine;                        // rank 0's: the model, build config and layout
  std::unique_ptr<Backend> backend;     // one rank only
  std::unique_ptr<LlamaModel> model;    // one rank only
  std::unique_ptr<ModelRunner> runner;  // what the executor drives (declared last: goes first)
};

Result<LoadedModel> load_model(const std::string& engine_dir);

}  // namespace kiln
