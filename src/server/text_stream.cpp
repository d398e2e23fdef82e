#include "server/text_stream.h"

#include <utility>

namespace kiln::server {

TextStream::TextStream(std::shared_ptr<const Tokenizer> tok, std::span<const int32_t> prompt_ids,
                       bool skip_special_tokens, std::vector<std::string> stops)
    : tok_(std::move(tok)), detok_(tok_, prompt_ids, skip_special_tokens), matcher_(std::move(stops)) {
  const size_t n = std::min(prompt_ids.size(), IncrementalDetokenizer::kPromptContext);
  for (size_t i = prompt_ids.size() - n; i < prompt_ids.size(); ++i)
    if (known(prompt_ids[i])) recent_.push_back(prompt_ids[i]);
}

Result<TextStream::Out> TextStream::add(std::span<const int32_t> ids) {
  Out out;
  for (int32_t id : ids) {
    if (matcher_.stopped()) break;
    ++out.used;
    if (!known(id)) continue;
    recent_.push_back(id);
    if (recent_.size() > IncrementalDetokenizer::kPromptContext) recent_.pop_front();
    recent_valid_ = false;
    KILN_ASSIGN_OR_RETURN(std::string delta, detok_.add(id));
    if (delta.empty()) continue;
    StopStringMatcher::Out o = matcher_.push(delta);
    out.text += o.text;
    if (o.stopped) out.stopped = true;
  }
  return out;
}

Result<std::string> TextStream::finish() {
  if (matcher_.stopped()) return std::string();
  KILN_ASSIGN_OR_RETURN(std::string rest, detok_.finish());
  StopStringMatcher::Out o = matcher_.push(rest);
  if (o.stopped) return o.text;
  return o.text + matcher_.flush();
}

std::string TextStream::token_text(int32_t id) const {
  if (!known(id)) return "";
  std::vector<int32_t> ids(recent_.begin(), recent_.end());
  if (!recent_valid_) {
    auto t = tok_->decode(ids, /*skip_special_tokens=*/false);
    recent_text_ = t.ok() ? *t : "";
    recent_valid_ = true;
  }
  ids.push_back(id);
  auto full = tok_->decode(ids, false);
  if (full.ok() && full->size() >= recent_text_.size() && full->compare(0, recent_text_.size(), recent_text_) == 0)
    return full->substr(recent_text_.size());
  auto alone = tok_->decode(std::span<const int32_t>(&id, 1), false);  // the context merged with it: the token alone
  return alone.ok() ? *alone : "";
}

}  // namespace kiln::server
