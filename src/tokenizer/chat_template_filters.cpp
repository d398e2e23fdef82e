// Chat templates: jinja2's built-in filters and tests (plus transformers' tojson),
// the Python str/list/dict methods templates call, the template globals, and
// Python's printf-style and str.format formatting.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <unordered_map>

#include <utf8proc.h>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {

// ---- argument binding

Status ArgBinder::bind(CallArgs& args, size_t required, bool allow_extra_pos, bool allow_extra_kw) {
  const size_t n = params_.size();
  values_.assign(n, Value());
  present_.assign(n, false);
  extra_pos.clear();
  extra_kw.clear();
  for (size_t k = 0; k < args.pos.size(); ++k) {
    if (k < n) {
      values_[k] = args.pos[k];
      present_[k] = true;
    } else if (allow_extra_pos) {
      extra_pos.push_back(args.pos[k]);
    } else {
      return type_error(std::string(fname_) + "() takes at most " + std::to_string(n) + " argument(s) (" +
                        std::to_string(args.pos.size()) + " given)");
    }
  }
  for (auto& [key, value] : args.kw) {
    size_t idx = n;
    for (size_t k = 0; k < n; ++k) {
      if (key == params_[k]) idx = k;
    }
    if (idx == n) {
      if (!allow_extra_kw) {
        return type_error(std::string(fname_) + "() got an unexpected keyword argument '" + key + "'");
      }
      extra_kw.emplace_back(key, value);
      continue;
    }
    if (present_[idx]) {
      return type_error(std::string(fname_) + "() got multiple values for argument '" + key + "'");
    }
    values_[idx] = value;
    present_[idx] = true;
  }
  for (size_t k = 0; k < required && k < n; ++k) {
    if (!present_[k]) {
      return type_error(std::string(fname_) + "() missing required argument '" + params_[k] + "'");
    }
  }
  return Status::ok_status();
}

// ---- helpers shared with chat_template_methods.cpp

Result<Value> make_str(Renderer& r, std::string s, bool markup) {
  KILN_RETURN_IF_ERROR(r.check_size(s.size()));
  return Value::string(std::move(s), markup);
}

Result<Value> make_list(Renderer& r, SeqKind kind, std::vector<Value> items) {
  KILN_RETURN_IF_ERROR(r.check_size(items.size()));
  Value v = make_seq(kind, std::move(items));
  if (value_depth(v) > kMaxValueDepth) return type_error("value nests too deeply");
  return v;
}

Result<int64_t> int_arg(const Value& v, const char* what) {
  if (v.is_intlike()) return v.i;
  if (v.is_undefined()) return type_error(v.undefined_hint());
  return type_error(std::string(what) + ": an integer is required, not '" + type_name(v) + "'");
}

Result<std::string> str_arg(const Value& v, const char* what) {
  if (v.is_string()) return v.str();
  if (v.is_undefined()) return type_error(v.undefined_hint());
  return type_error(std::string(what) + " must be str, not " + type_name(v));
}

bool is_cased_upper(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_LU;
}
bool is_cased_lower(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_LL;
}
bool is_cased(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}
bool is_alpha(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}
bool is_decimal(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_ND;
}
bool is_numeric(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}
char32_t to_upper(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t to_lower(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
char32_t to_title(char32_t c) { return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))); }

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {
    std::u32string u = decode_utf8(s);
    int64_t n = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || n < count) {
        out += repl;
        ++n;
      }
      if (k < u.size()) append_utf8(out, u[k]);
    }
    return out;
  }
  size_t start = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += repl;
    start = p + old.size();
    ++n;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string pad(const std::string& s, int64_t width, char32_t fill, char align) {
  int64_t len = static_cast<int64_t>(count_code_points(s));
  if (width <= len) return s;
  int64_t marg = width - len;
  int64_t left = align == '<' ? 0 : align == '>' ? marg : marg / 2;
  std::string f;
  append_utf8(f, fill);
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += f;
  out += s;
  for (int64_t k = 0; k < marg - left; ++k) out += f;
  return out;
}

std::string py_center(const std::string& s, int64_t width, char32_t fill) {
  int64_t len = static_cast<int64_t>(count_code_points(s));
  if (width <= len) return s;
  int64_t marg = width - len;
  int64_t left = marg / 2 + (marg & width & 1);
  std::string f;
  append_utf8(f, fill);
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += f;
  out += s;
  for (int64_t k = 0; k < marg - left; ++k) out += f;
  return out;
}

bool float_to_int(double d, int64_t* out) {
  if (!std::isfinite(d)) return false;
  double t = std::trunc(d);
  if (t < -9.2233720368547758e18 || t >= 9.2233720368547758e18) return false;
  *out = static_cast<int64_t>(t);
  return true;
}

Result<Value> replace_checked(Renderer& r, const std::string& s, const std::string& old, const std::string& repl,
                              int64_t count) {
  if (!repl.empty() && repl.size() > old.size()) {  // refuse before building a huge string
    size_t occurrences = old.empty() ? count_code_points(s) + 1 : 0;
    if (!old.empty()) {
      for (size_t p = s.find(old); p != std::string::npos; p = s.find(old, p + old.size())) ++occurrences;
    }
    KILN_RETURN_IF_ERROR(r.check_size(s.size() + occurrences * (repl.size() - old.size())));
  }
  return make_str(r, py_replace(s, old, repl, count));
}

