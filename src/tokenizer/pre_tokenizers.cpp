#include "tokenizer/pre_tokenizers.h"

#include <algorithm>
#include <optional>

#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

namespace kiln::tok {

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table = [] {
    ByteLevelTable t{};
    std::fill(std::begin(t.byte_of), std::end(t.byte_of), static_cast<int16_t>(-1));
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      uint32_t cp = printable ? b : next_extra++;
      std::string s;
      utf8_append(s, cp);
      t.len[b] = static_cast<uint8_t>(s.size());
      t.utf8[b][0] = s[0];
      t.utf8[b][1] = s.size() > 1 ? s[1] : 0;
      t.byte_of[cp] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return table;
}

Result<SplitBehavior> parse_split_behavior(const json& obj, const std::string& path, std::string_view key,
                                           bool has_default, SplitBehavior dflt) {
  const json* v = jfind(obj, key);
  if (!v) {
    if (has_default) return dflt;
    return json_error(jkey(path, key), "missing (expected a split behavior)");
  }
  static const char* kExpected =
      "expected one of \"Removed\", \"Isolated\", \"MergedWithPrevious\", \"MergedWithNext\", \"Contiguous\"";
  if (!v->is_string()) return json_error(jkey(path, key), kExpected);
  std::string s = v->get<std::string>();
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return json_error(jkey(path, key), std::string(kExpected) + ", got \"" + s + "\"");
}

void apply_split_behavior(const std::vector<MatchSpan>& m, SplitBehavior behavior, std::vector<Span>& out) {
  out.clear();
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& x : m) out.push_back({x.start, x.end});
      return;
    case SplitBehavior::kRemoved:
      for (const auto& x : m) {
        if (!x.is_match) out.push_back({x.start, x.end});
      }
      return;
    case SplitBehavior::kContiguous: {
      bool prev = false;
      for (const auto& x : m) {
        if (x.is_match == prev && !out.empty()) {
          out.back().end = x.end;
        } else {
          out.push_back({x.start, x.end});
        }
        prev = x.is_match;
      }
      return;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev = false;
      for (const auto& x : m) {
        if (x.is_match && !prev && !out.empty()) {
          out.back().end = x.end;
        } else {
          out.push_back({x.start, x.end});
        }
        prev = x.is_match;
      }
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev = false;
      for (size_t k = m.size(); k-- > 0;) {
        const auto& x = m[k];
        if (x.is_match && !prev && !out.empty()) {
          out.back().start = x.start;
        } else {
          out.push_back({x.start, x.end});
        }
        prev = x.is_match;
      }
      std::reverse(out.begin(), out.end());
      return;
    }
  }
}

namespace {

// Splits every piece without an id: `find(text, matches)` gives the matches and
// gaps, `behavior` which ranges stay; empty ranges are dropped.
template <typename FindFn>
Status split_each(Workspace& ws, SplitBehavior behavior, FindFn&& find) {
  ws.next.clear();
  for (const Piece& p : ws.pieces) {
    if (p.id >= 0) {
      ws.next.push_back(p);
      continue;
    }
    KILN_RETURN_IF_ERROR(find(ws.view(p), ws.matches));
    apply_split_behavior(ws.matches, behavior, ws.ranges);
    for (const Span& r : ws.ranges) {
      if (r.end > r.start)
        ws.next.push_back({p.off + r.start, r.end - r.start, -1, p.at_start && r.start == 0});
    }
  }
  ws.pieces.swap(ws.next);
  return {};
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Matcher m, SplitBehavior b, bool invert)
      : matcher_(std::move(m)), behavior_(b), invert_(invert) {}
  Status apply(Workspace& ws) const override {
    return split_each(ws, behavior_, [&](std::string_view s, std::vector<MatchSpan>& out) {
      return matcher_.find_matches(s, out, invert_);
    });
  }

