// Chat templates: the Python str/list/dict methods templates call, str.format and
// printf-style formatting, and the template globals (range, namespace, dict, joiner,
// raise_exception, strftime_now).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include <utf8proc.h>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {
namespace {

// Python's slice index adjustment for str.find(sub, start, end) and friends.
void adjust_range(const Value& start, const Value& end, int64_t len, int64_t* b, int64_t* e) {
  *b = 0;
  *e = len;
  if (start.is_intlike()) {
    *b = start.i < 0 ? std::max<int64_t>(0, start.i + len) : std::min(start.i, len);
  }
  if (end.is_intlike()) {
    *e = end.i < 0 ? std::max<int64_t>(0, end.i + len) : std::min(end.i, len);
  }
}

std::u32string_view u32sub(const std::u32string& s, int64_t b, int64_t e) {
  if (e <= b) return {};
  return std::u32string_view(s).substr(static_cast<size_t>(b), static_cast<size_t>(e - b));
}

// str.split / str.rsplit.
std::vector<std::string> py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (sep.is_none() || sep.is_undefined()) {
    std::u32string u = decode_utf8(s);
    std::vector<std::pair<size_t, size_t>> words;
    if (!from_right) {
      size_t k = 0;
      while (k < u.size()) {
        while (k < u.size() && py_isspace(u[k])) ++k;
        if (k >= u.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          words.emplace_back(k, u.size());
          break;
        }
        size_t b = k;
        while (k < u.size() && !py_isspace(u[k])) ++k;
        words.emplace_back(b, k);
      }
    } else {
      size_t k = u.size();
      while (k > 0) {
        while (k > 0 && py_isspace(u[k - 1])) --k;
        if (k == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          words.emplace_back(0, k);
          break;
        }
        size_t e = k;
        while (k > 0 && !py_isspace(u[k - 1])) --k;
        words.emplace_back(k, e);
      }
      std::reverse(words.begin(), words.end());
    }
    for (auto [b, e] : words) out.push_back(encode_utf8(std::u32string_view(u).substr(b, e - b)));
    return out;
  }
  const std::string& d = sep.str();
  if (!from_right) {
    size_t start = 0;
    int64_t splits = 0;
    while (maxsplit < 0 || splits < maxsplit) {
      size_t p = s.find(d, start);
      if (p == std::string::npos) break;
      out.push_back(s.substr(start, p - start));
      start = p + d.size();
      ++splits;
    }
    out.push_back(s.substr(start));
    return out;
  }
  size_t end = s.size();
  int64_t splits = 0;
  while (maxsplit < 0 || splits < maxsplit) {
    if (end < d.size()) break;
    size_t p = s.rfind(d, end - d.size());
    if (p == std::string::npos) break;
    out.push_back(s.substr(p + d.size(), end - p - d.size()));
    end = p;
    ++splits;
  }
  out.push_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::string py_title(const std::string& s) {
  std::u32string u = decode_utf8(s);
  bool prev_cased = false;
  for (char32_t& c : u) {
    if (is_cased(c)) {
      c = prev_cased ? to_lower(c) : to_title(c);
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return encode_utf8(u);
}

// ---- str.format

Result<std::string> format_spec(const Value& v, const std::string& spec) {
  if (spec.empty()) return to_str(v);
  // [[fill]align][sign][#][0][width][,|_][.precision][type]
  std::u32string s = decode_utf8(spec);
  size_t k = 0;
  char32_t fill = ' ';
  char align = 0;
  auto is_align = [](char32_t c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  if (s.size() >= 2 && is_align(s[1])) {
    fill = s[0];
    align = static_cast<char>(s[1]);
    k = 2;
  } else if (!s.empty() && is_align(s[0])) {
    align = static_cast<char>(s[0]);
    k = 1;
  }
  char sign = '-';
  if (k < s.size() && (s[k] == '+' || s[k] == '-' || s[k] == ' ')) sign = static_cast<char>(s[k++]);
  bool alt = false;
  if (k < s.size() && s[k] == '#') {
    alt = true;
    ++k;
  }
  if (k < s.size() && s[k] == '0') {
    if (!align) {
      fill = '0';
      align = '=';
    }
    ++k;
  }
  int64_t width = 0;
  while (k < s.size() && s[k] >= '0' && s[k] <= '9') width = width * 10 + (s[k++] - '0');
  char grouping = 0;
  if (k < s.size() && (s[k] == ',' || s[k] == '_')) grouping = static_cast<char>(s[k++]);
  int precision = -1;
  if (k < s.size() && s[k] == '.') {
    ++k;
    precision = 0;
    while (k < s.size() && s[k] >= '0' && s[k] <= '9') precision = precision * 10 + static_cast<int>(s[k++] - '0');
  }
  char type = 0;
  if (k < s.size()) type = static_cast<char>(s[k++]);
  if (k != s.size() || width > (1 << 20)) return type_error("Invalid format specifier '" + spec + "'");
  std::string body;
  std::string prefix;
  if (v.is_string() || (!v.is_number() && type == 0)) {
    if (type && type != 's') return type_error(std::string("Unknown format code '") + type + "' for object of type 'str'");
    std::u32string u = decode_utf8(to_str(v));
    if (precision >= 0 && static_cast<size_t>(precision) < u.size()) u.resize(static_cast<size_t>(precision));
    body = encode_utf8(u);
    if (!align) align = '<';
  } else if (v.is_number()) {
    bool as_int = v.is_intlike() && (type == 0 || type == 'd' || type == 'b' || type == 'o' || type == 'x' ||
                                     type == 'X' || type == 'c' || type == 'n');
    if (!align) align = '>';
    if (as_int) {
      if (v.type == VType::kBool && type == 0) {
        body = v.i ? "True" : "False";
      } else {
        uint64_t mag = v.i < 0 ? static_cast<uint64_t>(-(v.i + 1)) + 1 : static_cast<uint64_t>(v.i);
        int base = type == 'b' ? 2 : type == 'o' ? 8 : (type == 'x' || type == 'X') ? 16 : 10;
        if (type == 'c') {
          append_utf8(body, static_cast<char32_t>(v.i));
        } else {
          if (mag == 0) body = "0";
          while (mag) {
            int d = static_cast<int>(mag % static_cast<uint64_t>(base));
            body.insert(body.begin(), static_cast<char>(d < 10 ? '0' + d : (type == 'X' ? 'A' : 'a') + d - 10));
            mag /= static_cast<uint64_t>(base);
          }
          if (grouping) {
            std::string g;
            int step = base == 10 ? 3 : 4;
            for (size_t x = 0; x < body.size(); ++x) {
              if (x && (body.size() - x) % static_cast<size_t>(step) == 0) g.push_back(grouping);
              g.push_back(body[x]);
            }
            body = g;
          }
          if (alt && base != 10) prefix = base == 2 ? "0b" : base == 8 ? "0o" : (type == 'X' ? "0X" : "0x");
        }
      }
      if (v.i < 0) {
        prefix = "-" + prefix;
      } else if (sign != '-') {
        prefix = std::string(1, sign) + prefix;
      }
    } else {
      double d = v.as_double();
      if (type != 0 && !std::strchr("eEfFgG%n", type)) {
        return type_error(std::string("Unknown format code '") + type + "' for object of type 'float'");
      }
      bool neg = std::signbit(d) && !std::isnan(d);
      double m = std::fabs(d);
      char buf[512];
      if (type == 0 && precision < 0) {
        body = format_float(m);
      } else if (type == '%') {
        std::snprintf(buf, sizeof(buf), "%.*f", precision < 0 ? 6 : std::min(precision, 300), m * 100);
        body = std::string(buf) + "%";
      } else {
        char t = type == 0 || type == 'n' ? 'g' : type;
        int p = precision < 0 ? 6 : std::min(precision, 300);
        if (type == 0 && p == 0) p = 1;
        std::string f = std::string("%") + (alt ? "#" : "") + ".*" + t;
        std::snprintf(buf, sizeof(buf), f.c_str(), p, m);
        body = buf;
        if (type == 0 && body.find_first_of(".einf") == std::string::npos) body += ".0";
      }
      if (neg) {
        prefix = "-";
      } else if (sign != '-') {
        prefix = std::string(1, sign);
      }
    }
  } else {
    return type_error("unsupported format string passed to " + type_name(v) + ".__format__");
  }
  int64_t len = static_cast<int64_t>(count_code_points(prefix + body));
  if (width <= len) return prefix + body;
  if (align == '=') {
    std::string f;
    append_utf8(f, fill);
    std::string out = prefix;
    for (int64_t x = 0; x < width - len; ++x) out += f;
    return out + body;
  }
  return pad(prefix + body, width, fill, align);
}

Result<Value> str_format(Renderer& r, const std::string& fmt, CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  bool used_auto = false, used_manual = false;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') {
        out.push_back('}');
        ++k;
        continue;
      }
      return type_error("Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
      continue;
    }
    size_t close = fmt.find('}', k);
    if (close == std::string::npos) return type_error("Single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    if (field.find('{') != std::string::npos) return type_error("nested replacement fields are not supported");
    k = close;
    std::string spec, conv;
    size_t colon = field.find(':');
    if (colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    size_t bang = field.find('!');
    if (bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field = field.substr(0, bang);
    }
    size_t name_end = field.find_first_of(".[");
    std::string name = field.substr(0, name_end);
    Value v;
    if (name.empty()) {
      if (used_manual) return type_error("cannot switch from manual field specification to automatic field numbering");
      used_auto = true;
      if (auto_idx >= a.pos.size()) return type_error("Replacement index " + std::to_string(auto_idx) + " out of range");
      v = a.pos[auto_idx++];
    } else if (std::all_of(name.begin(), name.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      if (used_auto) return type_error("cannot switch from automatic field numbering to manual field specification");
      used_manual = true;
      size_t idx = std::stoul(name);
      if (idx >= a.pos.size()) return type_error("Replacement index " + name + " out of range");
      v = a.pos[idx];
    } else {
      bool found = false;
      for (auto& [kname, kv] : a.kw) {
        if (kname == name) {
          v = kv;
          found = true;
        }
      }
      if (!found) return type_error("'" + name + "'");
    }
    size_t p = name_end;
    while (p != std::string::npos && p < field.size()) {
      if (field[p] == '.') {
        size_t e = field.find_first_of(".[", p + 1);
        std::string attr = field.substr(p + 1, e == std::string::npos ? std::string::npos : e - p - 1);
        KILN_ASSIGN_OR_RETURN(v, r.get_attr(v, attr));
        p = e;
      } else {
        size_t e = field.find(']', p);
        if (e == std::string::npos) return type_error("Missing ']' in format string");
        std::string key = field.substr(p + 1, e - p - 1);
        bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        KILN_ASSIGN_OR_RETURN(v, r.get_item(v, digits ? Value::integer(std::stoll(key)) : Value::string(key)));
        p = e + 1;
      }
    }
    if (conv == "r" || conv == "a") {
      v = Value::string(repr(v));
    } else if (conv == "s") {
      v = Value::string(to_str(v));
    } else if (!conv.empty()) {
      return type_error("Unknown conversion specifier " + conv);
    }
    KILN_ASSIGN_OR_RETURN(std::string piece, format_spec(v, spec));
    out += piece;
    KILN_RETURN_IF_ERROR(r.check_size(out.size()));
  }
  return Value::string(std::move(out));
}

// ---- methods

Result<Value> str_method(Renderer& r, const std::string& m, const Value& self, CallArgs& a) {
  const std::string& s = self.str();
  auto no_args = [&]() { return ArgBinder(m.c_str(), {}).bind(a, 0); };
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    ArgBinder b(m.c_str(), {"chars"});
    KILN_RETURN_IF_ERROR(b.bind(a, 0));
    const Value* chars = b.has(0) ? &b.get(0) : nullptr;
    if (chars && !chars->is_none() && !chars->is_string()) return type_error(m + " arg must be None or str");
    return Value::string(py_strip(s, chars, m != "rstrip", m != "lstrip"));
  }
  if (m == "split" || m == "rsplit") {
    ArgBinder b(m.c_str(), {"sep", "maxsplit"});
    KILN_RETURN_IF_ERROR(b.bind(a, 0));
    Value sep = b.has(0) ? b.get(0) : Value::none();
    if (!sep.is_none() && !sep.is_string()) return type_error("must be str or None, not " + type_name(sep));
    if (sep.is_string() && sep.str().empty()) return type_error("empty separator");
    int64_t maxsplit = -1;
    if (b.has(1)) {
      KILN_ASSIGN_OR_RETURN(maxsplit, int_arg(b.get(1), m.c_str()));
    }
    std::vector<Value> out;
    for (auto& part : py_split(s, sep, maxsplit, m == "rsplit")) out.push_back(Value::string(std::move(part)));
    return make_list(r, SeqKind::kList, std::move(out));
  }
  if (m == "splitlines") {
    ArgBinder b(m.c_str(), {"keepends"});
    KILN_RETURN_IF_ERROR(b.bind(a, 0));
    std::vector<Value> out;
    for (auto& line : py_splitlines(s, b.has(0) && truthy(b.get(0)))) out.push_back(Value::string(std::move(line)));
    return make_list(r, SeqKind::kList, std::move(out));
  }
  if (m == "startswith" || m == "endswith") {
    ArgBinder b(m.c_str(), {"prefix", "start", "end"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    std::vector<std::string> cands;
    const Value& p = b.get(0);
    if (p.is_string()) {
      cands.push_back(p.str());
    } else if (p.type == VType::kSeq && p.seq()->kind == SeqKind::kTuple) {
      for (const Value& x : p.seq()->items) {
        if (!x.is_string()) return type_error("tuple for " + m + " must only contain str, not " + type_name(x));
        cands.push_back(x.str());
      }
    } else {
      return type_error(m + " first arg must be str or a tuple of str, not " + type_name(p));
    }
    std::string hay = s;
    if (b.has(1) || b.has(2)) {
      std::u32string u = decode_utf8(s);
      int64_t bb, ee;
      adjust_range(b.get(1), b.get(2), static_cast<int64_t>(u.size()), &bb, &ee);
      if (bb > static_cast<int64_t>(u.size())) return Value::boolean(false);
      hay = encode_utf8(u32sub(u, bb, ee));
    }
    for (const auto& c : cands) {
      bool hit = m == "startswith" ? hay.compare(0, c.size(), c) == 0 && hay.size() >= c.size()
                                   : hay.size() >= c.size() && hay.compare(hay.size() - c.size(), c.size(), c) == 0;
      if (hit) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (m == "upper" || m == "lower" || m == "casefold" || m == "title" || m == "capitalize" || m == "swapcase") {
    KILN_RETURN_IF_ERROR(no_args());
    if (m == "upper") return Value::string(py_upper(s));
    if (m == "lower" || m == "casefold") return Value::string(py_lower(s));
    if (m == "title") return Value::string(py_title(s));
    if (m == "capitalize") return Value::string(py_capitalize(s));
    std::u32string u = decode_utf8(s);
    for (char32_t& c : u) c = is_cased_upper(c) ? to_lower(c) : is_cased_lower(c) ? to_upper(c) : c;
    return Value::string(encode_utf8(u));
  }
  if (m == "replace") {
    ArgBinder b(m.c_str(), {"old", "new", "count"});
    KILN_RETURN_IF_ERROR(b.bind(a, 2));
    KILN_ASSIGN_OR_RETURN(std::string old, str_arg(b.get(0), "replace() argument 1"));
    KILN_ASSIGN_OR_RETURN(std::string repl, str_arg(b.get(1), "replace() argument 2"));
    int64_t count = -1;
    if (b.has(2)) {
      KILN_ASSIGN_OR_RETURN(count, int_arg(b.get(2), "replace"));
    }
    return replace_checked(r, s, old, repl, count);
  }
  if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
    ArgBinder b(m.c_str(), {"sub", "start", "end"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(std::string sub_s, str_arg(b.get(0), "substring"));
    std::u32string u = decode_utf8(s), sub = decode_utf8(sub_s);
    int64_t bb, ee;
    adjust_range(b.get(1), b.get(2), static_cast<int64_t>(u.size()), &bb, &ee);
    std::u32string_view hay = u32sub(u, bb, ee);
    if (m == "count") {
      if (bb > static_cast<int64_t>(u.size())) return Value::integer(0);
      if (sub.empty()) return Value::integer(static_cast<int64_t>(hay.size()) + 1);
      int64_t n = 0;
      for (size_t p = hay.find(sub); p != std::u32string_view::npos; p = hay.find(sub, p + sub.size())) ++n;
      return Value::integer(n);
    }
    size_t p = std::u32string_view::npos;
    if (bb <= static_cast<int64_t>(u.size()) && (ee >= bb || sub.empty())) {
      p = (m == "find" || m == "index") ? hay.find(sub) : hay.rfind(sub);
    }
    if (p == std::u32string_view::npos) {
      if (m == "index" || m == "rindex") return type_error("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(static_cast<int64_t>(p) + bb);
  }
  if (m == "format") return str_format(r, s, a);
  if (m == "join") {
    ArgBinder b(m.c_str(), {"iterable"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(b.get(0)));
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!items[k].is_string()) {
        return type_error("sequence item " + std::to_string(k) + ": expected str instance, " + type_name(items[k]) +
                          " found");
      }
      if (k) out += s;
      out += items[k].str();
      KILN_RETURN_IF_ERROR(r.check_size(out.size()));
    }
    return Value::string(std::move(out));
  }
  if (m == "isdigit" || m == "isdecimal" || m == "isnumeric" || m == "isalpha" || m == "isalnum" || m == "isspace" ||
      m == "islower" || m == "isupper" || m == "isascii") {
    KILN_RETURN_IF_ERROR(no_args());
    if (m == "isascii") return Value::boolean(is_ascii(s));
    if (m == "islower") return Value::boolean(py_islower(s));
    if (m == "isupper") return Value::boolean(py_isupper(s));
    std::u32string u = decode_utf8(s);
    if (u.empty()) return Value::boolean(false);
    for (char32_t c : u) {
      bool ok = m == "isdigit" || m == "isdecimal" ? is_decimal(c)
                : m == "isnumeric"                 ? is_numeric(c)
                : m == "isalpha"                   ? is_alpha(c)
                : m == "isalnum"                   ? is_alpha(c) || is_numeric(c)
                                                   : py_isspace(c);
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  if (m == "ljust" || m == "rjust" || m == "center") {
    ArgBinder b(m.c_str(), {"width", "fillchar"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(int64_t width, int_arg(b.get(0), m.c_str()));
    char32_t fill = ' ';
    if (b.has(1)) {
      std::u32string f = b.get(1).is_string() ? decode_utf8(b.get(1).str()) : std::u32string();
      if (f.size() != 1) return type_error("The fill character must be exactly one character long");
      fill = f[0];
    }
    KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(std::max<int64_t>(width, 0)) * 4));
    if (m == "center") return Value::string(py_center(s, width, fill));
    return Value::string(pad(s, width, fill, m == "ljust" ? '<' : '>'));
  }
  if (m == "zfill") {
    ArgBinder b(m.c_str(), {"width"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(int64_t width, int_arg(b.get(0), "zfill"));
    KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(std::max<int64_t>(width, 0))));
    int64_t len = static_cast<int64_t>(count_code_points(s));
    if (width <= len) return self;
    std::string zeros(static_cast<size_t>(width - len), '0');
    if (!s.empty() && (s[0] == '+' || s[0] == '-')) return Value::string(s.substr(0, 1) + zeros + s.substr(1));
    return Value::string(zeros + s);
  }
  if (m == "partition" || m == "rpartition") {
    ArgBinder b(m.c_str(), {"sep"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(std::string sep, str_arg(b.get(0), m.c_str()));
    if (sep.empty()) return type_error("empty separator");
    size_t p = m == "partition" ? s.find(sep) : s.rfind(sep);
    if (p == std::string::npos) {
      if (m == "partition") return make_seq(SeqKind::kTuple, {self, Value::string(""), Value::string("")});
      return make_seq(SeqKind::kTuple, {Value::string(""), Value::string(""), self});
    }
    return make_seq(SeqKind::kTuple,
                    {Value::string(s.substr(0, p)), Value::string(sep), Value::string(s.substr(p + sep.size()))});
  }
  if (m == "removeprefix" || m == "removesuffix") {
    ArgBinder b(m.c_str(), {"affix"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    KILN_ASSIGN_OR_RETURN(std::string x, str_arg(b.get(0), m.c_str()));
    if (m == "removeprefix" && s.compare(0, x.size(), x) == 0 && s.size() >= x.size()) {
      return Value::string(s.substr(x.size()));
    }
    if (m == "removesuffix" && !x.empty() && s.size() >= x.size() &&
        s.compare(s.size() - x.size(), x.size(), x) == 0) {
      return Value::string(s.substr(0, s.size() - x.size()));
    }
    return self;
  }
  return Status(StatusCode::kUnimplemented, "str." + m + "() is not supported in Kiln's chat templates");
}

bool is_str_method(const std::string& m) {
  static const char* const kNames[] = {
      "capitalize", "casefold",   "center",     "count",      "encode",     "endswith",     "expandtabs",
      "find",       "format",     "format_map", "index",      "isalnum",    "isalpha",      "isascii",
      "isdecimal",  "isdigit",    "isidentifier", "islower",  "isnumeric",  "isprintable",  "isspace",
      "istitle",    "isupper",    "join",       "ljust",      "lower",      "lstrip",       "maketrans",
      "partition",  "removeprefix", "removesuffix", "replace", "rfind",     "rindex",       "rjust",
      "rpartition", "rsplit",     "rstrip",     "split",      "splitlines", "startswith",   "strip",
      "swapcase",   "title",      "translate",  "upper",      "zfill"};
  for (const char* n : kNames) {
    if (m == n) return true;
  }
  return false;
}

Result<Value> dict_method(Renderer& r, const std::string& m, const Value& self, CallArgs& a) {
  const DictObj& d = *self.dict();
  if (m == "items" || m == "keys" || m == "values") {
    KILN_RETURN_IF_ERROR(ArgBinder(m.c_str(), {}).bind(a, 0));
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) {
      out.push_back(m == "items" ? make_seq(SeqKind::kTuple, {k, v}) : m == "keys" ? k : v);
    }
    return make_seq(m == "items" ? SeqKind::kDictItems : m == "keys" ? SeqKind::kDictKeys : SeqKind::kDictValues,
                    std::move(out));
  }
  if (m == "get") {
    ArgBinder b("get", {"key", "default"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    const Value* v = d.find(b.get(0));
    if (v) return *v;
    return b.has(1) ? b.get(1) : Value::none();
  }
  if (m == "copy") {
    KILN_RETURN_IF_ERROR(ArgBinder(m.c_str(), {}).bind(a, 0));
    return make_dict(d.items);
  }
  return Status(StatusCode::kUnimplemented, "dict." + m + "() is not supported in Kiln's chat templates");
}

Result<Value> seq_method(Renderer& r, const std::string& m, const Value& self, CallArgs& a) {
  const SeqObj& seq = *self.seq();
  if (m == "count" || m == "index") {
    ArgBinder b(m.c_str(), {"value"});
    KILN_RETURN_IF_ERROR(b.bind(a, 1));
    int64_t n = 0;
    for (size_t k = 0; k < seq.items.size(); ++k) {
      if (py_equal(seq.items[k], b.get(0))) {
        if (m == "index") return Value::integer(static_cast<int64_t>(k));
        ++n;
      }
    }
    if (m == "index") return type_error(repr(b.get(0)) + " is not in list");
    return Value::integer(n);
  }
  if (m == "copy") {
    KILN_RETURN_IF_ERROR(ArgBinder(m.c_str(), {}).bind(a, 0));
    return make_seq(SeqKind::kList, seq.items);
  }
  return Status(StatusCode::kUnimplemented, "list." + m + "() is not supported in Kiln's chat templates");
}

Value bound(const Value& self, const std::string& name,
            Result<Value> (*impl)(Renderer&, const std::string&, const Value&, CallArgs&)) {
  return make_function(name, [self, name, impl](Renderer& r, CallArgs& a, Pos) -> Result<Value> {
    KILN_ASSIGN_OR_RETURN(Value out, impl(r, name, self, a));
    if (self.markup) {  // markupsafe.Markup's str methods return Markup
      if (out.is_string()) out.markup = true;
      if (out.type == VType::kSeq) {
        for (Value& x : out.seq()->items) {
          if (x.is_string()) x.markup = true;
        }
      }
    }
    return out;
  });
}

Value unsafe(const Value& obj, const std::string& name) {
  return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.");
}

// ---- globals

Result<Value> g_range(Renderer& r, CallArgs& a, Pos) {
  if (!a.kw.empty()) return type_error("range() takes no keyword arguments");
  if (a.pos.empty() || a.pos.size() > 3) {
    return type_error("range expected at most 3 arguments, got " + std::to_string(a.pos.size()));
  }
  int64_t start = 0, stop = 0, step = 1;
  std::vector<int64_t> v;
  for (const Value& x : a.pos) {
    if (!x.is_intlike()) {
      if (x.is_undefined()) return type_error(x.undefined_hint());
      return type_error("'" + type_name(x) + "' object cannot be interpreted as an integer");
    }
    v.push_back(x.i);
  }
  if (v.size() == 1) {
    stop = v[0];
  } else {
    start = v[0];
    stop = v[1];
    if (v.size() == 3) step = v[2];
  }
  if (step == 0) return type_error("range() arg 3 must not be zero");
  long double n = step > 0 ? (static_cast<long double>(stop) - start + step - 1) / step
                           : (static_cast<long double>(start) - stop - step - 1) / -step;
  int64_t count = n > 0 ? static_cast<int64_t>(n) : 0;
  if (count > 100000) {
    return Status(StatusCode::kResourceExhausted,
                  "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  }
  KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(count)));
  std::vector<Value> items;
  items.reserve(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) items.push_back(Value::integer(start + k * step));
  Value out = make_seq(SeqKind::kRange, std::move(items));
  out.seq()->range_start = start;
  out.seq()->range_stop = stop;
  out.seq()->range_step = step;
  return out;
}

// dict(*args, **kwargs) as Python builds it.
Result<std::vector<std::pair<Value, Value>>> dict_items_from(const CallArgs& a, const char* fname) {
  std::vector<std::pair<Value, Value>> items;
  if (a.pos.size() > 1) return type_error(std::string(fname) + " expected at most 1 argument, got " +
                                          std::to_string(a.pos.size()));
  if (a.pos.size() == 1) {
    const Value& src = a.pos[0];
    if (src.type == VType::kDict) {
      items = src.dict()->items;
    } else {
      KILN_ASSIGN_OR_RETURN(std::vector<Value> pairs, iterate(src));
      for (const Value& p : pairs) {
        KILN_ASSIGN_OR_RETURN(std::vector<Value> kv, iterate(p));
        if (kv.size() != 2) return type_error("dictionary update sequence element has length " +
                                              std::to_string(kv.size()) + "; 2 is required");
        items.emplace_back(kv[0], kv[1]);
      }
    }
  }
  for (const auto& [k, v] : a.kw) items.emplace_back(Value::string(k), v);
  return items;
}

Result<Value> g_dict(Renderer&, CallArgs& a, Pos) {
  KILN_ASSIGN_OR_RETURN(auto items, dict_items_from(a, "dict"));
  return make_dict(std::move(items));
}

Result<Value> g_namespace(Renderer&, CallArgs& a, Pos) {
  KILN_ASSIGN_OR_RETURN(auto items, dict_items_from(a, "namespace"));
  auto ns = std::make_shared<NamespaceObj>();
  for (auto& [k, v] : items) KILN_RETURN_IF_ERROR(ns->set(to_str(k), v));
  Value out;
  out.type = VType::kNamespace;
  out.obj = std::move(ns);
  return out;
}

Result<Value> g_joiner(Renderer&, CallArgs& a, Pos) {
  ArgBinder b("joiner", {"sep"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  std::string sep = b.has(0) ? to_str(b.get(0)) : ", ";
  auto used = std::make_shared<bool>(false);
  return make_function("joiner", [sep, used](Renderer&, CallArgs&, Pos) -> Result<Value> {
    if (!*used) {
      *used = true;
      return Value::string("");
    }
    return Value::string(sep);
  });
}

Result<Value> g_raise_exception(Renderer&, CallArgs& a, Pos) {
  ArgBinder b("raise_exception", {"message"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  return invalid_argument(to_str(b.get(0)));
}

Result<Value> g_strftime_now(Renderer& r, CallArgs& a, Pos) {
  ArgBinder b("strftime_now", {"format"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  KILN_ASSIGN_OR_RETURN(std::string fmt, str_arg(b.get(0), "strftime() argument 1"));
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  if (fmt.empty()) return Value::string("");
  std::vector<char> buf(fmt.size() * 8 + 256);
  size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  return make_str(r, std::string(buf.data(), n));
}

}  // namespace

bool lookup_method(const Value& obj, const std::string& name, Value* out) {
  switch (obj.type) {
    case VType::kString:
      if (!is_str_method(name)) return false;
      *out = bound(obj, name, str_method);
      return true;
    case VType::kDict:
      if (name == "items" || name == "keys" || name == "values" || name == "get" || name == "copy") {
        *out = bound(obj, name, dict_method);
        return true;
      }
      if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" || name == "clear") {
        *out = unsafe(obj, name);
        return true;
      }
      if (name == "fromkeys") {
        *out = bound(obj, name, dict_method);
        return true;
      }
      return false;
    case VType::kSeq: {
      SeqKind k = obj.seq()->kind;
      if (k != SeqKind::kList && k != SeqKind::kTuple) return false;
      if (name == "count" || name == "index" || (k == SeqKind::kList && name == "copy")) {
        *out = bound(obj, name, seq_method);
        return true;
      }
      if (k == SeqKind::kList && (name == "append" || name == "extend" || name == "insert" || name == "pop" ||
                                  name == "remove" || name == "reverse" || name == "sort" || name == "clear")) {
        *out = unsafe(obj, name);
        return true;
      }
      return false;
    }
    default: return false;
  }
}

Value lookup_global(const std::string& name) {
  static const std::unordered_map<std::string, Value> globals = [] {
    std::unordered_map<std::string, Value> g;
    g["range"] = make_function("range", g_range);
    g["dict"] = make_function("dict", g_dict);
    g["namespace"] = make_function("namespace", g_namespace);
    g["joiner"] = make_function("joiner", g_joiner);
    g["raise_exception"] = make_function("raise_exception", g_raise_exception);
    g["strftime_now"] = make_function("strftime_now", g_strftime_now);
    return g;
  }();
  auto it = globals.find(name);
  if (it == globals.end()) return Value();
  return it->second;
}

// printf-style formatting: %[(key)][flags][width][.precision]type.
Result<Value> percent_format(Renderer& r, const Value& fmt_value, const Value& args) {
  const std::string& fmt = fmt_value.str();
  std::vector<Value> items;
  const DictObj* mapping = nullptr;
  bool tuple = args.type == VType::kSeq && args.seq()->kind == SeqKind::kTuple;
  if (tuple) {
    items = args.seq()->items;
  } else {
    items.push_back(args);
    if (args.type == VType::kDict) mapping = args.dict();
  }
  // Python skips the "not all arguments converted" check when the argument has
  // __getitem__ and is not a tuple or str: a dict, a list, a range, jinja2's Undefined.
  const bool mapping_like = mapping || args.is_undefined() ||
                            (args.type == VType::kSeq &&
                             (args.seq()->kind == SeqKind::kList || args.seq()->kind == SeqKind::kRange));
  size_t next = 0;
  bool used_mapping = false;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) return type_error("incomplete format");
    Value arg;
    bool have_arg = false;
    if (fmt[k] == '(') {
      size_t close = fmt.find(')', k);
      if (close == std::string::npos) return type_error("incomplete format key");
      if (!mapping) return type_error("format requires a mapping");
      const Value* v = mapping->find(std::string_view(fmt).substr(k + 1, close - k - 1));
      if (!v) return type_error("'" + fmt.substr(k + 1, close - k - 1) + "'");
      arg = *v;
      have_arg = true;
      used_mapping = true;
      k = close + 1;
    }
    std::string flags;
    while (k < fmt.size() && std::strchr("-+ #0", fmt[k]) && fmt[k]) flags.push_back(fmt[k++]);
    int width = 0, precision = -1;
    while (k < fmt.size() && fmt[k] >= '0' && fmt[k] <= '9') width = std::min(width * 10 + (fmt[k++] - '0'), 1 << 20);
    if (k < fmt.size() && fmt[k] == '.') {
      ++k;
      precision = 0;
      while (k < fmt.size() && fmt[k] >= '0' && fmt[k] <= '9') {
        precision = std::min(precision * 10 + (fmt[k++] - '0'), 1000);
      }
    }
    while (k < fmt.size() && (fmt[k] == 'h' || fmt[k] == 'l' || fmt[k] == 'L')) ++k;
    if (k >= fmt.size()) return type_error("incomplete format");
    char type = fmt[k];
    if (type == '%') {
      out.push_back('%');
      continue;
    }
    if (!have_arg) {
      if (next >= items.size()) return type_error("not enough arguments for format string");
      arg = items[next++];
    }
    KILN_RETURN_IF_ERROR(r.check_size(out.size() + static_cast<size_t>(width)));
    std::string piece;
    bool left = flags.find('-') != std::string::npos;
    if (type == 's' || type == 'r' || type == 'a') {
      std::u32string u = decode_utf8(type == 's' ? to_str(arg) : repr(arg));
      if (precision >= 0 && static_cast<size_t>(precision) < u.size()) u.resize(static_cast<size_t>(precision));
      piece = pad(encode_utf8(u), width, ' ', left ? '<' : '>');
    } else if (std::strchr("diouxXeEfFgGc", type)) {
      if (arg.is_undefined()) return type_error(arg.undefined_hint());
      if (!arg.is_number()) {
        if (type == 'c' && arg.is_string() && count_code_points(arg.str()) == 1) {
          piece = pad(arg.str(), width, ' ', left ? '<' : '>');
          out += piece;
          continue;
        }
        return type_error(std::string("%") + type + " format: a real number is required, not " + type_name(arg));
      }
      std::string spec = "%" + flags + (width ? std::to_string(width) : "") +
                         (precision >= 0 ? "." + std::to_string(precision) : "");
      char buf[2048];
      if (std::strchr("diu", type)) {
        int64_t iv = 0;
        if (arg.type == VType::kFloat) {
          if (!float_to_int(arg.f, &iv)) return type_error("cannot convert float to integer");
        } else {
          iv = arg.i;
        }
        std::snprintf(buf, sizeof(buf), (spec + "lld").c_str(), static_cast<long long>(iv));
      } else if (std::strchr("oxX", type)) {
        if (arg.type == VType::kFloat) {
          return type_error(std::string("%") + type + " format: an integer is required, not float");
        }
        long long iv = arg.i;
        std::string sp = spec;
        std::string alt_prefix;
        if (flags.find('#') != std::string::npos) {
          // Python writes 0o for octal; C's # gives a bare 0.
          sp.erase(std::remove(sp.begin(), sp.end(), '#'), sp.end());
          alt_prefix = type == 'o' ? "0o" : type == 'x' ? "0x" : "0X";
        }
        char digits[64];
        unsigned long long mag = iv < 0 ? 0ULL - static_cast<unsigned long long>(iv) : static_cast<unsigned long long>(iv);
        std::snprintf(digits, sizeof(digits), type == 'o' ? "%llo" : type == 'x' ? "%llx" : "%llX", mag);
        std::string body = std::string(iv < 0 ? "-" : "") + alt_prefix + digits;
        std::snprintf(buf, sizeof(buf), "%s", pad(body, width, ' ', left ? '<' : '>').c_str());
      } else if (type == 'c') {
        std::string ch;
        append_utf8(ch, static_cast<char32_t>(arg.i));
        std::snprintf(buf, sizeof(buf), "%s", pad(ch, width, ' ', left ? '<' : '>').c_str());
      } else {
        std::snprintf(buf, sizeof(buf), (spec + type).c_str(), arg.as_double());
      }
      piece = buf;
    } else {
      return type_error(std::string("unsupported format character '") + type + "'");
    }
    out += piece;
    KILN_RETURN_IF_ERROR(r.check_size(out.size()));
  }
  if (tuple ? next < items.size() : (next == 0 && !used_mapping && !mapping_like)) {
    return type_error("not all arguments converted during string formatting");
  }
  return Value::string(std::move(out), fmt_value.markup);
}

}  // namespace kiln::chat_template_detail
