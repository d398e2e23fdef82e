// Flags shared by the commands that run the executor (run, bench, serve): the executor's configuration
// (the tensorrt_llm model's parameters) and per-request decoding settings (its input tensor names).
#pragma once

#include <vector>

#include "cli/args.h"
#include "executor/executor.h"

namespace kiln::cli {

// "1,2,3" -> {1, 2, 3}; errors name the flag and the bad item.
Result<std::vector<int32_t>> parse_token_ids(const std::string& flag, const std::string& text);

std::vector<FlagSpec> executor_flag_specs();
Result<ExecutorConfig> executor_config_from(const Args& a);

std::vector<FlagSpec> decoding_flag_specs();
// A request with every decoding field set from the flags (input_ids left empty).
Result<Request> request_template_from(const Args& a);

}  // namespace kiln::cli
