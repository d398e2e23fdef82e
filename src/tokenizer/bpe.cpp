#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "tokenizer/utf8.h"

namespace kiln::tok {

namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes of the word it covers; 0 once merged into its left neighbour
};

struct MergeCandidate {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  int32_t left;  // the pair it was found for
  int32_t right;
  // Min-heap on (rank, pos) through std::push_heap's max-heap.
  bool operator<(const MergeCandidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

struct BpeScratch {
  std::vector<Symbol> symbols;
  std::vector<MergeCandidate> heap;
  std::string piece;
};

BpeScratch& scratch() {
  thread_local BpeScratch s;
  return s;
}

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581

void add_symbol(std::vector<Symbol>& syms, int32_t id, uint32_t len) {
  int32_t n = static_cast<int32_t>(syms.size());
  if (n > 0) syms.back().next = n;
  syms.push_back({id, n - 1, -1, len});
}

}  // namespace

Result<std::unique_ptr<Bpe>> Bpe::from_json(const json& m, const std::string& path) {
  std::unique_ptr<Bpe> bpe(new Bpe());
  // Dropout makes tokenization random; only "off" is supported.
  if (const json* d = jfind(m, "dropout")) {
    if (!d->is_number()) return json_error(jkey(path, "dropout"), "expected a number or null");
    double p = d->get<double>();
    if (p != 0.0) {
      return unimplemented(jkey(path, "dropout") + ": BPE dropout (" + d->dump() +
                           ") is not supported; only null or 0");
    }
  }
  if (const json* u = jfind(m, "unk_token")) {
    if (!u->is_string()) return json_error(jkey(path, "unk_token"), "expected a string or null");
    bpe->unk_token_ = u->get<std::string>();
  }
  KILN_ASSIGN_OR_RETURN(bpe->prefix_, jstring_or(m, path, "continuing_subword_prefix", ""));
  KILN_ASSIGN_OR_RETURN(bpe->suffix_, jstring_or(m, path, "end_of_word_suffix", ""));
  KILN_ASSIGN_OR_RETURN(bpe->fuse_unk_, jbool_or(m, path, "fuse_unk", false));
  KILN_ASSIGN_OR_RETURN(bpe->byte_fallback_, jbool_or(m, path, "byte_fallback", false));
  KILN_ASSIGN_OR_RETURN(bpe->ignore_merges_, jbool_or(m, path, "ignore_merges", false));

  const json* vocab = jfind(m, "vocab");
  std::string vpath = jkey(path, "vocab");
  if (!vocab) return json_error(vpath, "missing (expected an object of token -> id)");
  if (!vocab->is_object()) return json_error(vpath, "expected an object of token -> id");
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX - 1) {
      return json_error(vpath + "[\"" + it.key() + "\"]", "expected a non-negative integer id");
    }
    max_id = std::max<int64_t>(max_id, v.get<int64_t>());
  }
  if (max_id > 64 * 1024 * 1024) return json_error(vpath, "ids above 2^26 are not supported");
  bpe->vocab_r_.assign(static_cast<size_t>(max_id + 1), std::string());
  bpe->has_r_.assign(static_cast<size_t>(max_id + 1), false);
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    int32_t id = static_cast<int32_t>(it.value().get<int64_t>());
    bpe->vocab_.insert(it.key(), id);
    if (!bpe->has_r_[id]) {
      bpe->vocab_r_[id] = it.key();
      bpe->has_r_[id] = true;
    }
  }

  const json* merges = jfind(m, "merges");
  std::string mpath = jkey(path, "merges");
  if (!merges) return json_error(mpath, "missing (expected an array of merges)");
  if (!merges->is_array()) return json_error(mpath, "expected an array of merges");
  uint32_t rank = 0;
  std::string a, b, merged;
  bool merged_tokens_ok = true;  // no merged token has U+2581 right after another character
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& e = (*merges)[i];
    std::string epath = jidx(mpath, i);
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      if (s.rfind("#version", 0) == 0) continue;
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return json_error(epath, "expected \"a b\" or [a, b], got \"" + s + "\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return json_error(epath, "expected \"a b\" or [a, b]");
    }
    int32_t ia = bpe->vocab_.find(a), ib = bpe->vocab_.find(b);
    if (ia < 0) return json_error(epath, "\"" + a + "\" is not in the vocab");
    if (ib < 0) return json_error(epath, "\"" + b + "\" is not in the vocab");
    if (b.size() < bpe->prefix_.size()) {
      return json_error(epath, "\"" + b + "\" is shorter than continuing_subword_prefix");
    }
    merged = a;
    merged.append(b, bpe->prefix_.size(), std::string::npos);
    int32_t im = bpe->vocab_.find(merged);
    if (im < 0) return json_error(epath, "the merged token \"" + merged + "\" is not in the vocab");
    bpe->merges_.insert(ia, ib, {rank, im});
    if (merged_tokens_ok) {
      for (size_t pos = merged.find(kMetaspace, 1); pos != std::string::npos;
           pos = merged.find(kMetaspace, pos + 1)) {
        if (pos < 3 || merged.compare(pos - 3, 3, kMetaspace) != 0) {
          merged_tokens_ok = false;
          break;
        }
      }
    }
    ++rank;
  }

  if (bpe->unk_token_) bpe->unk_id_ = bpe->vocab_.find(*bpe->unk_token_);
  bpe->split_at_metaspace_ =
      bpe->prefix_.empty() && bpe->suffix_.empty() && bpe->vocab_.find(kMetaspace) >= 0 && merged_tokens_ok;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    bpe->byte_ids_[b] = bpe->vocab_.find(name);
  }
  bpe->small_char_.assign(0x800, -1);
  std::string ch;
  for (uint32_t cp = 0; cp < 0x800; ++cp) {
    ch.clear();
    utf8_append(ch, cp);
    bpe->small_char_[cp] = bpe->vocab_.find(ch);
  }
  return bpe;
}

