// Chat templates: Python value semantics (str(), repr(), ==, <, len, in, iteration,
// json.dumps) and the UTF-8 helpers behind Python's code-point strings.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <utf8proc.h>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {

// ---- errors

namespace {
constexpr std::string_view kPrefix = "chat template line ";
}

Status located(const Status& status, Pos pos) {
  if (status.ok()) return status;
  if (status.message().rfind(kPrefix, 0) == 0) return status;
  return Status(status.code(), std::string(kPrefix) + std::to_string(pos.line) + ":" + std::to_string(pos.col) +
                                   ": " + status.message());
}

Status error_at(Pos pos, const std::string& message, StatusCode code) {
  return located(Status(code, message), pos);
}

// ---- Value constructors and accessors

Value Value::undefined(std::string hint) {
  Value v;
  v.type = VType::kUndefined;
  v.s = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::none() {
  Value v;
  v.type = VType::kNone;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.type = VType::kBool;
  v.i = b ? 1 : 0;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.type = VType::kInt;
  v.i = x;
  return v;
}
Value Value::number(double x) {
  Value v;
  v.type = VType::kFloat;
  v.f = x;
  return v;
}
Value Value::string(std::string x, bool markup) {
  Value v;
  v.type = VType::kString;
  v.markup = markup;
  v.s = std::make_shared<const std::string>(std::move(x));
  return v;
}

SeqObj* Value::seq() const { return static_cast<SeqObj*>(obj.get()); }
DictObj* Value::dict() const { return static_cast<DictObj*>(obj.get()); }
NamespaceObj* Value::ns() const { return static_cast<NamespaceObj*>(obj.get()); }
FunctionObj* Value::fn() const { return static_cast<FunctionObj*>(obj.get()); }
LoopObj* Value::loop() const { return static_cast<LoopObj*>(obj.get()); }

int value_depth(const Value& v) {
  if (v.type == VType::kSeq) return v.seq()->depth;
  if (v.type == VType::kDict) return v.dict()->depth;
  return 0;
}

bool may_hold_namespace(const Value& v) {
  switch (v.type) {
    case VType::kNamespace:
    case VType::kLoop: return true;
    case VType::kFunction: return !v.fn()->is_macro;
    case VType::kSeq: return v.seq()->holds_ns;
    case VType::kDict: return v.dict()->holds_ns;
    default: return false;
  }
}

Value make_seq(SeqKind kind, std::vector<Value> items) {
  auto seq = std::make_shared<SeqObj>();
  seq->kind = kind;
  int depth = 0;
  for (const Value& item : items) {
    depth = std::max(depth, value_depth(item));
    if (may_hold_namespace(item)) seq->holds_ns = true;
  }
  seq->depth = depth + 1;
  seq->items = std::move(items);
  Value v;
  v.type = VType::kSeq;
  v.obj = std::move(seq);
  return v;
}

Value make_dict(std::vector<std::pair<Value, Value>> items) {
  auto dict = std::make_shared<DictObj>();
  for (auto& [k, val] : items) dict->set(std::move(k), std::move(val));
  Value v;
  v.type = VType::kDict;
  v.obj = std::move(dict);
  return v;
}

Value make_function(std::string name, NativeFn fn) {
  auto f = std::make_shared<FunctionObj>();
  f->name = std::move(name);
  f->fn = std::move(fn);
  Value v;
  v.type = VType::kFunction;
  v.obj = std::move(f);
  return v;
}

const Value* DictObj::find(std::string_view key) const {
  auto it = str_index.find(std::string(key));
  return it == str_index.end() ? nullptr : &items[it->second].second;
}

const Value* DictObj::find(const Value& key) const {
  if (key.is_string()) return find(std::string_view(key.str()));
  for (const auto& [k, v] : items) {
    if (!k.is_string() && py_equal(k, key)) return &v;
  }
  return nullptr;
}

void DictObj::set(Value key, Value value) {
  depth = std::max(depth, value_depth(value) + 1);
  if (may_hold_namespace(key) || may_hold_namespace(value)) holds_ns = true;
  if (key.is_string()) {
    auto it = str_index.find(key.str());
    if (it != str_index.end()) {
      items[it->second].second = std::move(value);
      return;
    }
    str_index.emplace(key.str(), items.size());
    items.emplace_back(std::move(key), std::move(value));
    return;
  }
  for (auto& [k, v] : items) {
    if (!k.is_string() && py_equal(k, key)) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

Value* NamespaceObj::find(std::string_view name) {
  for (auto& [k, v] : attrs) {
    if (k == name) return &v;
  }
  return nullptr;
}

Status NamespaceObj::set(const std::string& name, Value value) {
  if (may_hold_namespace(value)) {
    return Status(StatusCode::kUnimplemented,
                  "a namespace attribute cannot hold a namespace, loop or bound method in Kiln's chat templates");
  }
  if (Value* v = find(name)) {
    *v = std::move(value);
    return Status::ok_status();
  }
  attrs.emplace_back(name, std::move(value));
  return Status::ok_status();
}

// ---- UTF-8

// Invalid bytes decode to U+DC80..U+DCFF (Python's surrogateescape) and encode back
// to the same byte, so slicing never alters bytes it does not cut.
std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    char32_t cp = 0;
    int n = 0;
    if (c < 0x80) {
      cp = c;
      n = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      n = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      n = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07;
      n = 4;
    }
    bool ok = n > 0 && i + n <= s.size();
    for (int k = 1; ok && k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (ok && n > 1) {
      static const char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) ok = false;
    }
    if (!ok) {
      out.push_back(0xDC00 + c);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
    out.push_back(static_cast<char>(cp - 0xDC00));  // an escaped invalid byte
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

size_t count_code_points(std::string_view s) {
  if (is_ascii(s)) return s.size();
  return decode_utf8(s).size();
}

// str.isspace(): Unicode White_Space as CPython classifies it.
bool py_isspace(char32_t cp) {
  if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F)) return true;
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string py_strip(std::string_view s, const Value* chars, bool left, bool right) {
  std::u32string u = decode_utf8(s);
  std::u32string set;
  bool ws = chars == nullptr || chars->is_none() || chars->is_undefined();
  if (!ws) set = decode_utf8(chars->str());
  auto strip_it = [&](char32_t cp) { return ws ? py_isspace(cp) : set.find(cp) != std::u32string::npos; };
  size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strip_it(u[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(u[e - 1])) --e;
  }
  return encode_utf8(std::u32string_view(u).substr(b, e - b));
}

std::vector<std::string> py_splitlines(std::string_view s, bool keepends) {
  std::u32string u = decode_utf8(s);
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < u.size()) {
    char32_t c = u[i];
    bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
               c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      ++i;
      continue;
    }
    size_t eol = i;
    ++i;
    if (c == '\r' && i < u.size() && u[i] == '\n') ++i;
    out.push_back(encode_utf8(std::u32string_view(u).substr(start, (keepends ? i : eol) - start)));
    start = i;
  }
  if (start < u.size()) out.push_back(encode_utf8(std::u32string_view(u).substr(start)));
  return out;
}

std::string py_upper(std::string_view s) {
  if (is_ascii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    }
    return out;
  }
  std::u32string u = decode_utf8(s);
  for (char32_t& c : u) c = static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
  return encode_utf8(u);
}

