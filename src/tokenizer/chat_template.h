// Chat templates: renders a Hugging Face `chat_template` (a Jinja2 template) the
// way transformers' `apply_chat_template` does, byte for byte.
//
// transformers renders with jinja2's ImmutableSandboxedEnvironment configured with
// trim_blocks=True, lstrip_blocks=True and the loopcontrols extension, its own
// `tojson` filter (json.dumps with ensure_ascii=False and no HTML escaping), and the
// globals `raise_exception(msg)` and `strftime_now(fmt)`. The context holds
// `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special
// tokens and any extra keyword arguments. This module reimplements that subset of
// Jinja2 in C++: a lexer, a parser to a small AST and a tree-walking evaluator with
// Python value semantics (str/int/float/bool/None/list/tuple/dict, jinja2's
// Undefined), sandboxed (the template sees only its context) and bounded (output
// bytes, loop iterations, recursion depth).
//
// Errors are Status values that name the template line and column (1-based, the
// column in code points): "chat template line 3:17: 'foo' is undefined".
//
// Deliberate differences from jinja2, all in corners chat templates do not reach:
// integers are 64-bit (Python's are unbounded: overflow is an error here); str.upper()
// and friends use simple case mappings (Python: 'ß'.upper() == 'SS'); jinja2's
// compile-time constant folding is not reproduced (so slicing a literal number fails
// here, and `-2 ** x` is (-2) ** x); printing a generator shows "<generator object>"
// without an address; identifiers are ASCII; no include/extends/import/block, no
// recursive loops, no cycler/lipsum, and the filters groupby, slice, pprint, random,
// striptags, urlencode, urlize, wordwrap, xmlattr, filesizeformat are refused by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kiln {

struct ChatTemplateLimits {
  size_t max_output_bytes = 1 << 20;      // also caps every string or list built while rendering
  int64_t max_loop_iterations = 100000;   // loop iterations and macro calls, all loops together
  int max_depth = 64;                     // nested macro calls
};

namespace chat_template_detail {
struct Program;
}

class ChatTemplate {
 public:
  // Syntax errors come back as kInvalidArgument naming line:column.
  static Result<ChatTemplate> parse(std::string_view source);

  // `context` is a JSON object whose keys become template variables, e.g.
  // {"messages": [...], "add_generation_prompt": true, "bos_token": "<s>"}.
  // nlohmann::json sorts object keys; to keep the caller's key order (Python dicts
  // keep insertion order, and `tojson` / `.items()` show it), pass an ordered_json.
  // Errors: kInvalidArgument (template or input error, raise_exception), kResourceExhausted
  // (a limit), kUnimplemented (a jinja2 feature Kiln lacks); all name line:column.
  Result<std::string> render(const nlohmann::json& context, const ChatTemplateLimits& limits = {}) const;
  Result<std::string> render_ordered(const nlohmann::ordered_json& context, const ChatTemplateLimits& limits = {}) const;
  // render() of an ordered_json; a template so that a braced-init context picks the
  // nlohmann::json overload instead of being ambiguous.
  template <typename J, typename = std::enable_if_t<std::is_same_v<J, nlohmann::ordered_json>>>
  Result<std::string> render(const J& context, const ChatTemplateLimits& limits = {}) const {
    return render_ordered(context, limits);
  }

 private:
  std::shared_ptr<const chat_template_detail::Program> program_;
};

// Builds the context transformers would (the special tokens of tokenizer_config.json
// as strings, `tools` and `documents` None unless given in extra_context, every other
// extra_context key as a template variable) and renders the config's "chat_template":
// a string, or a list of {"name", "template"} where "tool_use" is picked when tools
// are given and present, "default" otherwise.
Result<std::string> apply_chat_template(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                        bool add_generation_prompt, const nlohmann::json& extra_context = nullptr);
// The same keeping the key order of the caller's objects (see ChatTemplate::render).
Result<std::string> apply_chat_template_ordered(const nlohmann::ordered_json& tokenizer_config,
                                                const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                                const nlohmann::ordered_json& extra_context = nullptr);
