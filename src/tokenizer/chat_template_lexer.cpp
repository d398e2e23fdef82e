// Chat templates: the lexer. Splits a template into data and the tokens of
// {{ ... }} and {% ... %}, dropping {# ... #}, with jinja2's whitespace rules as
// transformers configures them (trim_blocks, lstrip_blocks, keep_trailing_newline
// off) and the -/+ markers:
//  - newlines (\r\n, \r, \n) become \n and one trailing newline is dropped;
//  - "{%-", "{{-", "{#-" strip all whitespace before the tag; "-%}", "-}}", "-#}"
//    all whitespace after it;
//  - trim_blocks: "%}" and "#}" eat one "\n" right after them ("+%}" does not);
//  - lstrip_blocks: a "{%" or "{#" (not "{{", not "{%+") preceded on its line only by
//    whitespace takes that whitespace away; "its line" starts after the last newline
//    of the preceding text, or at that text's start if the previous tag's end ate a
//    newline (or at the template's start).
#include <algorithm>
#include <cstring>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {
namespace {

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k) {
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
    }
  }

  Result<std::vector<Token>> run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (pos < n) {
      size_t p = find_tag(pos);
      if (p == std::string::npos) {
        emit_data(pos, n);
        break;
      }
      const char kind = src_[p + 1];  // '{', '%' or '#'
      char sign = 0;
      if (p + 2 < n && (src_[p + 2] == '-' || src_[p + 2] == '+')) sign = src_[p + 2];
      size_t raw_body = 0;
      const bool raw = kind == '%' && match_raw_begin(p, &raw_body);

      // Whitespace control of the text before the tag.
      size_t text_end = strip_before(pos, p, sign, kind != '{', line_starting);
      emit_data(pos, text_end);

      if (raw) {
        KILN_RETURN_IF_ERROR(lex_raw(raw_body, &pos, &line_starting));
        continue;
      }
      size_t q = p + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        KILN_RETURN_IF_ERROR(lex_comment(p, q, &pos, &line_starting));
        continue;
      }
      KILN_RETURN_IF_ERROR(lex_tag(p, q, kind == '%', &pos, &line_starting));
    }
    Token eof;
    eof.type = TokType::kEof;
    eof.pos = pos_of(n);
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  // Line and column (in code points, from 1) of a byte offset. Offsets mostly grow,
  // so the column count resumes from the previous answer on the same line.
  Pos pos_of(size_t offset) const {
    size_t line = static_cast<size_t>(std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) -
                                      line_starts_.begin());
    size_t start = line_starts_[line - 1];
    int col = 1;
    if (memo_line_ == line && memo_offset_ <= offset) {
      start = memo_offset_;
      col = memo_col_;
    }
    for (size_t k = start; k < offset && k < src_.size(); ++k) {
      if ((static_cast<unsigned char>(src_[k]) & 0xC0) != 0x80) ++col;
    }
    memo_line_ = line;
    memo_offset_ = offset;
    memo_col_ = col;
    return Pos{static_cast<int>(line), col};
  }

  Status fail(size_t offset, const std::string& msg) const { return error_at(pos_of(offset), msg); }

  size_t find_tag(size_t from) const {
    size_t p = from;
    while (true) {
      p = src_.find('{', p);
      if (p == std::string::npos || p + 1 >= src_.size()) return std::string::npos;
      char c = src_[p + 1];
      if (c == '{' || c == '%' || c == '#') return p;
      ++p;
    }
  }

  // Python's \s on str: one code point of Unicode whitespace at `k`; returns its length or 0.
  size_t space_len(size_t k) const {
    unsigned char c = static_cast<unsigned char>(src_[k]);
    if (c < 0x80) return py_isspace(c) ? 1 : 0;
    size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    if (k + len > src_.size()) return 0;
    std::u32string u = decode_utf8(std::string_view(src_).substr(k, len));
    return u.size() == 1 && py_isspace(u[0]) ? len : 0;
  }

  size_t skip_spaces(size_t k) const {
    while (k < src_.size()) {
      size_t l = space_len(k);
      if (!l) break;
      k += l;
    }
    return k;
  }

  // The end of the data text [start, tag) once the tag's whitespace control applies.
  size_t strip_before(size_t start, size_t tag, char sign, bool lstrip_applies, bool line_starting) const {
    std::string_view text(src_.data() + start, tag - start);
    if (sign == '-') {
      std::u32string u = decode_utf8(text);
      size_t e = u.size();
      while (e > 0 && py_isspace(u[e - 1])) --e;
      return start + encode_utf8(std::u32string_view(u).substr(0, e)).size();
    }
    if (sign == '+' || !lstrip_applies) return tag;
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return tag;
    if (l_pos >= text.size()) return tag;
    std::u32string rest = decode_utf8(text.substr(l_pos));
    for (char32_t c : rest) {
      if (!py_isspace(c)) return tag;
    }
    return start + l_pos;
  }

  void emit_data(size_t b, size_t e) {
    if (e <= b) return;
    Token t;
    t.type = TokType::kData;
    t.pos = pos_of(b);
    t.text = src_.substr(b, e - b);
    tokens_.push_back(std::move(t));
  }

  bool starts_with(size_t k, const char* s) const {
    size_t len = std::strlen(s);
    return k + len <= src_.size() && src_.compare(k, len, s) == 0;
  }

  // "{%" [-+] \s* "raw" \s* ("-%}" \s* | "%}"); sets *body to the offset after it.
  bool match_raw_begin(size_t p, size_t* body) const {
    size_t k = p + 2;
    if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) ++k;
    k = skip_spaces(k);
    if (!starts_with(k, "raw")) return false;
    k = skip_spaces(k + 3);
    if (starts_with(k, "-%}")) {
      *body = skip_spaces(k + 3);
      return true;
    }
    if (starts_with(k, "%}")) {
      *body = k + 2;
      return true;
    }
    return false;
  }

  Status lex_raw(size_t body, size_t* pos, bool* line_starting) {
    // The raw begin tag itself never eats a newline (jinja2 gives it no trim suffix).
    bool body_line_start = body > 0 && src_[body - 1] == '\n';
    size_t p = body;
    while (true) {
      p = src_.find("{%", p);
      if (p == std::string::npos) return fail(body, "Missing end of raw directive");
      size_t k = p + 2;
      char sign = 0;
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) sign = src_[k++];
      k = skip_spaces(k);
      if (!starts_with(k, "endraw")) {
        ++p;
        continue;
      }
      k = skip_spaces(k + 6);
      size_t end;
      if (starts_with(k, "+%}")) {
        end = k + 3;
      } else if (starts_with(k, "-%}")) {
        end = skip_spaces(k + 3);
      } else if (starts_with(k, "%}")) {
        end = k + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        ++p;
        continue;
      }
      size_t text_end = strip_before(body, p, sign, true, body_line_start);
      emit_data(body, text_end);
      *pos = end;
      *line_starting = src_[end - 1] == '\n';
      return Status::ok_status();
    }
  }

  Status lex_comment(size_t tag, size_t q, size_t* pos, bool* line_starting) {
    for (size_t k = q; k + 1 < src_.size(); ++k) {
      size_t end = 0;
      if (starts_with(k, "+#}")) {
        end = k + 3;
      } else if (starts_with(k, "-#}")) {
        end = skip_spaces(k + 3);
      } else if (starts_with(k, "#}")) {
        end = k + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      *pos = end;
      *line_starting = src_[end - 1] == '\n';
      return Status::ok_status();
    }
    return fail(tag, "Missing end of comment tag");
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
  static bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

  // (\d+_)*\d+ at k; returns the end or npos.
  size_t match_digits(size_t k) const {
    if (k >= src_.size() || !is_digit(src_[k])) return std::string::npos;
    while (true) {
      while (k < src_.size() && is_digit(src_[k])) ++k;
      if (k + 1 < src_.size() && src_[k] == '_' && is_digit(src_[k + 1])) {
        ++k;
        continue;
      }
      return k;
    }
  }

  static std::string without_underscores(std::string_view s) {
    std::string out;
    for (char c : s) {
      if (c != '_') out.push_back(c);
    }
    return out;
  }

  // jinja2's float_re at k (not right after a '.'); returns the end or npos.
  size_t match_float(size_t k) const {
    if (k > 0 && src_[k - 1] == '.') return std::string::npos;
    size_t e = match_digits(k);
    if (e == std::string::npos) return e;
    auto exponent = [&](size_t x) -> size_t {
      if (x >= src_.size() || (src_[x] != 'e' && src_[x] != 'E')) return std::string::npos;
      ++x;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      return match_digits(x);
    };
    if (e < src_.size() && src_[e] == '.') {
      size_t f = match_digits(e + 1);
      if (f != std::string::npos) {
        size_t x = exponent(f);
        return x != std::string::npos ? x : f;
      }
    }
    return exponent(e);
  }

  // jinja2's integer_re at k: 0b / 0o / 0x prefixed, [1-9](_?\d)*, or 0(_?0)*.
  size_t match_integer(size_t k, int64_t* value, bool* overflow) const {
    const size_t n = src_.size();
    *overflow = false;
    auto accumulate = [&](int base, size_t b, size_t e) {
      int64_t v = 0;
      for (size_t x = b; x < e; ++x) {
        char c = src_[x];
        if (c == '_') continue;
        int d = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
        if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) *overflow = true;
      }
      *value = v;
    };
    if (src_[k] == '0' && k + 1 < n) {
      char p = static_cast<char>(src_[k + 1] | 0x20);
      int base = p == 'b' ? 2 : p == 'o' ? 8 : p == 'x' ? 16 : 0;
      if (base) {
        auto ok = [&](char c) {
          c = static_cast<char>(c | 0x20);
          if (base == 2) return c == '0' || c == '1';
          if (base == 8) return c >= '0' && c <= '7';
          return is_digit(c) || (c >= 'a' && c <= 'f');
        };
        size_t x = k + 2, last = std::string::npos;
        while (true) {
          size_t y = x;
          if (y < n && src_[y] == '_') ++y;
          if (y < n && ok(src_[y])) {
            x = y + 1;
            last = x;
          } else {
            break;
          }
        }
        if (last != std::string::npos) {
          accumulate(base, k + 2, last);
          return last;
        }
      }
    }
    size_t x = k + 1;
    if (src_[k] == '0') {
      while (true) {
        size_t y = x;
        if (y < n && src_[y] == '_') ++y;
        if (y < n && src_[y] == '0') {
          x = y + 1;
        } else {
          break;
        }
      }
    } else {
      while (true) {
        size_t y = x;
        if (y < n && src_[y] == '_') ++y;
        if (y < n && is_digit(src_[y])) {
          x = y + 1;
        } else {
          break;
        }
      }
    }
    accumulate(10, k, x);
    return x;
  }

  // A string literal's value: Python's "unicode-escape" decoding of its body.
  Status decode_string(size_t start, std::string_view body, std::string* out) const {
    out->clear();
    auto hexval = [](char c) -> int {
      if (is_digit(c)) return c - '0';
      c = static_cast<char>(c | 0x20);
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    for (size_t k = 0; k < body.size(); ++k) {
      char c = body[k];
      if (c != '\\' || k + 1 >= body.size()) {
        out->push_back(c);
        continue;
      }
      char e = body[++k];
      switch (e) {
        case '\n': break;
        case '\\': out->push_back('\\'); break;
        case '\'': out->push_back('\''); break;
        case '"': out->push_back('"'); break;
        case 'a': out->push_back('\a'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'v': out->push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (size_t d = 0; d < digits; ++d) {
            int h = k + 1 + d < body.size() ? hexval(body[k + 1 + d]) : -1;
            if (h < 0) return fail(start, "invalid \\" + std::string(1, e) + " escape in a string literal");
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          if (cp > 0x10FFFF) return fail(start, "illegal Unicode character in a string literal");
          k += digits;
          append_utf8(*out, cp);
          break;
        }
        case 'N': return fail(start, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int d = 0; d < 2 && k + 1 < body.size() && body[k + 1] >= '0' && body[k + 1] <= '7'; ++d) {
              cp = cp * 8 + static_cast<uint32_t>(body[++k] - '0');
            }
            append_utf8(*out, cp);
          } else {
            out->push_back('\\');
            out->push_back(e);
          }
      }
    }
    return Status::ok_status();
  }

  Status lex_tag(size_t tag, size_t q, bool block, size_t* pos, bool* line_starting) {
    Token begin;
    begin.type = block ? TokType::kBlockBegin : TokType::kVarBegin;
    begin.pos = pos_of(tag);
    tokens_.push_back(begin);
    std::vector<char> balance;
    size_t k = q;
    const size_t n = src_.size();
    while (true) {
      if (k >= n) {
        return fail(tag, block ? "unexpected end of template, expected end of block statement ('%}')"
                               : "unexpected end of template, expected end of print statement ('}}')");
      }
      if (balance.empty()) {
        size_t end = 0;
        if (block) {
          if (starts_with(k, "+%}")) {
            end = k + 3;
          } else if (starts_with(k, "-%}")) {
            end = skip_spaces(k + 3);
          } else if (starts_with(k, "%}")) {
            end = k + 2;
            if (end < n && src_[end] == '\n') ++end;
          }
        } else {
          if (starts_with(k, "-}}")) {
            end = skip_spaces(k + 3);
          } else if (starts_with(k, "}}")) {
            end = k + 2;
          }
        }
        if (end) {
          Token t;
          t.type = block ? TokType::kBlockEnd : TokType::kVarEnd;
          t.pos = pos_of(k);
          tokens_.push_back(t);
          *pos = end;
          *line_starting = src_[end - 1] == '\n';
          return Status::ok_status();
        }
      }
      if (size_t l = space_len(k)) {
        k += l;
        continue;
      }
      Token t;
      t.pos = pos_of(k);
      char c = src_[k];
      size_t e;
      if ((e = match_float(k)) != std::string::npos) {
        t.type = TokType::kFloat;
        std::string digits = without_underscores(std::string_view(src_).substr(k, e - k));
        t.fval = std::strtod(digits.c_str(), nullptr);
        k = e;
      } else if (is_digit(c)) {
        bool overflow = false;
        e = match_integer(k, &t.ival, &overflow);
        if (overflow) return fail(k, "integer literal too large (Kiln's templates use 64-bit integers)");
        t.type = TokType::kInt;
        k = e;
      } else if (is_name_start(c)) {
        e = k;
        while (e < n && is_name_char(src_[e])) ++e;
        t.type = TokType::kName;
        t.text = src_.substr(k, e - k);
        k = e;
      } else if (c == '\'' || c == '"') {
        e = k + 1;
        while (e < n && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
        if (e >= n) return fail(k, "unexpected end of string literal");
        t.type = TokType::kString;
        KILN_RETURN_IF_ERROR(decode_string(k, std::string_view(src_).substr(k + 1, e - k - 1), &t.text));
        k = e + 1;
      } else {
        static const char* const kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
        t.type = TokType::kOp;
        for (const char* op : kOps2) {
          if (starts_with(k, op)) t.text = op;
        }
        if (t.text.empty()) {
          if (!std::strchr("+-/*%~[](){}><=.:|,;", c) || c == 0) {
            return fail(k, std::string("unexpected char ") + repr_string(std::string(1, c)));
          }
          t.text = std::string(1, c);
        }
        if (c == '(' || c == '[' || c == '{') {
          balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
        } else if (t.text == ")" || t.text == "]" || t.text == "}") {
          if (balance.empty()) return fail(k, "unexpected '" + t.text + "'");
          char expected = balance.back();
          balance.pop_back();
          if (expected != c) return fail(k, "unexpected '" + t.text + "', expected '" + std::string(1, expected) + "'");
        }
        k += t.text.size();
      }
      tokens_.push_back(std::move(t));
    }
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  mutable size_t memo_line_ = 0, memo_offset_ = 0;
  mutable int memo_col_ = 1;
};

// \r\n, \r and \n all become \n; one trailing newline is dropped (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    char c = source[k];
    if (c == '\r') {
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      out.push_back('\n');
    } else {
      out.push_back(c);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

Result<std::vector<Token>> tokenize(std::string_view source) {
  Lexer lexer(normalize_newlines(source));
  return lexer.run();
}

}  // namespace kiln::chat_template_detail