std::string py_lower(std::string_view s) {
  if (is_ascii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    return out;
  }
  std::u32string u = decode_utf8(s);
  for (char32_t& c : u) c = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  return encode_utf8(u);
}

std::string py_capitalize(std::string_view s) {
  std::u32string u = decode_utf8(s);
  for (size_t k = 0; k < u.size(); ++k) {
    auto c = static_cast<utf8proc_int32_t>(u[k]);
    u[k] = static_cast<char32_t>(k == 0 ? utf8proc_totitle(c) : utf8proc_tolower(c));
  }
  return encode_utf8(u);
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// ---- str() and repr()

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string s(buf, res.ptr);  // [-]D[.DDD]e[+-]XX, the shortest digits that round-trip
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  size_t epos = s.find('e');
  int exp = std::atoi(s.c_str() + epos + 1);
  std::string digits;
  for (size_t k = 0; k < epos; ++k) {
    if (s[k] != '.') digits.push_back(s[k]);
  }
  std::string out;
  if (exp >= -4 && exp < 16) {  // Python's repr switches to exponent form outside this range
    if (exp >= 0) {
      size_t int_len = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_len) {
        out = digits + std::string(int_len - digits.size(), '0') + ".0";
      } else {
        out = digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    } else {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return sign + out;
}

namespace {

bool py_isprintable(char32_t cp) {
  if (cp == ' ') return true;
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp < 0x7F) return true;
  if (cp >= 0xDC80 && cp <= 0xDCFF) return false;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
      return false;
    default:
      return true;
  }
}

void repr_into(std::string& out, const Value& v);

void repr_items(std::string& out, const std::vector<Value>& items) {
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += ", ";
    repr_into(out, items[k]);
  }
}

