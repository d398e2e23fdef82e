// Decoders of tokenizer.json: ByteLevel, Metaspace, Replace, ByteFallback,
// Fuse, Strip and Sequence. Others are refused by name.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/json_util.h"

namespace kiln::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Hugging Face's decode_chain: rewrites the list of token strings.
  virtual Status decode_chain(std::vector<std::string>& tokens) const = 0;
};

Result<std::unique_ptr<Decoder>> parse_decoder(const json& j, const std::string& path);

}  // namespace kiln::tok
