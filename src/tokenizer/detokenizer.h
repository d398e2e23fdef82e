// Streaming text output: IncrementalDetokenizer turns generated ids into text
// deltas one token at a time; StopStringMatcher finds stop strings in the
// streamed text, holding back what could still become one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

// The usual prefix/read-offset method: the text of ids[prefix:] is compared
// with the text of ids[prefix:read]; the difference is emitted once it is
// longer and does not end in U+FFFD (an incomplete UTF-8 character from byte
// fallback or byte-level pieces). A few prompt ids sit in front as context, so
// that a SentencePiece leading space of the first output token is kept.
// The concatenation of all deltas and finish() equals the decode of the
// generated ids (with the same skip_special_tokens) where the decoder's output
// for a window does not depend on what lies before it.
class IncrementalDetokenizer {
 public:
  static constexpr size_t kPromptContext = 5;

  IncrementalDetokenizer(std::shared_ptr<const Tokenizer> tok, std::span<const int32_t> prompt_ids,
                         bool skip_special_tokens);

  // Adds one generated token; returns the new text delta (possibly empty).
  // Never returns a delta that ends mid UTF-8 character or that would change.
  Result<std::string> add(int32_t id);
  // Flushes whatever is held back (may contain U+FFFD if the stream ended
  // mid-character, as a full decode would).
  Result<std::string> finish();

 private:
  std::shared_ptr<const Tokenizer> tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // prompt context, then the generated ids
  size_t prefix_ = 0;
  size_t read_ = 0;
};

// Stop-string matching on streamed text. push() returns the text safe to emit
// now, holding back any suffix that could be the start of a stop string; when
// a stop string completes, the text before it is returned with stopped=true
// and matched set (the stop string itself is not emitted). After a stop,
// push() and flush() return nothing. Empty stop strings are ignored. When
// several stops match, the one starting earliest wins (the longest on a tie).
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  struct Out {
    std::string text;
    bool stopped = false;
    std::string matched;
  };
  Out push(std::string_view delta);
  // Held-back text when the stream ends without a stop.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace kiln
