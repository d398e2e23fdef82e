// Pre-tokenizers of tokenizer.json: Split, ByteLevel, Metaspace, Digits,
// Punctuation, Whitespace, WhitespaceSplit and Sequence. Others are refused by
// name. Also the working set of pieces that encoding passes along, and the
// GPT-2 byte <-> character table that ByteLevel uses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"

namespace kiln::tok {

// One piece of the input on its way to the model: a slice of Workspace::arena.
struct Piece {
  size_t off;
  size_t len;
  int32_t id;     // >= 0: an added token, already final
  bool at_start;  // begins at byte 0 of the original input
};

// Per-call scratch space, reused by the thread that encodes (no allocation per piece).
struct Workspace {
  std::string arena;
  std::vector<Piece> pieces;
  std::vector<Piece> next;
  std::vector<MatchSpan> matches;
  std::vector<Span> ranges;
  std::string tmp;

  std::string_view view(const Piece& p) const { return {arena.data() + p.off, p.len}; }
  // Appends `s` to the arena and returns its offset.
  size_t add(std::string_view s) {
    size_t off = arena.size();
    arena.append(s);
    return off;
  }
  void clear() {
    arena.clear();
    pieces.clear();
    next.clear();
  }
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
Result<SplitBehavior> parse_split_behavior(const json& obj, const std::string& path, std::string_view key,
                                           bool has_default, SplitBehavior dflt);

// NormalizedString::split: turns matches and gaps into the ranges to keep.
void apply_split_behavior(const std::vector<MatchSpan>& matches, SplitBehavior behavior,
                          std::vector<Span>& out);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits / rewrites ws.pieces (pieces with an id pass through unchanged).
  virtual Status apply(Workspace& ws) const = 0;
};

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& j, const std::string& path);

// GPT-2's byte-level alphabet: byte b is shown as one printable character.
struct ByteLevelTable {
  char utf8[256][2];
  uint8_t len[256];
  int16_t byte_of[512];  // code point -> byte, -1 if none
};
const ByteLevelTable& byte_level_table();

}  // namespace kiln::tok
