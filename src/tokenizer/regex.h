// Pattern matching for the tokenizer components: Oniguruma-syntax regular
// expressions (as tokenizer.json writes them) run on PCRE2 with its JIT, and
// literal strings. Iteration follows the `onig` crate's find_iter so that
// splits match Hugging Face `tokenizers` exactly.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tokenizer/json_util.h"
#include "tokenizer/utf8.h"

namespace kiln::tok {

struct Span {
  size_t start;
  size_t end;
};

// A piece of a string that a pattern matched (is_match) or a gap between matches.
struct MatchSpan {
  size_t start;
  size_t end;
  bool is_match;
};

// Rewrites Oniguruma (Ruby syntax) constructs whose meaning differs in PCRE2:
// \s \S (White_Space), \w \W (alphabetic, marks, digits, connector punctuation),
// \d \D, \h \H (hex digits) and \uHHHH.
// `unicode16` adds to properties the characters assigned after PCRE2's Unicode
// version (Oniguruma in `tokenizers` has Unicode 16.0).
std::string translate_onig_pattern(std::string_view pattern, bool unicode16 = true);

class Matcher {
 public:
  Matcher() = default;
  // An Oniguruma-syntax regular expression; errors name the pattern.
  static Result<Matcher> regex(std::string_view pattern);
  // A pattern already in PCRE2 syntax.
  static Result<Matcher> pcre2(std::string_view pattern);
  // Matches `text` literally (what a {"String": ...} pattern means).
  static Matcher literal(std::string text);

  // The leftmost match at or after `from` (the whole of `s` is the subject, so
  // look-behinds see before `from`). Returns 1 and sets [*ms, *me) on a match,
  // 0 when there is none, a negative PCRE2 error code otherwise.
  int find_at(std::string_view s, size_t from, size_t* ms, size_t* me) const;

  // Every match, as Oniguruma's find_iter yields them (an empty match right
  // after a non-empty one is skipped).
  Status find_all(std::string_view s, std::vector<Span>& out) const;

  // Hugging Face's Pattern::find_matches: matches and the gaps between them,
  // covering all of `s`; `invert` flips is_match.
  Status find_matches(std::string_view s, std::vector<MatchSpan>& out, bool invert = false) const;

  // Replaces every match with `content` (the Replace normalizer and decoder).
  Status replace_all(std::string_view s, std::string_view content, std::string& out) const;

  bool is_literal() const { return is_literal_; }
  const std::string& source() const { return source_; }

 private:
  struct Code {
    std::shared_ptr<void> code;  // pcre2_code, freed by its deleter
    bool jit = false;
  };
  static Result<Matcher> compile(std::string_view pcre2_pattern, std::string_view shown);
  // The form to run on `s`: the plain one unless `s` has characters assigned
  // after PCRE2's Unicode version (the extended classes cost time on every character).
  const Code& code_for(std::string_view s) const;
  int find_literal(std::string_view s, size_t from, size_t* ms, size_t* me) const;
  static int find_with(const Code& c, std::string_view s, size_t from, size_t* ms, size_t* me);

  Code full_;   // with the Unicode 16.0 additions
  Code plain_;  // PCRE2's own tables; empty when the pattern has no property to extend
  bool is_literal_ = true;
  std::string source_;  // the literal, or the original pattern
};

// find_matches for a character predicate, as Hugging Face's `Fn(char) -> bool`
// pattern: each matching character is its own match.
template <typename Pred>
void find_matches_pred(std::string_view s, Pred pred, std::vector<MatchSpan>& out) {
  out.clear();
  if (s.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = utf8_next(s, i);
    if (pred(cp)) {
      if (last < b) out.push_back({last, b, false});
      out.push_back({b, i, true});
      last = i;
    }
  }
  if (s.size() > last) out.push_back({last, s.size(), false});
}

// Parses the "pattern" member of `obj`: {"String": s} (a literal) or {"Regex": r}.
Result<Matcher> parse_pattern(const json& obj, const std::string& path);

}  // namespace kiln::tok