template <typename J, typename = std::enable_if_t<std::is_same_v<J, nlohmann::ordered_json>>>
Result<std::string> apply_chat_template(const J& tokenizer_config, const nlohmann::ordered_json& messages,
                                        bool add_generation_prompt, const nlohmann::ordered_json& extra_context = nullptr) {
  return apply_chat_template_ordered(tokenizer_config, messages, add_generation_prompt, extra_context);
}

// ---------------------------------------------------------------------------------
// Internals shared by chat_template_*.cpp. Not part of the API.
namespace chat_template_detail {

struct Pos {
  int line = 0;
  int col = 0;
};

// "chat template line L:C: message"; keeps an already located message as it is.
Status located(const Status& status, Pos pos);
Status error_at(Pos pos, const std::string& message, StatusCode code = StatusCode::kInvalidArgument);
// An error without a position yet (the evaluator adds the node's).
inline Status type_error(std::string message) { return invalid_argument(std::move(message)); }

// ---- Values: Python objects as jinja2 sees them.
enum class VType : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kSeq, kDict, kNamespace, kFunction, kLoop };

// Python's sequence-like types. kIterator is a one-shot generator (map, select, ...):
// it has no len(), is always true and is consumed by iteration.
enum class SeqKind : uint8_t { kList, kTuple, kIterator, kRange, kDictKeys, kDictValues, kDictItems };

struct Object {
  virtual ~Object() = default;
};

struct Value {
  VType type = VType::kUndefined;
  bool markup = false;  // a markupsafe.Markup string (from |safe, |escape)
  int64_t i = 0;        // bool and int
  double f = 0;
  std::shared_ptr<const std::string> s;  // string; for Undefined the message it fails with
  std::shared_ptr<Object> obj;

  static Value undefined(std::string hint);
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v, bool markup = false);

  bool is_undefined() const { return type == VType::kUndefined; }
  bool is_none() const { return type == VType::kNone; }
  bool is_string() const { return type == VType::kString; }
  bool is_int() const { return type == VType::kInt; }         // not bool
  bool is_intlike() const { return type == VType::kInt || type == VType::kBool; }
  bool is_number() const { return type == VType::kInt || type == VType::kBool || type == VType::kFloat; }
  const std::string& str() const { return *s; }
  const std::string& undefined_hint() const {
    static const std::string kUnnamed = "undefined value";
    return s ? *s : kUnnamed;
  }
  double as_double() const { return type == VType::kFloat ? f : static_cast<double>(i); }

  struct SeqObj* seq() const;
  struct DictObj* dict() const;
  struct NamespaceObj* ns() const;
  struct FunctionObj* fn() const;
  struct LoopObj* loop() const;
};

constexpr int kMaxValueDepth = 512;  // nesting of lists/dicts

// Whether `v` is, or may reference, a namespace (or a loop, or a bound function).
// A namespace may not hold such a value: that is the only way to build a reference
// cycle, since every other container is immutable once built.
bool may_hold_namespace(const Value& v);

struct SeqObj : Object {
  SeqKind kind = SeqKind::kList;
  std::vector<Value> items;
  int depth = 1;
  bool holds_ns = false;
  size_t consumed = 0;                         // kIterator: items already taken
  int64_t range_start = 0, range_stop = 0, range_step = 1;  // kRange, for its repr
};

struct DictObj : Object {
  std::vector<std::pair<Value, Value>> items;  // insertion order, like a Python dict
  std::unordered_map<std::string, size_t> str_index;
  int depth = 1;
  bool holds_ns = false;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);  // insert or overwrite in place
};

