#include "tokenizer/detokenizer.h"

#include <algorithm>
#include <utility>

namespace kiln {

namespace {

bool ends_with_replacement(const std::string& s) {
  static constexpr std::string_view kFffd = "\xEF\xBF\xBD";
  return s.size() >= kFffd.size() && std::string_view(s).substr(s.size() - kFffd.size()) == kFffd;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(std::shared_ptr<const Tokenizer> tok,
                                               std::span<const int32_t> prompt_ids,
                                               bool skip_special_tokens)
    : tok_(std::move(tok)), skip_special_(skip_special_tokens) {
  size_t n = std::min(prompt_ids.size(), kPromptContext);
  ids_.assign(prompt_ids.end() - static_cast<std::ptrdiff_t>(n), prompt_ids.end());
  prefix_ = 0;
  read_ = ids_.size();
}

Result<std::string> IncrementalDetokenizer::add(int32_t id) {
  ids_.push_back(id);
  std::span<const int32_t> all(ids_);
  KILN_ASSIGN_OR_RETURN(std::string text_old, tok_->decode(all.subspan(prefix_, read_ - prefix_), skip_special_));
  KILN_ASSIGN_OR_RETURN(std::string text_new, tok_->decode(all.subspan(prefix_), skip_special_));
  if (text_new.size() > text_old.size() && !ends_with_replacement(text_new) &&
      text_new.compare(0, text_old.size(), text_old) == 0) {
    std::string delta = text_new.substr(text_old.size());
    prefix_ = read_;
    read_ = ids_.size();
    return delta;
  }
  return std::string();
}

Result<std::string> IncrementalDetokenizer::finish() {
  if (read_ >= ids_.size()) return std::string();
  std::span<const int32_t> all(ids_);
  KILN_ASSIGN_OR_RETURN(std::string text_old, tok_->decode(all.subspan(prefix_, read_ - prefix_), skip_special_));
  KILN_ASSIGN_OR_RETURN(std::string text_new, tok_->decode(all.subspan(prefix_), skip_special_));
  prefix_ = read_ = ids_.size();
  if (text_new.size() <= text_old.size()) return std::string();
  // When the window's text no longer starts with what was emitted, the best
  // left is the part past the emitted length.
  return text_new.substr(text_old.size());
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

StopStringMatcher::Out StopStringMatcher::push(std::string_view delta) {
  Out out;
  if (stopped_) return out;
  pending_.append(delta);
  // Earliest complete stop (longest on a tie).
  size_t best_pos = std::string::npos;
  const std::string* best = nullptr;
  for (const auto& s : stops_) {
    size_t p = pending_.find(s);
    if (p == std::string::npos) continue;
    if (p < best_pos || (p == best_pos && s.size() > best->size())) {
      best_pos = p;
      best = &s;
    }
  }
  if (best) {
    out.text = pending_.substr(0, best_pos);
    out.stopped = true;
    out.matched = *best;
    stopped_ = true;
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop.
  size_t hold = 0;
  for (const auto& s : stops_) {
    size_t max_k = std::min(s.size() - 1, pending_.size());
    for (size_t k = max_k; k > hold; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  out.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringMatcher::flush() {
  if (stopped_) return std::string();
  return std::exchange(pending_, std::string());
}

}  // namespace kiln