void str_into(std::string& out, const Value& v) {
  switch (v.type) {
    case VType::kUndefined: return;
    case VType::kNone: out += "None"; return;
    case VType::kBool: out += v.i ? "True" : "False"; return;
    case VType::kInt: out += std::to_string(v.i); return;
    case VType::kFloat: out += format_float(v.f); return;
    case VType::kString: out += v.str(); return;
    default: repr_into(out, v);
  }
}

void repr_into(std::string& out, const Value& v) {
  switch (v.type) {
    case VType::kUndefined: out += "Undefined"; return;
    case VType::kString:
      if (v.markup) {
        out += "Markup(" + repr_string(v.str()) + ")";
      } else {
        out += repr_string(v.str());
      }
      return;
    case VType::kSeq: {
      const SeqObj& seq = *v.seq();
      switch (seq.kind) {
        case SeqKind::kList: out += "["; repr_items(out, seq.items); out += "]"; return;
        case SeqKind::kTuple:
          out += "(";
          repr_items(out, seq.items);
          out += seq.items.size() == 1 ? ",)" : ")";
          return;
        case SeqKind::kIterator: out += "<generator object>"; return;
        case SeqKind::kRange:
          out += "range(" + std::to_string(seq.range_start) + ", " + std::to_string(seq.range_stop);
          if (seq.range_step != 1) out += ", " + std::to_string(seq.range_step);
          out += ")";
          return;
        case SeqKind::kDictKeys: out += "dict_keys(["; repr_items(out, seq.items); out += "])"; return;
        case SeqKind::kDictValues: out += "dict_values(["; repr_items(out, seq.items); out += "])"; return;
        case SeqKind::kDictItems: out += "dict_items(["; repr_items(out, seq.items); out += "])"; return;
      }
      return;
    }
    case VType::kDict: {
      out += "{";
      bool first = true;
      for (const auto& [k, val] : v.dict()->items) {
        if (!first) out += ", ";
        first = false;
        repr_into(out, k);
        out += ": ";
        repr_into(out, val);
      }
      out += "}";
      return;
    }
    case VType::kNamespace: {
      out += "<Namespace {";
      bool first = true;
      for (const auto& [k, val] : v.ns()->attrs) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(k) + ": ";
        repr_into(out, val);
      }
      out += "}>";
      return;
    }
    case VType::kFunction:
      if (v.fn()->is_macro) {
        out += "<Macro " + repr_string(v.fn()->name) + ">";
      } else {
        out += "<function " + v.fn()->name + ">";
      }
      return;
    case VType::kLoop: {
      const LoopObj& l = *v.loop();
      out += "<LoopContext " + std::to_string(l.index0 + 1) + "/" + std::to_string(l.items->items.size()) + ">";
      return;
    }
    default: str_into(out, v);
  }
}

}  // namespace

std::string repr_string(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t cp : decode_utf8(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (py_isprintable(cp)) {
      append_utf8(out, cp);
    } else {
      char buf[16];
      if (cp <= 0xFF) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
      } else if (cp <= 0xFFFF) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
      }
      out += buf;
    }
  }
  out.push_back(quote);
  return out;
}

