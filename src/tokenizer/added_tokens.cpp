#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/bpe.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/utf8.h"

namespace kiln::tok {

namespace {

// Start of the character that ends at `end` (end > 0).
size_t prev_char_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool token_fields_equal(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.single_word == b.single_word && a.lstrip == b.lstrip &&
         a.rstrip == b.rstrip && a.normalized == b.normalized && a.special == b.special;
}

}  // namespace

Result<std::unique_ptr<AddedVocabulary>> AddedVocabulary::from_json(const json* list, const std::string& path,
                                                                    const Bpe& model,
                                                                    const Normalizer* normalizer) {
  std::unique_ptr<AddedVocabulary> av(new AddedVocabulary());
  if (list) {
    if (!list->is_array()) return json_error(path, "expected an array of added tokens");
    int32_t next_id = static_cast<int32_t>(model.vocab_entries());
    for (size_t i = 0; i < list->size(); ++i) {
      const json& e = (*list)[i];
      std::string epath = jidx(path, i);
      if (!e.is_object()) return json_error(epath, "expected an object");
      AddedToken t;
      KILN_ASSIGN_OR_RETURN(t.content, jstring(e, epath, "content"));
      if (const json* id = jfind(e, "id"); id && !id->is_number_unsigned()) {
        return json_error(jkey(epath, "id"), "expected a non-negative integer");
      }
      KILN_ASSIGN_OR_RETURN(t.single_word, jbool_or(e, epath, "single_word", false));
      KILN_ASSIGN_OR_RETURN(t.lstrip, jbool_or(e, epath, "lstrip", false));
      KILN_ASSIGN_OR_RETURN(t.rstrip, jbool_or(e, epath, "rstrip", false));
      KILN_ASSIGN_OR_RETURN(t.special, jbool_or(e, epath, "special", false));
      KILN_ASSIGN_OR_RETURN(t.normalized, jbool_or(e, epath, "normalized", !t.special));
      if (t.content.empty()) continue;
      auto known = av->by_content_.find(t.content);
      if (known != av->by_content_.end() && token_fields_equal(av->by_id_[known->second].token, t)) continue;
      int32_t id;
      if (known != av->by_content_.end()) {
        id = known->second;
      } else if (int32_t mid = model.token_to_id(t.content); mid >= 0) {
        id = mid;
      } else {
        id = next_id++;
      }
      std::string shown = t.content;
      if (t.normalized && normalizer) {
        bool at_start = true;
        Status st = normalizer->normalize(shown, at_start);
        if (!st.ok()) return st.with_context(jkey(epath, "content"));
      }
      av->by_content_[t.content] = id;
      if (t.special) av->special_.insert(t.content);
      av->by_id_[id] = AddedEntry{std::move(t), std::move(shown)};
      av->max_id_ = std::max(av->max_id_, id);
    }
  }
  // Patterns in id order, so that the tries do not depend on hash order.
  std::vector<int32_t> ids;
  for (const auto& [id, entry] : av->by_id_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::vector<std::pair<std::string, int32_t>> raw, norm;
  for (int32_t id : ids) {
    const AddedEntry& e = av->by_id_[id];
    if (e.token.normalized) {
      norm.emplace_back(e.shown, id);
    } else {
      raw.emplace_back(e.token.content, id);
    }
  }
  build_trie(av->raw_, raw);
  build_trie(av->norm_, norm);
  return av;
}

void AddedVocabulary::build_trie(Trie& t, const std::vector<std::pair<std::string, int32_t>>& patterns) {
  std::fill(std::begin(t.root), std::end(t.root), -1);
  t.root_any = false;
  t.node_token.clear();
  t.children.clear();
  for (const auto& [pattern, id] : patterns) {
    if (pattern.empty()) continue;
    auto b0 = static_cast<unsigned char>(pattern[0]);
    if (t.root[b0] < 0) {
      t.root[b0] = static_cast<int32_t>(t.node_token.size());
      t.node_token.push_back(-1);
    }
    int32_t node = t.root[b0];
    for (size_t k = 1; k < pattern.size(); ++k) {
      uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(pattern[k]);
      auto it = t.children.find(key);
      if (it == t.children.end()) {
        int32_t child = static_cast<int32_t>(t.node_token.size());
        t.node_token.push_back(-1);
        t.children.emplace(key, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    if (t.node_token[node] < 0) t.node_token[node] = id;  // the first of duplicate patterns wins
    t.root_any = true;
  }
}

void AddedVocabulary::find(const Trie& t, std::string_view s, std::vector<Match>& out) const {
  out.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    int32_t node = t.root[p[i]];
    if (node < 0) {
      ++i;
      continue;
    }
    size_t best_end = 0;
    int32_t best_id = -1;
    if (t.node_token[node] >= 0) {
      best_end = i + 1;
      best_id = t.node_token[node];
    }
    for (size_t j = i + 1; j < n; ++j) {
      auto it = t.children.find((static_cast<uint64_t>(node) << 8) | p[j]);
      if (it == t.children.end()) break;
      node = it->second;
      if (t.node_token[node] >= 0) {
        best_end = j + 1;
        best_id = t.node_token[node];
      }
    }
    if (best_id >= 0) {
      out.push_back({i, best_end, best_id});
      i = best_end;
    } else {
      ++i;
    }
  }
}

void AddedVocabulary::split(Workspace& ws, bool normalized) const {
  const Trie& t = normalized ? norm_ : raw_;
  if (!t.root_any) return;
  thread_local std::vector<Match> matches;
  ws.next.clear();
  for (const Piece& p : ws.pieces) {
    if (p.id >= 0) {
      ws.next.push_back(p);
      continue;
    }
    std::string_view s = ws.view(p);
    find(t, s, matches);
    if (matches.empty()) {
      ws.next.push_back(p);
      continue;
    }
    size_t start_offset = 0;
    for (const Match& m : matches) {
      size_t start = m.start, stop = m.end;
      const AddedToken& tok = by_id_.at(m.id).token;
      if (tok.single_word) {
        bool start_space = start == 0 || !is_rust_word(utf8_last(s.substr(0, start)));
        bool stop_space = true;
        if (stop < s.size()) {
          size_t k = stop;
          stop_space = !is_rust_word(utf8_next(s, k));
        }
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        size_t new_start = start;
        while (new_start > 0) {
          size_t c = prev_char_start(s, new_start);
          size_t k = c;
          if (!is_white_space(utf8_next(s, k))) break;
          new_start = c;
        }
        start = std::max(new_start, start_offset);
      }
      if (tok.rstrip) {
        while (stop < s.size()) {
          size_t k = stop;
          if (!is_white_space(utf8_next(s, k))) break;
          stop = k;
        }
      }
      if (start_offset < start) {
        ws.next.push_back({p.off + start_offset, start - start_offset, -1, p.at_start && start_offset == 0});
      }
      ws.next.push_back({p.off + start, stop - start, m.id, p.at_start && start == 0});
      start_offset = stop;
    }
    if (start_offset < s.size()) {
      ws.next.push_back({p.off + start_offset, s.size() - start_offset, -1, p.at_start && start_offset == 0});
    }
  }
  ws.pieces.swap(ws.next);
}

}  // namespace kiln::tok
