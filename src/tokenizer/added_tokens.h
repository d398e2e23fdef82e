// The "added_tokens" of tokenizer.json: tokens matched in the input before
// the normalizer and pre-tokenizer run (non-normalized ones on the raw text,
// normalized ones on the normalized text), leftmost and longest first, with
// the lstrip / rstrip / single_word rules of Hugging Face `tokenizers`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/status.h"
#include "tokenizer/json_util.h"
#include "tokenizer/pre_tokenizers.h"

namespace kiln::tok {

class Bpe;
class Normalizer;

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

struct AddedEntry {
  AddedToken token;
  std::string shown;  // content, or its normalized form for a normalized token
};

class AddedVocabulary {
 public:
  // `list` is the "added_tokens" array (nullptr when absent). Ids are given as
  // `tokenizers` gives them: an existing added or vocab id for known content,
  // else the next id after the model's vocabulary (the JSON ids are only checked).
  static Result<std::unique_ptr<AddedVocabulary>> from_json(const json* list, const std::string& path,
                                                            const Bpe& model, const Normalizer* normalizer);

  // Splits the pieces of `ws` that have no id at the tokens of one kind:
  // normalized == false matches the non-normalized tokens (on raw text),
  // normalized == true the normalized ones (on normalized text).
  void split(Workspace& ws, bool normalized) const;

  bool has_raw_tokens() const { return raw_.root_any; }
  bool has_normalized_tokens() const { return norm_.root_any; }

  int32_t token_to_id(std::string_view content) const {
    auto it = by_content_.find(std::string(content));
    return it == by_content_.end() ? -1 : it->second;
  }
  // The token with this id (nullptr if none) and the string decode shows for it
  // (its normalized form for a normalized token).
  const AddedToken* token(int32_t id) const {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &it->second.token;
  }
  const std::string* decode_string(int32_t id) const {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &it->second.shown;
  }
  bool is_special_content(std::string_view s) const { return special_.count(std::string(s)) > 0; }
  int32_t max_id() const { return max_id_; }

 private:
  struct Trie {
    int32_t root[256];
    bool root_any = false;
    std::vector<int32_t> node_token;                 // node -> id, or -1
    std::unordered_map<uint64_t, int32_t> children;  // (node << 8 | byte) -> node
  };
  struct Match {
    size_t start;
    size_t end;
    int32_t id;
  };
  static void build_trie(Trie& t, const std::vector<std::pair<std::string, int32_t>>& patterns);
  void find(const Trie& t, std::string_view s, std::vector<Match>& out) const;

  std::unordered_map<int32_t, AddedEntry> by_id_;
  std::unordered_map<std::string, int32_t> by_content_;
  std::unordered_set<std::string> special_;
  Trie raw_, norm_;
  int32_t max_id_ = -1;
};

}  // namespace kiln::tok