std::string to_str(const Value& v) {
  if (v.type == VType::kString) return v.str();
  std::string out;
  str_into(out, v);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v);
  return out;
}

std::string type_name(const Value& v) {
  switch (v.type) {
    case VType::kUndefined: return "Undefined";
    case VType::kNone: return "NoneType";
    case VType::kBool: return "bool";
    case VType::kInt: return "int";
    case VType::kFloat: return "float";
    case VType::kString: return v.markup ? "Markup" : "str";
    case VType::kSeq:
      switch (v.seq()->kind) {
        case SeqKind::kList: return "list";
        case SeqKind::kTuple: return "tuple";
        case SeqKind::kIterator: return "generator";
        case SeqKind::kRange: return "range";
        case SeqKind::kDictKeys: return "dict_keys";
        case SeqKind::kDictValues: return "dict_values";
        case SeqKind::kDictItems: return "dict_items";
      }
      return "list";
    case VType::kDict: return "dict";
    case VType::kNamespace: return "Namespace";
    case VType::kFunction: return v.fn()->is_macro ? "Macro" : "function";
    case VType::kLoop: return "LoopContext";
  }
  return "object";
}

std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

// ---- truthiness, equality, ordering

bool truthy(const Value& v) {
  switch (v.type) {
    case VType::kUndefined:
    case VType::kNone: return false;
    case VType::kBool:
    case VType::kInt: return v.i != 0;
    case VType::kFloat: return v.f != 0;
    case VType::kString: return !v.str().empty();
    case VType::kSeq: return v.seq()->kind == SeqKind::kIterator || !v.seq()->items.empty();
    case VType::kDict: return !v.dict()->items.empty();
    default: return true;
  }
}

bool py_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type != VType::kFloat && b.type != VType::kFloat) return a.i == b.i;
    return a.as_double() == b.as_double();
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case VType::kUndefined:
    case VType::kNone: return true;
    case VType::kString: return a.str() == b.str();
    case VType::kSeq: {
      const SeqObj& x = *a.seq();
      const SeqObj& y = *b.seq();
      if (x.kind == SeqKind::kIterator || y.kind == SeqKind::kIterator) return &x == &y;
      if (x.kind != y.kind) return false;
      if (x.items.size() != y.items.size()) return false;
      for (size_t k = 0; k < x.items.size(); ++k) {
        if (!py_equal(x.items[k], y.items[k])) return false;
      }
      return true;
    }
    case VType::kDict: {
      const DictObj& x = *a.dict();
      const DictObj& y = *b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* other = y.find(k);
        if (!other || !py_equal(v, *other)) return false;
      }
      return true;
    }
    default: return a.obj == b.obj;
  }
}