// str.islower() / str.isupper(): some cased character and none of the other case.
bool py_islower(std::string_view s) {
  bool cased = false;
  for (char32_t c : decode_utf8(s)) {
    if (is_cased_upper(c) || utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_LT) {
      return false;
    }
    if (is_cased_lower(c)) cased = true;
  }
  return cased;
}

bool py_isupper(std::string_view s) {
  bool cased = false;
  for (char32_t c : decode_utf8(s)) {
    if (is_cased_lower(c) || utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_LT) {
      return false;
    }
    if (is_cased_upper(c)) cased = true;
  }
  return cased;
}


namespace {

// jinja2's |title: runs split at [-\s({\[<]+; each run's first character upper, the rest lower.
std::string jinja_title(const std::string& s) {
  std::u32string u = decode_utf8(s);
  auto is_sep = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c); };
  std::u32string out;
  size_t k = 0;
  while (k < u.size()) {
    bool sep = is_sep(u[k]);
    size_t b = k;
    while (k < u.size() && is_sep(u[k]) == sep) ++k;
    for (size_t x = b; x < k; ++x) out.push_back(x == b ? to_upper(u[x]) : to_lower(u[x]));
  }
  return encode_utf8(out);
}

// ---- attribute paths (map(attribute=...), selectattr, sort(attribute=...))

std::vector<Value> attribute_parts(const Value& attr) {
  std::vector<Value> parts;
  if (attr.is_none() || attr.is_undefined()) return parts;
  if (!attr.is_string()) {
    parts.push_back(attr);
    return parts;
  }
  const std::string& s = attr.str();
  size_t start = 0;
  while (true) {
    size_t p = s.find('.', start);
    std::string part = s.substr(start, p == std::string::npos ? std::string::npos : p - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits && part.size() < 18) {
      parts.push_back(Value::integer(std::stoll(part)));
    } else {
      parts.push_back(Value::string(part));
    }
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return parts;
}

Value ignore_case(const Value& v) {
  if (v.is_string()) return Value::string(py_lower(v.str()));
  return v;
}

struct AttrGetter {
  std::vector<Value> parts;
  bool lower = false;
  bool has_default = false;
  Value default_value;
  Result<Value> get(Renderer& r, Value item) const {
    for (const Value& p : parts) {
      KILN_ASSIGN_OR_RETURN(item, r.get_item(item, p));
      if (has_default && item.is_undefined()) item = default_value;
    }
    return lower ? ignore_case(item) : item;
  }
};

// The key of make_multi_attrgetter: one value per comma-separated attribute path.
Result<Value> multi_key(Renderer& r, const Value& attribute, bool lower, const Value& item) {
  std::vector<Value> keys;
  std::vector<Value> paths;
  if (attribute.is_string()) {
    size_t start = 0;
    const std::string& s = attribute.str();
    while (true) {
      size_t p = s.find(',', start);
      paths.push_back(Value::string(s.substr(start, p == std::string::npos ? std::string::npos : p - start)));
      if (p == std::string::npos) break;
      start = p + 1;
    }
  } else {
    paths.push_back(attribute);
  }
  for (const Value& path : paths) {
    AttrGetter g{attribute_parts(path), lower, false, Value()};
    KILN_ASSIGN_OR_RETURN(Value k, g.get(r, item));
    keys.push_back(std::move(k));
  }
  return make_seq(SeqKind::kList, std::move(keys));
}

// Stable sort with Python comparisons; the first comparison error wins.
Status sort_values(std::vector<std::pair<Value, Value>>& keyed, bool reverse) {
  Status err;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    if (!err.ok()) return false;
    auto c = reverse ? py_compare(y.first, x.first, "<") : py_compare(x.first, y.first, "<");
    if (!c.ok()) {
      err = c.status();
      return false;
    }
    return *c == -1;
  });
  return err;
}

// ---- filters

using Args = CallArgs;

Result<Value> f_abs(Renderer&, const Value& v, Args& a, Pos) {
  if (v.type == VType::kFloat) return Value::number(std::fabs(v.f));
  if (v.is_intlike()) {
    if (v.i == INT64_MIN) return type_error("integer overflow");
    return Value::integer(v.i < 0 ? -v.i : v.i);
  }
  if (v.is_undefined()) return type_error(v.undefined_hint());
  return type_error("bad operand type for abs(): '" + type_name(v) + "'");
}