 private:
  Matcher matcher_;
  SplitBehavior behavior_;
  bool invert_;
};

template <typename Pred>
class PredicatePreTokenizer final : public PreTokenizer {
 public:
  PredicatePreTokenizer(Pred pred, SplitBehavior b) : pred_(pred), behavior_(b) {}
  Status apply(Workspace& ws) const override {
    return split_each(ws, behavior_, [&](std::string_view s, std::vector<MatchSpan>& out) {
      find_matches_pred(s, pred_, out);
      return Status();
    });
  }

 private:
  Pred pred_;
  SplitBehavior behavior_;
};

template <typename Pred>
std::unique_ptr<PreTokenizer> make_predicate(Pred pred, SplitBehavior b) {
  return std::make_unique<PredicatePreTokenizer<Pred>>(pred, b);
}

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Matcher> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  Status apply(Workspace& ws) const override {
    if (add_prefix_space_) {
      for (Piece& p : ws.pieces) {
        if (p.id >= 0 || (p.len > 0 && ws.arena[p.off] == ' ')) continue;
        ws.tmp.assign(" ");
        ws.tmp.append(ws.view(p));
        p.off = ws.add(ws.tmp);
        p.len += 1;
      }
    }
    if (regex_) {
      KILN_RETURN_IF_ERROR(
          split_each(ws, SplitBehavior::kIsolated, [&](std::string_view s, std::vector<MatchSpan>& out) {
            return regex_->find_matches(s, out, false);
          }));
    }
    const ByteLevelTable& t = byte_level_table();
    for (Piece& p : ws.pieces) {
      if (p.id >= 0) continue;
      size_t old = ws.arena.size();
      ws.arena.resize(old + 2 * p.len);
      const auto* src = reinterpret_cast<const unsigned char*>(ws.arena.data() + p.off);
      char* dst = ws.arena.data() + old;
      size_t w = 0;
      for (size_t i = 0; i < p.len; ++i) {
        unsigned char b = src[i];
        dst[w] = t.utf8[b][0];
        dst[w + 1] = t.utf8[b][1];
        w += t.len[b];
      }
      ws.arena.resize(old + w);
      p.off = old;
      p.len = w;
    }
    return {};
  }

 private:
  bool add_prefix_space_;
  std::optional<Matcher> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : repl_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t i = 0;
    repl_cp_ = utf8_next(repl_, i);
  }

  Status apply(Workspace& ws) const override {
    ws.next.clear();
    for (const Piece& p : ws.pieces) {
      if (p.id >= 0) {
        ws.next.push_back(p);
        continue;
      }
      std::string_view s = ws.view(p);
      std::string& t = ws.tmp;
      t.clear();
      bool prepend = false;
      if (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start)) {
        // Checked after the spaces are replaced: a leading space becomes the replacement.
        prepend = !(s.substr(0, repl_.size()) == repl_ || (!s.empty() && s[0] == ' '));
      }
      if (prepend) t.append(repl_);
      for (char c : s) {
        if (c == ' ') {
          t.append(repl_);
        } else {
          t.push_back(c);
        }
      }
      size_t off = ws.add(t);
      if (!split_) {
        ws.next.push_back({off, t.size(), -1, p.at_start});
        continue;
      }
      std::string_view v(ws.arena.data() + off, t.size());
      find_matches_pred(
          v, [&](uint32_t cp) { return cp == repl_cp_; }, ws.matches);
      apply_split_behavior(ws.matches, SplitBehavior::kMergedWithNext, ws.ranges);
      for (const Span& r : ws.ranges) {
        if (r.end > r.start)
          ws.next.push_back({off + r.start, r.end - r.start, -1, p.at_start && r.start == 0});
      }
    }
    ws.pieces.swap(ws.next);
    return {};
  }

 private:
  std::string repl_;
  uint32_t repl_cp_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> items)
      : items_(std::move(items)) {}
  Status apply(Workspace& ws) const override {
    for (const auto& p : items_) KILN_RETURN_IF_ERROR(p->apply(ws));
    return {};
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

// Rust regex's \w+|[^\w\s]+ (the Whitespace pre-tokenizer), in PCRE2 syntax.
std::string rust_word_pattern() {
  std::string word = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";
  for (const char* prop : {"L", "Nl", "M", "Nd", "Pc"}) append_unicode16_additions(word, prop);
  return "[" + word + "]+|[^" + word + "\\p{White_Space}]+";
}

}  // namespace

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& j, const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string type, jtype(j, path));
  if (type == "Split") {
    KILN_ASSIGN_OR_RETURN(Matcher m, parse_pattern(j, path));
    KILN_ASSIGN_OR_RETURN(SplitBehavior b,
                          parse_split_behavior(j, path, "behavior", false, SplitBehavior::kIsolated));
    KILN_ASSIGN_OR_RETURN(bool invert, jbool_or(j, path, "invert", false));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(m), b, invert));
  }
  if (type == "ByteLevel") {
    KILN_ASSIGN_OR_RETURN(bool add_prefix_space, jbool_or(j, path, "add_prefix_space", true));
    KILN_ASSIGN_OR_RETURN(bool use_regex, jbool_or(j, path, "use_regex", true));
    std::optional<Matcher> regex;
    if (use_regex) {
      KILN_ASSIGN_OR_RETURN(Matcher m, Matcher::regex(kGpt2Pattern));
      regex = std::move(m);
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, std::move(regex)));
  }
  if (type == "Metaspace") {
    KILN_ASSIGN_OR_RETURN(std::string repl, jchar(j, path, "replacement", std::string("\xE2\x96\x81")));
    KILN_ASSIGN_OR_RETURN(bool split, jbool_or(j, path, "split", true));
    PrependScheme scheme = PrependScheme::kAlways;
    const json* ps = jfind(j, "prepend_scheme");
    if (ps) {
      std::string s = ps->is_string() ? ps->get<std::string>() : "";
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return json_error(jkey(path, "prepend_scheme"), "expected \"always\", \"first\" or \"never\"");
      }
    }
    const json* aps = jfind(j, "add_prefix_space");
    if (aps) {
      if (!aps->is_boolean()) return json_error(jkey(path, "add_prefix_space"), "expected true or false");
      if (!aps->get<bool>()) {
        if (ps && scheme != PrependScheme::kNever) {
          return json_error(jkey(path, "add_prefix_space"), "false does not match prepend_scheme");
        }
        scheme = PrependScheme::kNever;
      }
    }
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(std::move(repl), scheme, split));
  }
  if (type == "Digits") {
    KILN_ASSIGN_OR_RETURN(bool individual, jbool_or(j, path, "individual_digits", false));
    return make_predicate([](uint32_t cp) { return is_numeric(cp); },
                          individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    KILN_ASSIGN_OR_RETURN(SplitBehavior b,
                          parse_split_behavior(j, path, "behavior", true, SplitBehavior::kIsolated));
    return make_predicate([](uint32_t cp) { return is_punctuation(cp); }, b);
  }
  if (type == "WhitespaceSplit") {
    return make_predicate([](uint32_t cp) { return is_white_space(cp); }, SplitBehavior::kRemoved);
  }
  if (type == "Whitespace") {
    KILN_ASSIGN_OR_RETURN(Matcher m, Matcher::pcre2(rust_word_pattern()));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(m), SplitBehavior::kRemoved, true));
  }
  if (type == "Sequence") {
    KILN_ASSIGN_OR_RETURN(auto items, jsequence<PreTokenizer>(j, path, "pretokenizers", "pre-tokenizers", parse_pre_tokenizer));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(items)));
  }
  return unimplemented(jkey(path, "type") + ": pre-tokenizer \"" + type + "\" is not supported");
}

}  // namespace kiln::tok