Result<int> py_compare(const Value& a, const Value& b, const char* op) {
  if (a.is_undefined()) return type_error(a.undefined_hint());
  if (b.is_undefined()) return type_error(b.undefined_hint());
  if (a.is_number() && b.is_number()) {
    if (a.type != VType::kFloat && b.type != VType::kFloat) return a.i < b.i ? -1 : (a.i > b.i ? 1 : 0);
    double x = a.as_double(), y = b.as_double();
    if (std::isnan(x) || std::isnan(y)) return 2;  // every ordering is false; callers treat 2 as "unordered"
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.type == VType::kSeq && b.type == VType::kSeq && a.seq()->kind == b.seq()->kind &&
      (a.seq()->kind == SeqKind::kList || a.seq()->kind == SeqKind::kTuple)) {
    const auto& x = a.seq()->items;
    const auto& y = b.seq()->items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (py_equal(x[k], y[k])) continue;
      return py_compare(x[k], y[k], op);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  return type_error(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" +
                    type_name(b) + "'");
}

// ---- iteration, len, in

Result<std::vector<Value>> iterate(const Value& v) {
  switch (v.type) {
    case VType::kUndefined: return std::vector<Value>{};
    case VType::kString: {
      std::vector<Value> out;
      const std::string& s = v.str();
      if (is_ascii(s)) {
        out.reserve(s.size());
        for (char c : s) out.push_back(Value::string(std::string(1, c)));
      } else {
        for (char32_t cp : decode_utf8(s)) {
          std::string one;
          append_utf8(one, cp);
          out.push_back(Value::string(std::move(one)));
        }
      }
      return out;
    }
    case VType::kSeq: {
      SeqObj& seq = *v.seq();
      if (seq.kind == SeqKind::kIterator) {
        std::vector<Value> out(seq.items.begin() + static_cast<std::ptrdiff_t>(seq.consumed), seq.items.end());
        seq.consumed = seq.items.size();
        return out;
      }
      return seq.items;
    }
    case VType::kDict: {
      std::vector<Value> out;
      out.reserve(v.dict()->items.size());
      for (const auto& kv : v.dict()->items) out.push_back(kv.first);
      return out;
    }
    default: return type_error("'" + type_name(v) + "' object is not iterable");
  }
}

Result<int64_t> py_len(const Value& v) {
  switch (v.type) {
    case VType::kUndefined: return int64_t{0};
    case VType::kString: return static_cast<int64_t>(count_code_points(v.str()));
    case VType::kSeq:
      if (v.seq()->kind == SeqKind::kIterator) return type_error("object of type 'generator' has no len()");
      return static_cast<int64_t>(v.seq()->items.size());
    case VType::kDict: return static_cast<int64_t>(v.dict()->items.size());
    default: return type_error("object of type '" + type_name(v) + "' has no len()");
  }
}

Result<bool> contains(const Value& container, const Value& item) {
  switch (container.type) {
    case VType::kUndefined: return false;
    case VType::kString:
      if (!item.is_string()) {
        return type_error("'in <string>' requires string as left operand, not " + type_name(item));
      }
      return container.str().find(item.str()) != std::string::npos;
    case VType::kSeq: {
      KILN_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(container));
      for (const Value& x : items) {
        if (py_equal(x, item)) return true;
      }
      return false;
    }
    case VType::kDict:
      if (item.type == VType::kSeq && item.seq()->kind != SeqKind::kTuple) {
        return type_error("unhashable type: '" + type_name(item) + "'");
      }
      if (item.type == VType::kDict) return type_error("unhashable type: 'dict'");
      return container.dict()->find(item) != nullptr;
    default: return type_error("argument of type '" + type_name(container) + "' is not iterable");
  }
}

// ---- json.dumps

namespace {

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out.push_back('"');
  auto hex4 = [&](unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "\\u%04x", v);
    out += buf;
  };
  auto simple = [&](char32_t c) -> bool {
    switch (c) {
      case '"': out += "\\\""; return true;
      case '\\': out += "\\\\"; return true;
      case '\n': out += "\\n"; return true;
      case '\r': out += "\\r"; return true;
      case '\t': out += "\\t"; return true;
      case '\b': out += "\\b"; return true;
      case '\f': out += "\\f"; return true;
      default: return false;
    }
  };
  if (!ensure_ascii) {
    for (char ch : s) {
      auto c = static_cast<unsigned char>(ch);
      if (simple(c)) continue;
      if (c < 0x20) {
        hex4(c);
      } else {
        out.push_back(ch);
      }
    }
  } else {
    for (char32_t c : decode_utf8(s)) {
      if (simple(c)) continue;
      if (c >= 0x20 && c < 0x7F) {
        out.push_back(static_cast<char>(c));
      } else if (c < 0x10000) {
        hex4(static_cast<unsigned>(c));
      } else {
        char32_t v = c - 0x10000;
        hex4(0xD800 + static_cast<unsigned>(v >> 10));
        hex4(0xDC00 + static_cast<unsigned>(v & 0x3FF));
      }
    }
  }
  out.push_back('"');
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return format_float(d);
}