Result<Value> f_attr(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("attr", {"name"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  KILN_ASSIGN_OR_RETURN(std::string name, str_arg(b.get(0), "attribute name"));
  Value m;
  if (!v.is_undefined() && lookup_method(v, name, &m)) return m;
  if (v.type == VType::kNamespace || v.type == VType::kLoop) return r.get_attr(v, name);
  if (v.is_undefined()) return type_error(v.undefined_hint());
  return Value::undefined("'" + object_type_repr(v) + "' has no attribute '" + name + "'");
}

Result<Value> f_batch(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("batch", {"linecount", "fill_with"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  KILN_ASSIGN_OR_RETURN(int64_t n, int_arg(b.get(0), "batch"));
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::vector<Value> out;
  std::vector<Value> tmp;
  for (Value& item : items) {
    if (static_cast<int64_t>(tmp.size()) == n) {
      out.push_back(make_seq(SeqKind::kList, std::move(tmp)));
      tmp.clear();
    }
    tmp.push_back(std::move(item));
  }
  if (!tmp.empty()) {
    if (b.has(1) && !b.get(1).is_none()) {
      while (static_cast<int64_t>(tmp.size()) < n) tmp.push_back(b.get(1));
    }
    out.push_back(make_seq(SeqKind::kList, std::move(tmp)));
  }
  return make_list(r, SeqKind::kIterator, std::move(out));
}

Result<Value> f_capitalize(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("capitalize", {}).bind(a, 0));
  return make_str(r, py_capitalize(to_str(v)), v.markup);
}

Result<Value> f_center(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("center", {"width"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  int64_t width = 80;
  if (b.has(0)) {
    KILN_ASSIGN_OR_RETURN(width, int_arg(b.get(0), "center"));
  }
  KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(std::max<int64_t>(width, 0))));
  return make_str(r, py_center(to_str(v), width, ' '), v.markup);
}

Result<Value> f_length(Renderer&, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("length", {}).bind(a, 0));
  KILN_ASSIGN_OR_RETURN(int64_t n, py_len(v));
  return Value::integer(n);
}

Result<Value> f_default(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("default", {"default_value", "boolean"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  bool boolean = b.has(1) && truthy(b.get(1));
  if (v.is_undefined() || (boolean && !truthy(v))) return b.has(0) ? b.get(0) : Value::string("");
  return v;
}

Result<Value> f_dictsort(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("dictsort", {"case_sensitive", "by", "reverse"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  bool case_sensitive = b.has(0) && truthy(b.get(0));
  size_t pos = 0;
  if (b.has(1)) {
    std::string by = to_str(b.get(1));
    if (by == "value") {
      pos = 1;
    } else if (by != "key") {
      return type_error("You can only sort by either \"key\" or \"value\"");
    }
  }
  if (v.type != VType::kDict) return type_error("'" + type_name(v) + "' object has no attribute 'items'");
  std::vector<std::pair<Value, Value>> keyed;
  for (const auto& [k, val] : v.dict()->items) {
    Value key = pos == 0 ? k : val;
    if (!case_sensitive) key = ignore_case(key);
    keyed.emplace_back(key, make_seq(SeqKind::kTuple, {k, val}));
  }
  KILN_RETURN_IF_ERROR(sort_values(keyed, b.has(2) && truthy(b.get(2))));
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return make_list(r, SeqKind::kList, std::move(out));
}

Result<Value> f_escape(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("escape", {}).bind(a, 0));
  if (v.is_string() && v.markup) return v;
  return make_str(r, html_escape(to_str(v)), true);
}

Result<Value> f_forceescape(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("forceescape", {}).bind(a, 0));
  return make_str(r, html_escape(to_str(v)), true);
}

Result<Value> f_first(Renderer&, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("first", {}).bind(a, 0));
  if (v.type == VType::kSeq && v.seq()->kind == SeqKind::kIterator) {
    SeqObj& seq = *v.seq();
    if (seq.consumed < seq.items.size()) return seq.items[seq.consumed++];
    return Value::undefined("No first item, sequence was empty.");
  }
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Result<Value> f_last(Renderer&, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("last", {}).bind(a, 0));
  if (v.type == VType::kSeq && v.seq()->kind == SeqKind::kIterator) {
    return type_error("'generator' object is not reversible");
  }
  if (!v.is_undefined() && !v.is_string() && v.type != VType::kSeq && v.type != VType::kDict) {
    return type_error("'" + type_name(v) + "' object is not reversible");
  }
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

// Python's float(str): optional whitespace, sign, digits with single underscores, inf/nan.
bool parse_py_float(const std::string& text, double* out) {
  std::string s = py_strip(text, nullptr, true, true);
  if (s.empty()) return false;
  std::string clean;
  for (size_t k = 0; k < s.size(); ++k) {
    char c = s[k];
    if (c == '_') {
      bool ok = k > 0 && k + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[k - 1])) &&
                std::isdigit(static_cast<unsigned char>(s[k + 1]));
      if (!ok) return false;
      continue;
    }
    if (c == 'x' || c == 'X' || c == 'p' || c == 'P') return false;  // no hex floats in Python
    clean.push_back(c);
  }
  std::string lower = py_lower(clean);
  std::string body = lower;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) body.erase(0, 1);
  if (body == "inf" || body == "infinity" || body == "nan") {
    double val = body == "nan" ? NAN : INFINITY;
    *out = lower[0] == '-' ? -val : val;
    return true;
  }
  char* end = nullptr;
  *out = std::strtod(clean.c_str(), &end);
  return end && *end == '\0' && body.find_first_of("0123456789") != std::string::npos;
}

// Python's int(str, base).
bool parse_py_int(const std::string& text, int64_t base, int64_t* out) {
  std::string s = py_strip(text, nullptr, true, true);
  size_t k = 0;
  bool neg = false;
  if (k < s.size() && (s[k] == '+' || s[k] == '-')) neg = s[k++] == '-';
  if (k + 1 < s.size() && s[k] == '0') {
    char p = static_cast<char>(s[k + 1] | 0x20);
    if ((p == 'x' && (base == 16 || base == 0)) || (p == 'o' && (base == 8 || base == 0)) ||
        (p == 'b' && (base == 2 || base == 0))) {
      base = p == 'x' ? 16 : p == 'o' ? 8 : 2;
      k += 2;
      if (k < s.size() && s[k] == '_') ++k;
    }
  }
  if (base == 0) base = 10;
  if (base < 2 || base > 36 || k >= s.size()) return false;
  int64_t v = 0;
  bool prev_digit = false;
  for (; k < s.size(); ++k) {
    char c = s[k];
    if (c == '_') {
      if (!prev_digit || k + 1 >= s.size()) return false;
      prev_digit = false;
      continue;
    }
    int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
            : std::isalpha(static_cast<unsigned char>(c)) ? (c | 0x20) - 'a' + 10
                                                           : 99;
    if (d >= base) return false;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) return false;
    prev_digit = true;
  }
  if (!prev_digit) return false;
  *out = neg ? -v : v;
  return true;
}

