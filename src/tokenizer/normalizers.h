// Normalizers of tokenizer.json: NFC, NFD, NFKC, NFKD, Lowercase, Strip,
// Prepend, Replace and Sequence. Others are refused by name.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "tokenizer/json_util.h"

namespace kiln::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Normalizes `s` (valid UTF-8) in place. `at_start` says whether the text
  // still begins at byte 0 of the original input; a normalizer that drops the
  // leading characters clears it (Metaspace's prepend_scheme "first" reads it).
  virtual Status normalize(std::string& s, bool& at_start) const = 0;
};

// Parses the "normalizer" member (`j` must not be null); `path` names it in errors.
Result<std::unique_ptr<Normalizer>> parse_normalizer(const json& j, const std::string& path);

}  // namespace kiln::tok
