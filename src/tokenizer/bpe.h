// The BPE model of tokenizer.json: byte-level and SentencePiece-style
// (byte_fallback) vocabularies, merges as "a b" strings or [a, b] pairs,
// ignore_merges, unk_token / fuse_unk, continuing_subword_prefix and
// end_of_word_suffix. Dropout other than null or 0 is refused.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tokenizer/hash_maps.h"
#include "tokenizer/json_util.h"

namespace kiln::tok {

class Bpe {
 public:
  // `model` is tokenizer.json's "model" object; `path` names it in errors.
  static Result<std::unique_ptr<Bpe>> from_json(const json& model, const std::string& path);

  // Appends the ids of one pre-tokenized word (valid UTF-8) to `out`.
  Status tokenize(std::string_view word, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const { return vocab_.find(token); }
  // The vocab string of `id`, or nullptr when no entry has that id.
  const std::string* id_to_token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size() || !has_r_[id]) return nullptr;
    return &vocab_r_[id];
  }
  size_t vocab_entries() const { return vocab_.size(); }
  int32_t max_id() const { return static_cast<int32_t>(vocab_r_.size()) - 1; }
  size_t num_merges() const { return merges_.size(); }

 private:
  Bpe() = default;
  Status merge_word(std::string_view word, std::vector<int32_t>& out) const;
  // merge_word through the word cache.
  Status merge_cached(std::string_view word, std::vector<int32_t>& out) const;

  StringIdMap vocab_;
  std::vector<std::string> vocab_r_;
  std::vector<bool> has_r_;
  MergeMap merges_;
  std::string prefix_;  // continuing_subword_prefix ("" = none)
  std::string suffix_;  // end_of_word_suffix ("" = none)
  std::optional<std::string> unk_token_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  // SentencePiece-style vocabularies: when no merge can produce a token with
  // "▁" right after another character, a word never merges across such a
  // spot, so it is split there and each part goes through the cache alone
  // (same ids, far fewer merges for space-joined text without a pre-tokenizer).
  bool split_at_metaspace_ = false;
  int32_t byte_ids_[256];            // id of "<0xAB>", -1 if absent
  std::vector<int32_t> small_char_;  // code point < 0x800 -> id of that one-character token, -1 if absent
  mutable WordCache cache_;
};

}  // namespace kiln::tok