// int(d) for |int: inf and nan fall back to the default as in Python; a finite
// value beyond 64 bits (a Python big int) is an error here.
Result<bool> float_to_int_or_default(double d, int64_t* out) {
  if (!std::isfinite(d)) return false;
  if (!float_to_int(d, out)) return type_error("integer too large (Kiln's templates use 64-bit integers)");
  return true;
}

Result<Value> f_int(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("int", {"default", "base"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  Value def = b.has(0) ? b.get(0) : Value::integer(0);
  int64_t base = 10;
  if (b.has(1)) {
    KILN_ASSIGN_OR_RETURN(base, int_arg(b.get(1), "int"));
  }
  int64_t out = 0;
  double d = 0;
  if (v.is_undefined()) return type_error(v.undefined_hint());  // Undefined.__int__ fails
  if (v.is_intlike()) return Value::integer(v.i);
  if (v.type == VType::kFloat) {
    KILN_ASSIGN_OR_RETURN(bool ok, float_to_int_or_default(v.f, &out));
    return ok ? Value::integer(out) : def;
  }
  if (v.is_string()) {
    if (parse_py_int(v.str(), base, &out)) return Value::integer(out);
    if (parse_py_float(v.str(), &d)) {
      KILN_ASSIGN_OR_RETURN(bool ok, float_to_int_or_default(d, &out));
      if (ok) return Value::integer(out);
    }
  }
  return def;
}

Result<Value> f_float(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("float", {"default"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  if (v.is_undefined()) return type_error(v.undefined_hint());  // Undefined.__float__ fails
  if (v.is_number()) return Value::number(v.as_double());
  double d = 0;
  if (v.is_string() && parse_py_float(v.str(), &d)) return Value::number(d);
  return b.has(0) ? b.get(0) : Value::number(0.0);
}

Result<Value> f_format(Renderer& r, const Value& v, Args& a, Pos) {
  if (!a.pos.empty() && !a.kw.empty()) {
    return type_error("can't handle positional and keyword arguments at the same time");
  }
  Value args;
  if (!a.kw.empty()) {
    std::vector<std::pair<Value, Value>> items;
    for (auto& [k, val] : a.kw) items.emplace_back(Value::string(k), val);
    args = make_dict(std::move(items));
  } else {
    args = make_seq(SeqKind::kTuple, a.pos);
  }
  Value fmt = v.is_string() ? v : Value::string(to_str(v));
  return percent_format(r, fmt, args);
}

Result<Value> f_indent(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("indent", {"width", "first", "blank"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  std::string indention = "    ";
  if (b.has(0)) {
    const Value& w = b.get(0);
    if (w.is_string()) {
      indention = w.str();
    } else {
      KILN_ASSIGN_OR_RETURN(int64_t n, int_arg(w, "indent"));
      KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(std::max<int64_t>(n, 0))));
      indention = std::string(static_cast<size_t>(std::max<int64_t>(n, 0)), ' ');
    }
  }
  bool first = b.has(1) && truthy(b.get(1));
  bool blank = b.has(2) && truthy(b.get(2));
  if (v.is_undefined()) return type_error(v.undefined_hint());
  if (!v.is_string()) {  // jinja2 appends "\n" to the value itself, which only a str supports
    return type_error("unsupported operand type(s) for +=: '" + type_name(v) + "' and 'str'");
  }
  std::string s = v.str() + "\n";
  std::vector<std::string> lines = py_splitlines(s, false);
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) rv += "\n" + indention;
      rv += lines[k];
    }
  } else {
    rv = lines.empty() ? std::string() : lines[0];
    for (size_t k = 1; k < lines.size(); ++k) {
      rv += "\n";
      if (!lines[k].empty()) rv += indention;
      rv += lines[k];
      KILN_RETURN_IF_ERROR(r.check_size(rv.size()));
    }
  }
  if (first) rv = indention + rv;
  return make_str(r, std::move(rv), v.is_string() && v.markup);
}

Result<Value> f_items(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("items", {}).bind(a, 0));
  if (v.is_undefined()) return make_seq(SeqKind::kIterator, {});
  if (v.type != VType::kDict) return type_error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, val] : v.dict()->items) out.push_back(make_seq(SeqKind::kTuple, {k, val}));
  return make_list(r, SeqKind::kIterator, std::move(out));
}

Result<Value> f_join(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("join", {"d", "attribute"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  std::string d = b.has(0) ? to_str(b.get(0)) : std::string();
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  AttrGetter g{b.has(1) ? attribute_parts(b.get(1)) : std::vector<Value>{}, false, false, Value()};
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += d;
    KILN_ASSIGN_OR_RETURN(Value item, g.get(r, items[k]));
    out += to_str(item);
    KILN_RETURN_IF_ERROR(r.check_size(out.size()));
  }
  return Value::string(std::move(out));
}

Result<Value> f_list(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("list", {}).bind(a, 0));
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  return make_list(r, SeqKind::kList, std::move(items));
}