Status Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return {};
  if (ignore_merges_) {
    int32_t id = vocab_.find(word);
    if (id >= 0) {
      out.push_back(id);
      return {};
    }
  }
  if (split_at_metaspace_) {
    // Parts start at a U+2581 that follows another character.
    size_t part = 0;
    for (size_t pos = word.find(kMetaspace, 1); pos != std::string_view::npos;
         pos = word.find(kMetaspace, pos + 3)) {
      if (pos >= 3 && word.compare(pos - 3, 3, kMetaspace) == 0) continue;
      KILN_RETURN_IF_ERROR(merge_cached(word.substr(part, pos - part), out));
      part = pos;
    }
    return merge_cached(word.substr(part), out);
  }
  return merge_cached(word, out);
}

Status Bpe::merge_cached(std::string_view word, std::vector<int32_t>& out) const {
  uint64_t h = 0;
  bool cacheable = word.size() < WordCache::kMaxKeyBytes;
  if (cacheable) {
    h = hash_bytes(word);
    if (cache_.get(word, h, out)) return {};
  }
  size_t before = out.size();
  KILN_RETURN_IF_ERROR(merge_word(word, out));
  if (cacheable) cache_.put(word, h, out.data() + before, out.size() - before);
  return {};
}

Status Bpe::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  BpeScratch& sc = scratch();
  std::vector<Symbol>& syms = sc.symbols;
  syms.clear();
  bool has_prefix = !prefix_.empty(), has_suffix = !suffix_.empty();
  int32_t pending_unk = -1;  // id of an unknown run not yet added
  uint32_t pending_len = 0;
  size_t i = 0;
  while (i < w.size()) {
    size_t start = i;
    uint32_t cp = utf8_next(w, i);
    bool is_first = start == 0, is_last = i == w.size();
    uint32_t byte_len = static_cast<uint32_t>(i - start);
    int32_t id;
    std::string_view piece;
    if ((is_first || !has_prefix) && (!is_last || !has_suffix)) {
      piece = w.substr(start, byte_len);
      id = cp < 0x800 ? small_char_[cp] : vocab_.find(piece);
    } else {
      sc.piece.clear();
      if (!is_first) sc.piece.append(prefix_);
      sc.piece.append(w.substr(start, byte_len));
      if (is_last) sc.piece.append(suffix_);
      piece = sc.piece;
      id = vocab_.find(piece);
    }
    if (id >= 0) {
      if (pending_unk >= 0) {
        add_symbol(syms, pending_unk, pending_len);
        pending_unk = -1;
      }
      add_symbol(syms, id, byte_len);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : piece) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : piece) add_symbol(syms, byte_ids_[c], 1);
        continue;
      }
    }
    if (unk_token_) {
      if (unk_id_ < 0) {
        return failed_precondition("the BPE unk_token \"" + *unk_token_ + "\" is not in the vocab");
      }
      if (pending_unk >= 0 && fuse_unk_) {
        pending_len += byte_len;
      } else {
        if (pending_unk >= 0) add_symbol(syms, pending_unk, pending_len);
        pending_unk = unk_id_;
        pending_len = byte_len;
      }
    }
  }
  if (pending_unk >= 0) add_symbol(syms, pending_unk, pending_len);

  if (syms.size() > 1) {
    std::vector<MergeCandidate>& heap = sc.heap;
    heap.clear();
    constexpr size_t kAhead = 8;
    for (size_t k = 0; k + 1 < syms.size(); ++k) {
      if (k + kAhead + 1 < syms.size()) merges_.prefetch(syms[k + kAhead].id, syms[k + kAhead + 1].id);
      if (const MergeMap::Value* v = merges_.find(syms[k].id, syms[k + 1].id)) {
        heap.push_back({v->rank, static_cast<uint32_t>(k), v->new_id, syms[k].id, syms[k + 1].id});
      }
    }
    std::make_heap(heap.begin(), heap.end());
    const int32_t n = static_cast<int32_t>(syms.size());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      MergeCandidate top = heap.back();
      heap.pop_back();
      Symbol& cur = syms[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      int32_t next_pos = cur.next;
      Symbol right = syms[next_pos];
      // An entry is stale unless the pair there still merges into the same token
      // (`tokenizers` checks only the merged id, so a different pair with the
      // same result is taken too).
      if (cur.id != top.left || right.id != top.right) {
        const MergeMap::Value* v = merges_.find(cur.id, right.id);
        if (!v || v->new_id != top.new_id) continue;
      }
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next > -1 && right.next < n) syms[right.next].prev = static_cast<int32_t>(top.pos);
      if (cur.prev >= 0) {
        if (const MergeMap::Value* pv = merges_.find(syms[cur.prev].id, cur.id)) {
          heap.push_back({pv->rank, static_cast<uint32_t>(cur.prev), pv->new_id, syms[cur.prev].id, cur.id});
          std::push_heap(heap.begin(), heap.end());
        }
      }
      if (cur.next >= 0 && cur.next < n) {
        if (const MergeMap::Value* nv = merges_.find(cur.id, syms[cur.next].id)) {
          heap.push_back({nv->rank, top.pos, nv->new_id, cur.id, syms[cur.next].id});
          std::push_heap(heap.begin(), heap.end());
        }
      }
    }
  }
  for (const Symbol& s : syms) {
    if (s.len != 0) out.push_back(s.id);
  }
  return {};
}

}  // namespace kiln::tok