struct NamespaceObj : Object {  // jinja2's namespace(): the one mutable object
  std::vector<std::pair<std::string, Value>> attrs;
  Value* find(std::string_view name);
  Status set(const std::string& name, Value value);  // refuses values that may_hold_namespace
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

class Renderer;
using NativeFn = std::function<Result<Value>(Renderer&, CallArgs&, Pos)>;

struct FunctionObj : Object {
  std::string name;
  bool is_macro = false;
  NativeFn fn;
};

struct LoopObj : Object {
  std::shared_ptr<SeqObj> items;  // the (filtered) items being iterated
  size_t index0 = 0;
  int depth = 1;
  bool has_last_changed = false;
  Value last_changed;
};

Value make_seq(SeqKind kind, std::vector<Value> items);
Value make_dict(std::vector<std::pair<Value, Value>> items);
Value make_function(std::string name, NativeFn fn);
int value_depth(const Value& v);

// Python semantics.
bool truthy(const Value& v);
std::string type_name(const Value& v);         // 'int', 'str', 'dict', ... as Python names them
std::string object_type_repr(const Value& v);  // "dict object", as jinja2's error messages say
std::string to_str(const Value& v);            // str(v); Undefined is ""
std::string repr(const Value& v);              // repr(v)
std::string repr_string(std::string_view s);
std::string format_float(double d);            // float.__repr__
bool py_equal(const Value& a, const Value& b);
Result<int> py_compare(const Value& a, const Value& b, const char* op);  // <0, 0, >0, or TypeError
Result<std::vector<Value>> iterate(const Value& v);  // list(v); consumes an iterator
Result<int64_t> py_len(const Value& v);
Result<bool> contains(const Value& container, const Value& item);  // item in container

struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
Result<std::string> dump_json(const Value& v, const JsonOptions& options);  // json.dumps
Result<Value> from_json(const nlohmann::json& j);
Result<Value> from_json(const nlohmann::ordered_json& j);

// UTF-8 and Python str helpers (code points, like Python's str).
std::u32string decode_utf8(std::string_view s);
std::string encode_utf8(std::u32string_view s);
void append_utf8(std::string& out, char32_t cp);
size_t count_code_points(std::string_view s);
bool is_ascii(std::string_view s);
bool py_isspace(char32_t cp);
std::string py_strip(std::string_view s, const Value* chars, bool left, bool right);
std::vector<std::string> py_splitlines(std::string_view s, bool keepends);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_capitalize(std::string_view s);
std::string html_escape(std::string_view s);

// Helpers shared by chat_template_filters.cpp and chat_template_methods.cpp.
Result<Value> make_str(Renderer& r, std::string s, bool markup = false);  // checks the size cap
Result<Value> make_list(Renderer& r, SeqKind kind, std::vector<Value> items);
Result<int64_t> int_arg(const Value& v, const char* what);
Result<std::string> str_arg(const Value& v, const char* what);
bool is_cased_upper(char32_t c);
bool is_cased_lower(char32_t c);
bool is_cased(char32_t c);
bool is_alpha(char32_t c);
bool is_decimal(char32_t c);
bool is_numeric(char32_t c);
char32_t to_upper(char32_t c);
char32_t to_lower(char32_t c);
char32_t to_title(char32_t c);
std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count);
Result<Value> replace_checked(Renderer& r, const std::string& s, const std::string& old, const std::string& repl,
                              int64_t count);
bool py_islower(std::string_view s);
bool py_isupper(std::string_view s);
std::string pad(const std::string& s, int64_t width, char32_t fill, char align);  // align '<', '>' or '^'
std::string py_center(const std::string& s, int64_t width, char32_t fill);
bool float_to_int(double d, int64_t* out);  // false when not finite or beyond int64

// ---- Lexer
enum class TokType : uint8_t { kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  TokType type;
  Pos pos;
  std::string text;  // data, name, operator, decoded string literal
  int64_t ival = 0;
  double fval = 0;
};

Result<std::vector<Token>> tokenize(std::string_view source);

// ---- AST
enum class ExprKind : uint8_t {
  kConst, kName, kList, kTuple, kDict, kGetAttr, kGetItem, kSlice, kCall, kFilter, kTest,
  kNeg, kPos, kNot, kBinary, kConcat, kCompare, kAnd, kOr, kCondExpr,
};
enum class BinOp : uint8_t { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow };
enum class CmpOp : uint8_t { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind;
  Pos pos;
  Value value;       // kConst
  std::string name;  // kName; kGetAttr attribute; kFilter / kTest name
  BinOp op = BinOp::kAdd;
  std::vector<CmpOp> cmp;
  // kList/kTuple/kConcat: items. kDict: key, value, key, value... kGetAttr: {obj}.
  // kGetItem: {obj, index}. kSlice: {start, stop, step}, each may be null.
  // kCall: {callee, args...}. kFilter/kTest: {subject (null in a filter block), args...}.
  // kNeg/kPos/kNot: {x}. kBinary/kAnd/kOr: {a, b}. kCompare: {a, b, c...} with cmp.
  // kCondExpr: {cond, then, else (may be null)}.
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr dyn_args, dyn_kwargs;  // *args, **kwargs
  bool soft = false;             // an unknown filter/test here fails only when evaluated
};