Result<Value> f_lower(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("lower", {}).bind(a, 0));
  return make_str(r, py_lower(to_str(v)), v.markup);
}

Result<Value> f_upper(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("upper", {}).bind(a, 0));
  return make_str(r, py_upper(to_str(v)), v.markup);
}

Result<Value> call_named_filter(Renderer& r, const Value& name, const Value& subject, const Args& args, Pos pos) {
  std::string n = to_str(name);
  FilterFn f = find_filter(n);
  if (!f) return type_error("No filter named '" + n + "' found.");
  Args copy = args;
  return f(r, subject, copy, pos);
}

Result<bool> call_named_test(Renderer& r, const Value& name, const Value& subject, const Args& args, Pos pos) {
  std::string n = to_str(name);
  TestFn t = find_test(n);
  if (!t) return type_error("No test named '" + n + "' found.");
  Args copy = args;
  return t(r, subject, copy, pos);
}

Result<Value> f_map(Renderer& r, const Value& v, Args& a, Pos pos) {
  if (!truthy(v)) return make_seq(SeqKind::kIterator, {});
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::vector<Value> out;
  out.reserve(items.size());
  bool by_attribute = a.pos.empty() && std::any_of(a.kw.begin(), a.kw.end(), [](auto& kv) {
    return kv.first == "attribute";
  });
  if (by_attribute) {
    AttrGetter g;
    for (auto& [k, val] : a.kw) {
      if (k == "attribute") {
        g.parts = attribute_parts(val);
      } else if (k == "default") {
        g.has_default = !val.is_none();
        g.default_value = val;
      } else {
        return type_error("Unexpected keyword argument '" + k + "'");
      }
    }
    for (const Value& item : items) {
      KILN_ASSIGN_OR_RETURN(Value x, g.get(r, item));
      out.push_back(std::move(x));
    }
  } else {
    if (a.pos.empty()) return type_error("map requires a filter argument");
    Value name = a.pos[0];
    Args rest;
    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
    rest.kw = a.kw;
    for (const Value& item : items) {
      KILN_ASSIGN_OR_RETURN(Value x, call_named_filter(r, name, item, rest, pos));
      out.push_back(std::move(x));
    }
  }
  return make_list(r, SeqKind::kIterator, std::move(out));
}

Result<Value> select_or_reject(Renderer& r, const Value& v, Args& a, Pos pos, bool keep_if, bool lookup_attr) {
  if (!truthy(v)) return make_seq(SeqKind::kIterator, {});
  size_t off = 0;
  AttrGetter g;
  if (lookup_attr) {
    if (a.pos.empty()) return type_error("Missing parameter for attribute name");
    g.parts = attribute_parts(a.pos[0]);
    off = 1;
  }
  bool has_test = a.pos.size() > off;
  Value test_name = has_test ? a.pos[off] : Value();
  Args rest;
  if (has_test) rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(off) + 1, a.pos.end());
  rest.kw = a.kw;
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::vector<Value> out;
  for (const Value& item : items) {
    KILN_ASSIGN_OR_RETURN(Value x, g.get(r, item));
    bool ok;
    if (has_test) {
      KILN_ASSIGN_OR_RETURN(ok, call_named_test(r, test_name, x, rest, pos));
    } else {
      ok = truthy(x);
    }
    if (ok == keep_if) out.push_back(item);
  }
  return make_list(r, SeqKind::kIterator, std::move(out));
}

Result<Value> f_select(Renderer& r, const Value& v, Args& a, Pos p) { return select_or_reject(r, v, a, p, true, false); }
Result<Value> f_reject(Renderer& r, const Value& v, Args& a, Pos p) { return select_or_reject(r, v, a, p, false, false); }
Result<Value> f_selectattr(Renderer& r, const Value& v, Args& a, Pos p) { return select_or_reject(r, v, a, p, true, true); }
Result<Value> f_rejectattr(Renderer& r, const Value& v, Args& a, Pos p) { return select_or_reject(r, v, a, p, false, true); }

Result<Value> min_or_max(Renderer& r, const Value& v, Args& a, bool want_max, const char* name) {
  ArgBinder b(name, {"case_sensitive", "attribute"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  AttrGetter g{b.has(1) ? attribute_parts(b.get(1)) : std::vector<Value>{}, !(b.has(0) && truthy(b.get(0))), false,
               Value()};
  size_t best = 0;
  KILN_ASSIGN_OR_RETURN(Value best_key, g.get(r, items[0]));
  for (size_t k = 1; k < items.size(); ++k) {
    KILN_ASSIGN_OR_RETURN(Value key, g.get(r, items[k]));
    KILN_ASSIGN_OR_RETURN(int c, py_compare(key, best_key, want_max ? ">" : "<"));
    if ((want_max && c == 1) || (!want_max && c == -1)) {
      best = k;
      best_key = key;
    }
  }
  return items[best];
}

Result<Value> f_min(Renderer& r, const Value& v, Args& a, Pos) { return min_or_max(r, v, a, false, "min"); }
Result<Value> f_max(Renderer& r, const Value& v, Args& a, Pos) { return min_or_max(r, v, a, true, "max"); }

Result<Value> f_replace(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("replace", {"old", "new", "count"});
  KILN_RETURN_IF_ERROR(b.bind(a, 2));
  int64_t count = -1;
  if (b.has(2) && !b.get(2).is_none()) {
    KILN_ASSIGN_OR_RETURN(count, int_arg(b.get(2), "replace"));
  }
  return replace_checked(r, to_str(v), to_str(b.get(0)), to_str(b.get(1)), count);
}

Result<Value> f_reverse(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("reverse", {}).bind(a, 0));
  if (v.is_string()) {
    std::u32string u = decode_utf8(v.str());
    std::reverse(u.begin(), u.end());
    return Value::string(encode_utf8(u));
  }
  bool generator = v.type == VType::kSeq && v.seq()->kind == SeqKind::kIterator;
  if (!v.is_undefined() && v.type != VType::kSeq && v.type != VType::kDict) {
    return type_error("argument must be iterable");
  }
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::reverse(items.begin(), items.end());
  return make_list(r, generator ? SeqKind::kList : SeqKind::kIterator, std::move(items));
}

// Python's round(x, n): correctly rounded, ties to even.
double py_round(double x, int64_t n) {
  if (!std::isfinite(x)) return x;
  if (n == 0) return std::nearbyint(x);
  if (n > 0) {
    if (n > 300) return x;
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(n), x);
    return std::strtod(buf, nullptr);
  }
  double p = std::pow(10.0, static_cast<double>(-n));
  return std::nearbyint(x / p) * p;
}

