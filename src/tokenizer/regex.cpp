#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cctype>
#include <cstring>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace kiln::tok {

namespace {

// Oniguruma's \w for Unicode text: Alphabetic, marks, decimal numbers and
// connector punctuation, plus the Latin-1 digits and fractions (superscripts
// two, three and one, and the three vulgar fractions) that its Latin-1 table
// counts as word characters. The inside of a character class; `unicode16` adds
// the characters assigned after PCRE2's Unicode version.
std::string onig_word_class(bool unicode16) {
  std::string c = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
  if (unicode16) {
    for (const char* prop : {"L", "Nl", "M", "Nd", "Pc"}) append_unicode16_additions(c, prop);
  }
  return c;
}

std::string digit_class(bool unicode16) {
  std::string c = "\\p{Nd}";
  if (unicode16) append_unicode16_additions(c, "Nd");
  return c;
}

// Characters that the Unicode 16.0 form of a pattern may match differently:
// those assigned after Unicode 14.0, as bits below U+40000 (all of them are).
constexpr uint32_t kAddedTableEnd = 0x40000;
const std::vector<uint64_t>& added_bits() {
  static const std::vector<uint64_t> bits = [] {
    std::vector<uint64_t> b(kAddedTableEnd / 64, 0);
    for (uint32_t cp = 0x80; cp < kAddedTableEnd; ++cp) {
      if (unicode16_added_category(cp)) b[cp / 64] |= 1ull << (cp % 64);
    }
    return b;
  }();
  return bits;
}

// Whether `s` holds a character assigned after Unicode 14.0.
bool has_added_chars(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto& bits = added_bits();
  size_t i = 0, n = s.size();
  while (i < n) {
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    uint32_t cp = utf8_next(s, i);
    if (cp >= kAddedTableEnd || ((bits[cp / 64] >> (cp % 64)) & 1)) return true;
  }
  return false;
}

// Per-thread PCRE2 match state: one match data block (any pattern fits: a
// short ovector still reports the whole match) and a JIT stack.
struct ThreadMatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchState() {
    md = pcre2_match_data_create(16, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (mctx && stack) pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~ThreadMatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mctx);
    pcre2_jit_stack_free(stack);
  }
};

ThreadMatchState& thread_state() {
  thread_local ThreadMatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::string translate_onig_pattern(std::string_view p, bool unicode16) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char d = p[i + 1];
      bool in_class = class_depth > 0;
      switch (d) {
        case 's':
          out += "\\p{White_Space}";
          break;
        case 'S':
          out += "\\P{White_Space}";
          break;
        case 'w':
          if (in_class) {
            out += onig_word_class(unicode16);
          } else {
            out += "[";
            out += onig_word_class(unicode16);
            out += "]";
          }
          break;
        case 'W':
          if (in_class) {
            out += "\\W";
          } else {
            out += "[^";
            out += onig_word_class(unicode16);
            out += "]";
          }
          break;
        case 'd':
          if (in_class) {
            out += digit_class(unicode16);
          } else {
            out += "[" + digit_class(unicode16) + "]";
          }
          break;
        case 'D':
          if (in_class) {
            out += "\\D";
          } else {
            out += "[^" + digit_class(unicode16) + "]";
          }
          break;
        case 'h':
          out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
          break;
        case 'H':
          out += in_class ? "\\H" : "[^0-9a-fA-F]";
          break;
        case 'p':
        case 'P': {
          // \pX, \p{Name}, \p{^Name}: add the characters Unicode assigned to the
          // property after the version PCRE2 knows.
          size_t j = i + 2, last;
          std::string name, original;
          if (j < p.size() && p[j] == '{') {
            size_t close = p.find('}', j);
            if (close == std::string_view::npos) {
              out.push_back(c);
              out.push_back(d);
              break;
            }
            name = std::string(p.substr(j + 1, close - j - 1));
            original = std::string(p.substr(i, close + 1 - i));
            last = close;
          } else if (j < p.size()) {
            name = std::string(1, p[j]);
            original = std::string(p.substr(i, 3));
            last = j;
          } else {
            out.push_back(c);
            out.push_back(d);
            break;
          }
          bool negated = d == 'P';
          if (!name.empty() && name[0] == '^') {
            negated = !negated;
            name.erase(0, 1);
          }
          std::string extra;
          if (unicode16) append_unicode16_additions(extra, name);
          if (extra.empty() || (in_class && negated)) {
            out += original;  // (a negated property inside a class keeps PCRE2's tables)
          } else if (in_class) {
            out += original;
            out += extra;
          } else {
            out += negated ? "[^" : "[";
            out += "\\p{" + name + "}";
            out += extra;
            out += "]";
          }
          i = last - 1;
          break;
        }
        case 'u': {
          size_t j = i + 2, n = 0;
          while (n < 4 && j < p.size() && std::isxdigit(static_cast<unsigned char>(p[j]))) ++j, ++n;
          if (n == 4) {
            out += "\\x{";
            out.append(p.substr(i + 2, 4));
            out += "}";
            i += 4;
          } else {
            out += "\\u";
          }
          break;
        }
        default:
          out.push_back(c);
          out.push_back(d);
      }
      ++i;
      continue;
    }
    if (c == '[') {
      if (class_depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {
        // POSIX bracket expression [:name:] inside a class: copy through.
        size_t close = p.find(":]", i + 2);
        if (close != std::string_view::npos) {
          out.append(p.substr(i, close + 2 - i));
          i = close + 1;
          continue;
        }
      }
      ++class_depth;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out.push_back('^');
        ++i;
      }
      if (i + 1 < p.size() && p[i + 1] == ']') {
        out += "\\]";
        ++i;
      }
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out.push_back(c);
  }
  return out;
}