struct Target {  // an assignment target
  enum Kind : uint8_t { kName, kTuple, kNsAttr } kind = kName;
  Pos pos;
  std::string name;
  std::string attr;
  std::vector<Target> items;
};

enum class StmtKind : uint8_t {
  kData, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kCallBlock, kFilterBlock, kWith, kBreak, kContinue, kScope,
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;

struct Stmt {
  StmtKind kind;
  Pos pos;
  std::string text;  // kData
  // kOutput: the expressions. kIf: {test}. kFor: {iter, filter (may be null)}. kSet: {value}.
  // kSetBlock: {filter (may be null)}. kFilterBlock: {filter}. kCallBlock: {call}. kWith: values.
  std::vector<ExprPtr> exprs;
  std::vector<Target> targets;  // kFor, kSet, kSetBlock: one; kWith: one per value
  std::vector<StmtPtr> body, else_body;
  // kMacro / kCallBlock signature.
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  bool uses_caller = false, uses_varargs = false, uses_kwargs = false;
};

struct Program {
  std::vector<StmtPtr> body;
};

Result<std::shared_ptr<Program>> parse_program(std::string_view source);

// ---- Filters, tests, methods and globals (chat_template_filters.cpp)
using FilterFn = Result<Value> (*)(Renderer&, const Value& subject, CallArgs& args, Pos pos);
using TestFn = Result<bool> (*)(Renderer&, const Value& subject, CallArgs& args, Pos pos);
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
// obj.name as a Python attribute of a str, list, tuple or dict: false when there is
// no such method (the caller then tries an item lookup); else *out is the bound
// method, or for a mutating one (list.append, dict.update, ...) an Undefined that
// fails when called, as in jinja2's ImmutableSandboxedEnvironment.
bool lookup_method(const Value& obj, const std::string& name, Value* out);
// The template globals: range (capped at 100000 items like the sandbox's), namespace,
// dict, joiner, raise_exception, strftime_now. kUndefined when there is none.
Value lookup_global(const std::string& name);
// printf-style `fmt % args` (the % operator on a str and the |format filter).
Result<Value> percent_format(Renderer& r, const Value& fmt, const Value& args);

// Binds Python-style call arguments to a signature; missing optional args stay kUndefined
// with `present[i] == false`.
class ArgBinder {
 public:
  ArgBinder(const char* fname, std::initializer_list<const char*> params) : fname_(fname), params_(params) {}
  Status bind(CallArgs& args, size_t required, bool allow_extra_pos = false, bool allow_extra_kw = false);
  bool has(size_t i) const { return present_[i]; }
  const Value& get(size_t i) const { return values_[i]; }
  std::vector<Value> extra_pos;
  std::vector<std::pair<std::string, Value>> extra_kw;

 private:
  const char* fname_;
  std::vector<const char*> params_;
  std::vector<Value> values_;
  std::vector<bool> present_;
};

// ---- Evaluator (chat_template_eval.cpp): the bits filters call back into.
class Renderer {
 public:
  virtual ~Renderer() = default;
  virtual const ChatTemplateLimits& limits() const = 0;
  // Fails with kResourceExhausted when a string or list would exceed the output cap.
  virtual Status check_size(size_t n) const = 0;
  virtual Status count_steps(int64_t n) = 0;
  virtual Result<Value> call(const Value& callee, CallArgs& args, Pos pos) = 0;
  // jinja2's environment.getattr / getitem, sandboxed.
  virtual Result<Value> get_attr(const Value& obj, const std::string& name) = 0;
  virtual Result<Value> get_item(const Value& obj, const Value& key) = 0;
};

// Python's binary arithmetic (+ - * / // % **) on template values.
Result<Value> binary_op(Renderer& r, BinOp op, const Value& a, const Value& b);

}  // namespace chat_template_detail
}  // namespace kiln