Result<Value> f_round(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("round", {"precision", "method"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  int64_t precision = 0;
  if (b.has(0)) {
    KILN_ASSIGN_OR_RETURN(precision, int_arg(b.get(0), "round"));
  }
  std::string method = b.has(1) ? to_str(b.get(1)) : "common";
  if (method != "common" && method != "ceil" && method != "floor") {
    return type_error("method must be common, ceil or floor");
  }
  if (v.is_undefined()) return type_error(v.undefined_hint());
  if (!v.is_number()) return type_error("type " + type_name(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.is_intlike() && precision >= 0) return Value::integer(v.i);
    return Value::number(py_round(v.as_double(), precision));
  }
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * scale;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Result<Value> f_safe(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("safe", {}).bind(a, 0));
  return make_str(r, to_str(v), true);
}

Result<Value> f_sort(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("sort", {"reverse", "case_sensitive", "attribute"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  bool reverse = b.has(0) && truthy(b.get(0));
  bool lower = !(b.has(1) && truthy(b.get(1)));
  Value attribute = b.has(2) ? b.get(2) : Value::none();
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::vector<std::pair<Value, Value>> keyed;
  for (Value& item : items) {
    KILN_ASSIGN_OR_RETURN(Value key, multi_key(r, attribute, lower, item));
    keyed.emplace_back(std::move(key), std::move(item));
  }
  KILN_RETURN_IF_ERROR(sort_values(keyed, reverse));
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return make_list(r, SeqKind::kList, std::move(out));
}

Result<Value> f_string(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("string", {}).bind(a, 0));
  if (v.is_string()) return v;
  return make_str(r, to_str(v));
}

Result<Value> f_sum(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("sum", {"attribute", "start"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  AttrGetter g{b.has(0) ? attribute_parts(b.get(0)) : std::vector<Value>{}, false, false, Value()};
  Value acc = b.has(1) ? b.get(1) : Value::integer(0);
  if (acc.is_string()) return type_error("sum() can't sum strings [use ''.join(seq) instead]");
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  for (const Value& item : items) {
    KILN_ASSIGN_OR_RETURN(Value x, g.get(r, item));
    KILN_ASSIGN_OR_RETURN(acc, binary_op(r, BinOp::kAdd, acc, x));
  }
  return acc;
}

Result<Value> f_title(Renderer& r, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("title", {}).bind(a, 0));
  return make_str(r, jinja_title(to_str(v)));
}

Result<Value> f_tojson(Renderer& r, const Value& v, Args& a, Pos) {
  // transformers' filter: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  ArgBinder b("tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  JsonOptions o;
  o.ensure_ascii = b.has(0) && truthy(b.get(0));
  if (b.has(1) && !b.get(1).is_none()) {
    const Value& ind = b.get(1);
    o.has_indent = true;
    if (ind.is_string()) {
      o.indent = ind.str();
    } else if (ind.is_intlike()) {
      KILN_RETURN_IF_ERROR(r.check_size(static_cast<size_t>(std::max<int64_t>(ind.i, 0))));
      o.indent = std::string(static_cast<size_t>(std::max<int64_t>(ind.i, 0)), ' ');
    } else {
      return type_error("can't multiply sequence by non-int of type '" + type_name(ind) + "'");
    }
    o.item_sep = ",";
  }
  if (b.has(2) && !b.get(2).is_none()) {
    const Value& sep = b.get(2);
    if (sep.type != VType::kSeq || sep.seq()->items.size() != 2 || !sep.seq()->items[0].is_string() ||
        !sep.seq()->items[1].is_string()) {
      return type_error("separators must be a (item_separator, key_separator) pair of strings");
    }
    o.item_sep = sep.seq()->items[0].str();
    o.key_sep = sep.seq()->items[1].str();
  }
  o.sort_keys = b.has(3) && truthy(b.get(3));
  KILN_ASSIGN_OR_RETURN(std::string s, dump_json(v, o));
  return make_str(r, std::move(s));
}

Result<Value> f_trim(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("trim", {"chars"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  const Value* chars = b.has(0) ? &b.get(0) : nullptr;
  if (chars && !chars->is_none() && !chars->is_string()) {
    return type_error("strip arg must be None or str");
  }
  return make_str(r, py_strip(to_str(v), chars, true, true), v.markup);
}

Result<Value> f_truncate(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("truncate", {"length", "killwords", "end", "leeway"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  int64_t length = 255, leeway = 5;
  if (b.has(0)) {
    KILN_ASSIGN_OR_RETURN(length, int_arg(b.get(0), "truncate"));
  }
  bool killwords = b.has(1) && truthy(b.get(1));
  std::string end = b.has(2) ? to_str(b.get(2)) : "...";
  if (b.has(3) && !b.get(3).is_none()) {
    KILN_ASSIGN_OR_RETURN(leeway, int_arg(b.get(3), "truncate"));
  }
  std::u32string s = decode_utf8(to_str(v));
  int64_t end_len = static_cast<int64_t>(count_code_points(end));
  if (length < end_len) return type_error("expected length >= " + std::to_string(end_len));
  if (leeway < 0) return type_error("expected leeway >= 0");
  if (static_cast<int64_t>(s.size()) <= length + leeway) return Value::string(encode_utf8(s));
  std::u32string head = s.substr(0, static_cast<size_t>(length - end_len));
  if (killwords) return make_str(r, encode_utf8(head) + end);
  size_t sp = head.rfind(U' ');
  if (sp != std::u32string::npos) head = head.substr(0, sp);
  return make_str(r, encode_utf8(head) + end);
}

Result<Value> f_unique(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("unique", {"case_sensitive", "attribute"});
  KILN_RETURN_IF_ERROR(b.bind(a, 0));
  AttrGetter g{b.has(1) ? attribute_parts(b.get(1)) : std::vector<Value>{}, !(b.has(0) && truthy(b.get(0))), false,
               Value()};
  KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
  std::vector<Value> seen, out;
  for (const Value& item : items) {
    KILN_ASSIGN_OR_RETURN(Value key, g.get(r, item));
    if (key.type == VType::kDict || (key.type == VType::kSeq && key.seq()->kind != SeqKind::kTuple)) {
      return type_error("unhashable type: '" + type_name(key) + "'");
    }
    bool dup = std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return py_equal(s, key); });
    if (dup) continue;
    seen.push_back(key);
    out.push_back(item);
  }
  return make_list(r, SeqKind::kIterator, std::move(out));
}

Result<Value> f_wordcount(Renderer&, const Value& v, Args& a, Pos) {
  KILN_RETURN_IF_ERROR(ArgBinder("wordcount", {}).bind(a, 0));
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : decode_utf8(to_str(v))) {
    bool w = c == '_' || is_alpha(c) || is_numeric(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

Result<Value> f_unsupported(Renderer&, const Value&, Args&, Pos) {
  return Status(StatusCode::kUnimplemented, "this jinja2 filter is not supported in Kiln's chat templates");
}

// ---- tests

Result<bool> t_defined(Renderer&, const Value& v, Args&, Pos) { return !v.is_undefined(); }
Result<bool> t_undefined(Renderer&, const Value& v, Args&, Pos) { return v.is_undefined(); }
Result<bool> t_none(Renderer&, const Value& v, Args&, Pos) { return v.is_none(); }
Result<bool> t_boolean(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kBool; }
Result<bool> t_true(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kBool && v.i; }
Result<bool> t_false(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kBool && !v.i; }
Result<bool> t_integer(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kInt; }
Result<bool> t_float(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kFloat; }
Result<bool> t_string(Renderer&, const Value& v, Args&, Pos) { return v.is_string(); }
Result<bool> t_mapping(Renderer&, const Value& v, Args&, Pos) { return v.type == VType::kDict; }
Result<bool> t_number(Renderer&, const Value& v, Args&, Pos) { return v.is_number(); }
Result<bool> t_escaped(Renderer&, const Value& v, Args&, Pos) { return v.is_string() && v.markup; }
Result<bool> t_callable(Renderer&, const Value& v, Args&, Pos) {
  return v.type == VType::kFunction || v.is_undefined() || v.type == VType::kLoop;
}
Result<bool> t_sequence(Renderer&, const Value& v, Args&, Pos) {
  if (v.is_undefined() || v.is_string() || v.type == VType::kDict) return true;
  if (v.type != VType::kSeq) return false;
  SeqKind k = v.seq()->kind;
  return k == SeqKind::kList || k == SeqKind::kTuple || k == SeqKind::kRange;
}
Result<bool> t_iterable(Renderer&, const Value& v, Args&, Pos) {
  return v.is_undefined() || v.is_string() || v.type == VType::kSeq || v.type == VType::kDict ||
         v.type == VType::kLoop;
}
Result<bool> parity(const Value& v, int want) {
  if (v.is_undefined()) return type_error(v.undefined_hint());
  if (v.is_intlike()) return ((v.i % 2) + 2) % 2 == want;
  if (v.type == VType::kFloat) return std::fmod(std::fmod(v.f, 2.0) + 2.0, 2.0) == want;
  return type_error("not all arguments converted during string formatting");
}
Result<bool> t_odd(Renderer&, const Value& v, Args&, Pos) { return parity(v, 1); }
Result<bool> t_even(Renderer&, const Value& v, Args&, Pos) { return parity(v, 0); }
Result<bool> t_divisibleby(Renderer& r, const Value& v, Args& a, Pos) {
  ArgBinder b("divisibleby", {"num"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  KILN_ASSIGN_OR_RETURN(Value m, binary_op(r, BinOp::kMod, v, b.get(0)));
  return py_equal(m, Value::integer(0));
}
Result<bool> t_lower(Renderer&, const Value& v, Args&, Pos) { return py_islower(to_str(v)); }
Result<bool> t_upper(Renderer&, const Value& v, Args&, Pos) { return py_isupper(to_str(v)); }
Result<bool> t_sameas(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("sameas", {"other"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  const Value& o = b.get(0);
  if (v.type != o.type) return false;
  switch (v.type) {
    case VType::kNone:
    case VType::kUndefined: return v.is_none() || v.s == o.s;
    case VType::kBool:
    case VType::kInt: return v.i == o.i;
    case VType::kFloat: return v.f == o.f;
    case VType::kString: return v.s == o.s;
    default: return v.obj == o.obj;
  }
}
Result<bool> t_in(Renderer&, const Value& v, Args& a, Pos) {
  ArgBinder b("in", {"seq"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  return contains(b.get(0), v);
}
Result<bool> compare_test(const Value& v, Args& a, const char* name, int op) {
  ArgBinder b(name, {"b"});
  KILN_RETURN_IF_ERROR(b.bind(a, 1));
  const Value& o = b.get(0);
  if (op == 0) return py_equal(v, o);
  if (op == 1) return !py_equal(v, o);
  const char* sym = op == 2 ? "<" : op == 3 ? "<=" : op == 4 ? ">" : ">=";
  KILN_ASSIGN_OR_RETURN(int c, py_compare(v, o, sym));
  switch (op) {
    case 2: return c == -1;
    case 3: return c == -1 || c == 0;
    case 4: return c == 1;
    default: return c == 1 || c == 0;
  }
}
Result<bool> t_eq(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "eq", 0); }
Result<bool> t_ne(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "ne", 1); }
Result<bool> t_lt(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "lt", 2); }
Result<bool> t_le(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "le", 3); }
Result<bool> t_gt(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "gt", 4); }
Result<bool> t_ge(Renderer&, const Value& v, Args& a, Pos) { return compare_test(v, a, "ge", 5); }
Result<bool> t_filter(Renderer&, const Value& v, Args&, Pos) { return v.is_string() && find_filter(v.str()) != nullptr; }
Result<bool> t_test(Renderer&, const Value& v, Args&, Pos) { return v.is_string() && find_test(v.str()) != nullptr; }

const std::unordered_map<std::string_view, FilterFn>& filter_table() {
  static const std::unordered_map<std::string_view, FilterFn> table = {
      {"abs", f_abs}, {"attr", f_attr}, {"batch", f_batch}, {"capitalize", f_capitalize}, {"center", f_center},
      {"count", f_length}, {"d", f_default}, {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape},
      {"escape", f_escape}, {"filesizeformat", f_unsupported}, {"first", f_first}, {"float", f_float},
      {"forceescape", f_forceescape}, {"format", f_format}, {"groupby", f_unsupported}, {"indent", f_indent},
      {"int", f_int}, {"items", f_items}, {"join", f_join}, {"last", f_last}, {"length", f_length},
      {"list", f_list}, {"lower", f_lower}, {"map", f_map}, {"max", f_max}, {"min", f_min},
      {"pprint", f_unsupported}, {"random", f_unsupported}, {"reject", f_reject}, {"rejectattr", f_rejectattr},
      {"replace", f_replace}, {"reverse", f_reverse}, {"round", f_round}, {"safe", f_safe}, {"select", f_select},
      {"selectattr", f_selectattr}, {"slice", f_unsupported}, {"sort", f_sort}, {"string", f_string},
      {"striptags", f_unsupported}, {"sum", f_sum}, {"title", f_title}, {"tojson", f_tojson}, {"trim", f_trim},
      {"truncate", f_truncate}, {"unique", f_unique}, {"upper", f_upper}, {"urlencode", f_unsupported},
      {"urlize", f_unsupported}, {"wordcount", f_wordcount}, {"wordwrap", f_unsupported},
      {"xmlattr", f_unsupported},
  };
  return table;
}

const std::unordered_map<std::string_view, TestFn>& test_table() {
  static const std::unordered_map<std::string_view, TestFn> table = {
      {"odd", t_odd}, {"even", t_even}, {"divisibleby", t_divisibleby}, {"defined", t_defined},
      {"undefined", t_undefined}, {"filter", t_filter}, {"test", t_test}, {"none", t_none},
      {"boolean", t_boolean}, {"false", t_false}, {"true", t_true}, {"integer", t_integer}, {"float", t_float},
      {"lower", t_lower}, {"upper", t_upper}, {"string", t_string}, {"mapping", t_mapping}, {"number", t_number},
      {"sequence", t_sequence}, {"iterable", t_iterable}, {"callable", t_callable}, {"sameas", t_sameas},
      {"escaped", t_escaped}, {"in", t_in}, {"==", t_eq}, {"eq", t_eq}, {"equalto", t_eq}, {"!=", t_ne},
      {"ne", t_ne}, {">", t_gt}, {"gt", t_gt}, {"greaterthan", t_gt}, {"ge", t_ge}, {">=", t_ge}, {"<", t_lt},
      {"lt", t_lt}, {"lessthan", t_lt}, {"<=", t_le}, {"le", t_le},
  };
  return table;
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  const auto& t = filter_table();
  auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  const auto& t = test_table();
  auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

}  // namespace kiln::chat_template_detail