Status json_into(std::string& out, const Value& v, const JsonOptions& o, int level) {
  auto newline = [&](int lvl) {
    out.push_back('\n');
    for (int k = 0; k < lvl; ++k) out += o.indent;
  };
  switch (v.type) {
    case VType::kNone: out += "null"; return Status::ok_status();
    case VType::kBool: out += v.i ? "true" : "false"; return Status::ok_status();
    case VType::kInt: out += std::to_string(v.i); return Status::ok_status();
    case VType::kFloat: out += json_float(v.f); return Status::ok_status();
    case VType::kString: json_string(out, v.str(), o.ensure_ascii); return Status::ok_status();
    case VType::kSeq: {
      const SeqObj& seq = *v.seq();
      if (seq.kind != SeqKind::kList && seq.kind != SeqKind::kTuple) break;
      if (seq.items.empty()) {
        out += "[]";
        return Status::ok_status();
      }
      out.push_back('[');
      for (size_t k = 0; k < seq.items.size(); ++k) {
        if (k) out += o.item_sep;
        if (o.has_indent) newline(level + 1);
        KILN_RETURN_IF_ERROR(json_into(out, seq.items[k], o, level + 1));
      }
      if (o.has_indent) newline(level);
      out.push_back(']');
      return Status::ok_status();
    }
    case VType::kDict: {
      const DictObj& d = *v.dict();
      if (d.items.empty()) {
        out += "{}";
        return Status::ok_status();
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : d.items) items.push_back(&kv);
      if (o.sort_keys) {
        Status err;
        std::stable_sort(items.begin(), items.end(), [&](auto* x, auto* y) {
          auto c = py_compare(x->first, y->first, "<");
          if (!c.ok()) {
            if (err.ok()) err = c.status();
            return false;
          }
          return *c < 0;
        });
        KILN_RETURN_IF_ERROR(err);
      }
      out.push_back('{');
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += o.item_sep;
        first = false;
        if (o.has_indent) newline(level + 1);
        const Value& k = kv->first;
        std::string key;
        switch (k.type) {
          case VType::kString: key = k.str(); break;
          case VType::kInt: key = std::to_string(k.i); break;
          case VType::kFloat: key = json_float(k.f); break;
          case VType::kBool: key = k.i ? "true" : "false"; break;
          case VType::kNone: key = "null"; break;
          default: return type_error("keys must be str, int, float, bool or None, not " + type_name(k));
        }
        json_string(out, key, o.ensure_ascii);
        out += o.key_sep;
        KILN_RETURN_IF_ERROR(json_into(out, kv->second, o, level + 1));
      }
      if (o.has_indent) newline(level);
      out.push_back('}');
      return Status::ok_status();
    }
    default: break;
  }
  return type_error("Object of type " + type_name(v) + " is not JSON serializable");
}

template <typename J>
Result<Value> from_json_impl(const J& j, int depth) {
  if (depth > kMaxValueDepth) return invalid_argument("chat template context nests deeper than " +
                                                      std::to_string(kMaxValueDepth) + " levels");
  switch (j.type()) {
    case nlohmann::json::value_t::null:
    case nlohmann::json::value_t::discarded: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) {
        KILN_ASSIGN_OR_RETURN(Value item, from_json_impl(e, depth + 1));
        items.push_back(std::move(item));
      }
      return make_seq(SeqKind::kList, std::move(items));
    }
    case nlohmann::json::value_t::object: {
      std::vector<std::pair<Value, Value>> items;
      items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        KILN_ASSIGN_OR_RETURN(Value item, from_json_impl(it.value(), depth + 1));
        items.emplace_back(Value::string(it.key()), std::move(item));
      }
      return make_dict(std::move(items));
    }
    case nlohmann::json::value_t::binary: return invalid_argument("binary JSON values are not supported");
  }
  return Value::none();
}

}  // namespace

Result<std::string> dump_json(const Value& v, const JsonOptions& options) {
  std::string out;
  KILN_RETURN_IF_ERROR(json_into(out, v, options, 0));
  return out;
}

Result<Value> from_json(const nlohmann::json& j) { return from_json_impl(j, 0); }
Result<Value> from_json(const nlohmann::ordered_json& j) { return from_json_impl(j, 0); }

}  // namespace kiln::chat_template_detail
