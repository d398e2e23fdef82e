// Post-processors of tokenizer.json: TemplateProcessing (single-sequence
// template and its special_tokens), ByteLevel (offsets only, so ids are left
// alone) and Sequence. Others are refused by name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/json_util.h"

namespace kiln::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Rewrites the ids of one encoded sequence; special tokens only when `add_special_tokens`.
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const json& j, const std::string& path);

}  // namespace kiln::tok