Result<Matcher> Matcher::regex(std::string_view pattern) {
  std::string full = translate_onig_pattern(pattern, true);
  KILN_ASSIGN_OR_RETURN(Matcher m, compile(full, pattern));
  std::string plain = translate_onig_pattern(pattern, false);
  if (plain != full) {
    KILN_ASSIGN_OR_RETURN(Matcher p, compile(plain, pattern));
    m.plain_ = std::move(p.full_);
  }
  return m;
}

Result<Matcher> Matcher::pcre2(std::string_view pattern) { return compile(pattern, pattern); }

Result<Matcher> Matcher::compile(std::string_view translated, std::string_view pattern) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, nullptr);
  if (!code) {
    return invalid_argument("bad regex \"" + std::string(pattern) + "\": " + pcre2_message(err) +
                            " (at offset " + std::to_string(err_off) + " of \"" + std::string(translated) +
                            "\")");
  }
  Matcher m;
  m.is_literal_ = false;
  m.source_ = std::string(pattern);
  m.full_.jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  m.full_.code = std::shared_ptr<void>(code, [](void* c) { pcre2_code_free(static_cast<pcre2_code*>(c)); });
  return m;
}

Matcher Matcher::literal(std::string text) {
  Matcher m;
  m.is_literal_ = true;
  m.source_ = std::move(text);
  return m;
}

const Matcher::Code& Matcher::code_for(std::string_view s) const {
  return plain_.code && !has_added_chars(s) ? plain_ : full_;
}

int Matcher::find_at(std::string_view s, size_t from, size_t* ms, size_t* me) const {
  if (is_literal_) return find_literal(s, from, ms, me);
  return find_with(code_for(s), s, from, ms, me);
}

int Matcher::find_literal(std::string_view s, size_t from, size_t* ms, size_t* me) const {
  if (source_.empty()) {
    if (from > s.size()) return 0;
    *ms = *me = from;
    return 1;
  }
  size_t pos = s.find(source_, from);
  if (pos == std::string_view::npos) return 0;
  *ms = pos;
  *me = pos + source_.size();
  return 1;
}

int Matcher::find_with(const Code& c, std::string_view s, size_t from, size_t* ms, size_t* me) {
  auto* code = static_cast<const pcre2_code*>(c.code.get());
  ThreadMatchState& st = thread_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  int rc;
  if (c.jit) {
    rc = pcre2_jit_match(code, subject, s.size(), from, 0, st.md, st.mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code, subject, s.size(), from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.md, st.mctx);
    }
  } else {
    rc = pcre2_match(code, subject, s.size(), from, PCRE2_NO_UTF_CHECK, st.md, st.mctx);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) return rc;
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  *ms = ov[0];
  *me = ov[1] < ov[0] ? ov[0] : ov[1];
  return 1;
}

Status Matcher::find_all(std::string_view s, std::vector<Span>& out) const {
  out.clear();
  if (is_literal_ && !source_.empty()) {
    size_t pos = 0;
    while ((pos = s.find(source_, pos)) != std::string_view::npos) {
      out.push_back({pos, pos + source_.size()});
      pos += source_.size();
    }
    return {};
  }
  const Code* code = is_literal_ ? nullptr : &code_for(s);
  size_t last_end = 0;
  bool skip_next_empty = false;
  while (last_end <= s.size()) {
    size_t ms = 0, me = 0;
    int rc = code ? find_with(*code, s, last_end, &ms, &me) : find_literal(s, last_end, &ms, &me);
    if (rc == 0) break;
    if (rc < 0) return internal_error("regex \"" + source_ + "\" failed: " + pcre2_message(rc));
    last_end = me;
    if (me == ms) {
      last_end += me < s.size() ? utf8_len(static_cast<unsigned char>(s[me])) : 1;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    out.push_back({ms, me});
  }
  return {};
}

Status Matcher::find_matches(std::string_view s, std::vector<MatchSpan>& out, bool invert) const {
  out.clear();
  if (s.empty()) {
    out.push_back({0, 0, invert});
    return {};
  }
  thread_local std::vector<Span> spans;
  KILN_RETURN_IF_ERROR(find_all(s, spans));
  size_t prev = 0;
  for (const Span& m : spans) {
    if (prev != m.start) out.push_back({prev, m.start, invert});
    out.push_back({m.start, m.end, !invert});
    prev = m.end;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), invert});
  return {};
}

Status Matcher::replace_all(std::string_view s, std::string_view content, std::string& out) const {
  out.clear();
  if (s.empty()) return {};
  thread_local std::vector<Span> spans;
  KILN_RETURN_IF_ERROR(find_all(s, spans));
  size_t prev = 0;
  for (const Span& m : spans) {
    out.append(s.substr(prev, m.start - prev));
    out.append(content);
    prev = m.end;
  }
  out.append(s.substr(prev));
  return {};
}

Result<Matcher> parse_pattern(const json& obj, const std::string& path) {
  const json* p = jfind(obj, "pattern");
  std::string ppath = jkey(path, "pattern");
  if (!p || !p->is_object() || p->size() != 1) {
    return json_error(ppath, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  auto it = p->begin();
  if (!it.value().is_string()) return json_error(jkey(ppath, it.key()), "expected a string");
  std::string value = it.value().get<std::string>();
  if (it.key() == "String") return Matcher::literal(std::move(value));
  if (it.key() == "Regex") {
    auto m = Matcher::regex(value);
    if (!m.ok()) return json_error(jkey(ppath, "Regex"), m.status().message());
    return std::move(m).value();
  }
  return json_error(ppath, "expected {\"String\": ...} or {\"Regex\": ...}, got key \"" + it.key() + "\"");
}

}  // namespace kiln::tok
