// One generated sequence's text as a client sees it, built as its token ids arrive: UTF-8-safe deltas
// (IncrementalDetokenizer, with the prompt's last ids as context so that a leading space shows), stop strings
// cut from the text (StopStringMatcher: a possible partial match is held back, the stop string itself never
// shows), and ids the tokenizer does not have skipped (an engine's vocabulary is often padded past the
// tokenizer's: Phi-3 has 32064 embedding rows and 32011 tokens; Hugging Face's decode skips such ids too).
// Fed whole or id by id, the text is the same. The text models (text_models.cpp) and typed text generation
// (text_generation.h, the OpenAI API) both use it.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

class TextStream {
 public:
  TextStream(std::shared_ptr<const Tokenizer> tok, std::span<const int32_t> prompt_ids, bool skip_special_tokens,
             std::vector<std::string> stops = {});

  struct Out {
    std::string text;     // new text, safe to show now (complete UTF-8 characters, no stop string)
    bool stopped = false; // a stop string completed: the sequence's text ends here
    size_t used = 0;      // ids taken; after a stop, the ids past the one that completed it are not
  };
  // Adds generated ids in order; stops taking them at the id that completes a stop string.
  Result<Out> add(std::span<const int32_t> ids);
  // The end of the sequence without a stop string: what was held back (a partial character shows as U+FFFD,
  // as a full decode would). Nothing after a stop.
  Result<std::string> finish();
  bool stopped() const { return matcher_.stopped(); }

  // The text of `id` were it the next token (for log-prob reports): the decode of the recent ids plus `id`
  // minus the decode of the recent ids, special tokens shown. Part of a multi-byte character shows as U+FFFD;
  // an id the tokenizer does not have gives "".
  std::string token_text(int32_t id) const;

 private:
  bool known(int32_t id) const { return id >= 0 && id < tok_->vocab_size(); }

  std::shared_ptr<const Tokenizer> tok_;
  IncrementalDetokenizer detok_;
  StopStringMatcher matcher_;
  std::deque<int32_t> recent_;      // the last known ids (prompt, then generated): token_text's context
  mutable std::string recent_text_; // decode of recent_ (valid while recent_valid_)
  mutable bool recent_valid_ = false;
};

}  // namespace kiln::server
