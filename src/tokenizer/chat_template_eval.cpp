// Chat templates: the evaluator. Walks the AST with jinja2's scoping (each loop
// iteration, macro call, call/filter/set/with block and {% generation %} gets an
// inner scope whose writes do not leak out; `if` does not), sandboxed attribute and
// item lookup, Python arithmetic, and the limits of ChatTemplateLimits. Also the
// public entry points ChatTemplate::render and apply_chat_template.
#include <cmath>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {
namespace {

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
};

enum class Flow { kNormal, kBreak, kContinue };

const char* const kBinOpSymbols[] = {"+", "-", "*", "/", "//", "%", "**"};

class Interpreter final : public Renderer {
 public:
  explicit Interpreter(const ChatTemplateLimits& limits) : limits_(limits) {}

  Result<std::string> run(const Program& program, const Value& context) {
    auto root = std::make_shared<Scope>();
    for (const auto& [k, v] : context.dict()->items) root->vars[k.str()] = v;
    scope_ = root;
    std::string out;
    out_ = &out;
    Flow flow = Flow::kNormal;
    KILN_RETURN_IF_ERROR(exec_block(program.body, &flow));
    return out;
  }

  // ---- Renderer

  const ChatTemplateLimits& limits() const override { return limits_; }

  Status check_size(size_t n) const override {
    if (n > limits_.max_output_bytes) {
      return resource_exhausted("output or value exceeds " + std::to_string(limits_.max_output_bytes) +
                                " bytes (ChatTemplateLimits::max_output_bytes)");
    }
    return Status::ok_status();
  }

  Status count_steps(int64_t n) override {
    steps_ += n;
    if (steps_ > limits_.max_loop_iterations) {
      return resource_exhausted("exceeded " + std::to_string(limits_.max_loop_iterations) +
                                " loop iterations and macro calls (ChatTemplateLimits::max_loop_iterations)");
    }
    return Status::ok_status();
  }

  Result<Value> call(const Value& callee, CallArgs& args, Pos pos) override {
    if (callee.type == VType::kFunction) return callee.fn()->fn(*this, args, pos);
    if (callee.is_undefined()) return type_error(callee.undefined_hint());
    return type_error("'" + type_name(callee) + "' object is not callable");
  }

  Result<Value> get_attr(const Value& obj, const std::string& name) override {
    if (obj.is_undefined()) return type_error(obj.undefined_hint());
    Value m;
    switch (obj.type) {
      case VType::kDict: {
        if (lookup_method(obj, name, &m)) return m;
        if (const Value* v = obj.dict()->find(std::string_view(name))) return *v;
        break;
      }
      case VType::kNamespace:
        if (Value* v = obj.ns()->find(name)) return *v;
        break;
      case VType::kLoop: return loop_attr(obj, name);
      default:
        if (lookup_method(obj, name, &m)) return m;
        break;
    }
    return Value::undefined("'" + object_type_repr(obj) + "' has no attribute '" + name + "'");
  }

  Result<Value> get_item(const Value& obj, const Value& key) override {
    if (obj.is_undefined()) return type_error(obj.undefined_hint());
    switch (obj.type) {
      case VType::kDict:
        if (const Value* v = obj.dict()->find(key)) return *v;
        break;
      case VType::kSeq: {
        const SeqObj& seq = *obj.seq();
        bool indexable = seq.kind == SeqKind::kList || seq.kind == SeqKind::kTuple || seq.kind == SeqKind::kRange;
        if (indexable && key.is_intlike()) {
          int64_t n = static_cast<int64_t>(seq.items.size());
          int64_t idx = key.i < 0 ? key.i + n : key.i;
          if (idx >= 0 && idx < n) return seq.items[static_cast<size_t>(idx)];
        }
        break;
      }
      case VType::kString:
        if (key.is_intlike()) {
          const std::string& s = obj.str();
          if (is_ascii(s)) {
            int64_t n = static_cast<int64_t>(s.size());
            int64_t idx = key.i < 0 ? key.i + n : key.i;
            if (idx >= 0 && idx < n) return Value::string(std::string(1, s[static_cast<size_t>(idx)]), obj.markup);
          } else {
            std::u32string u = decode_utf8(s);
            int64_t n = static_cast<int64_t>(u.size());
            int64_t idx = key.i < 0 ? key.i + n : key.i;
            if (idx >= 0 && idx < n) {
              std::string one;
              append_utf8(one, u[static_cast<size_t>(idx)]);
              return Value::string(std::move(one), obj.markup);
            }
          }
        }
        break;
      case VType::kNamespace:
      case VType::kLoop:
        if (key.is_string()) return get_attr(obj, key.str());
        break;
      default: break;
    }
    if (key.is_string()) {
      Value m;
      if (lookup_method(obj, key.str(), &m)) return m;
      return Value::undefined("'" + object_type_repr(obj) + "' has no attribute '" + key.str() + "'");
    }
    return Value::undefined(object_type_repr(obj) + " has no element " + repr(key));
  }

  // A macro (or a {% call %} block's caller) invoked with `args`.
  Result<Value> call_macro(const Stmt& m, const std::shared_ptr<Scope>& def_scope, CallArgs& args, Pos pos) {
    KILN_RETURN_IF_ERROR(count_steps(1));
    if (call_depth_ >= limits_.max_depth) {
      return resource_exhausted("macro calls nest deeper than " + std::to_string(limits_.max_depth) +
                                " (ChatTemplateLimits::max_depth)");
    }
    const std::string name = m.kind == StmtKind::kCallBlock ? "caller" : m.name;
    auto scope = std::make_shared<Scope>();
    scope->parent = def_scope;
    const size_t np = m.params.size();
    std::vector<bool> bound(np, false);
    std::vector<Value> extra_pos;
    for (size_t k = 0; k < args.pos.size(); ++k) {
      if (k < np) {
        scope->vars[m.params[k]] = args.pos[k];
        bound[k] = true;
      } else {
        extra_pos.push_back(args.pos[k]);
      }
    }
    if (!extra_pos.empty() && !m.uses_varargs) {
      return type_error("macro '" + name + "' takes not more than " + std::to_string(np) + " argument(s)");
    }
    Value caller;
    bool have_caller = false;
    std::vector<std::pair<Value, Value>> extra_kw;
    for (auto& [k, v] : args.kw) {
      size_t idx = np;
      for (size_t x = 0; x < np; ++x) {
        if (m.params[x] == k) idx = x;
      }
      if (idx < np) {
        if (bound[idx]) return type_error("macro '" + name + "' got multiple values for argument '" + k + "'");
        scope->vars[k] = v;
        bound[idx] = true;
      } else if (k == "caller" && m.uses_caller) {
        caller = v;
        have_caller = true;
      } else {
        extra_kw.emplace_back(Value::string(k), v);
      }
    }
    if (!extra_kw.empty() && !m.uses_kwargs) {
      return type_error("macro '" + name + "' takes no keyword argument '" + extra_kw[0].first.str() + "'");
    }
    ++call_depth_;
    struct Restore {
      Interpreter* in;
      std::shared_ptr<Scope> scope;
      std::string* out;
      ~Restore() {
        --in->call_depth_;
        in->scope_ = scope;
        in->out_ = out;
      }
    } restore{this, scope_, out_};
    scope_ = scope;
    const size_t first_default = np - m.defaults.size();
    for (size_t k = 0; k < np; ++k) {
      if (bound[k]) continue;
      if (k >= first_default) {
        KILN_ASSIGN_OR_RETURN(Value d, eval(*m.defaults[k - first_default]));
        scope->vars[m.params[k]] = std::move(d);
      } else {
        scope->vars[m.params[k]] = Value::undefined("parameter '" + m.params[k] + "' was not provided");
      }
    }
    if (m.uses_caller) scope->vars["caller"] = have_caller ? caller : Value::undefined("No caller defined");
    if (m.uses_varargs) scope->vars["varargs"] = make_seq(SeqKind::kTuple, std::move(extra_pos));
    if (m.uses_kwargs) scope->vars["kwargs"] = make_dict(std::move(extra_kw));
    std::string buf;
    out_ = &buf;
    Flow flow = Flow::kNormal;
    KILN_RETURN_IF_ERROR(exec_block(m.body, &flow));
    return Value::string(std::move(buf));
  }

 private:
  // ---- statements

  // Every level of template recursion (statements, expressions, macro calls) passes
  // through exec() or eval(); capping their nesting bounds the native stack
  // (under 1 KiB per level in a release build, a few KiB under ASan).
  static constexpr int kMaxNesting = 500;
  struct NestGuard {
    int* n;
    ~NestGuard() { --*n; }
  };
  Status nest_error(Pos pos) const {
    return error_at(pos, "template nests too deeply while rendering (more than " + std::to_string(kMaxNesting) +
                             " levels of statements, expressions and macro calls)",
                    StatusCode::kResourceExhausted);
  }
  Status exec(const Stmt& s, Flow* flow) {
    if (nesting_ >= kMaxNesting) return nest_error(s.pos);
    ++nesting_;
    NestGuard g{&nesting_};
    return exec_inner(s, flow);
  }
  Result<Value> eval(const Expr& e) {
    if (nesting_ >= kMaxNesting) return nest_error(e.pos);
    ++nesting_;
    NestGuard g{&nesting_};
    return eval_inner(e);
  }

  Status emit(std::string_view s) {
    if (out_->size() + s.size() > limits_.max_output_bytes) {
      return resource_exhausted("output exceeds " + std::to_string(limits_.max_output_bytes) +
                                " bytes (ChatTemplateLimits::max_output_bytes)");
    }
    out_->append(s);
    return Status::ok_status();
  }

  std::shared_ptr<Scope> child_scope() {
    auto s = std::make_shared<Scope>();
    s->parent = scope_;
    return s;
  }

  struct ScopeRestore {
    Interpreter* in;
    std::shared_ptr<Scope> saved;
    ~ScopeRestore() { in->scope_ = saved; }
  };

  Status exec_block(const std::vector<StmtPtr>& body, Flow* flow) {
    for (const auto& s : body) {
      KILN_RETURN_IF_ERROR(exec(*s, flow));
      if (*flow != Flow::kNormal) return Status::ok_status();
    }
    return Status::ok_status();
  }

  // Renders `body` in a fresh inner scope into a string.
  Result<std::string> capture(const std::vector<StmtPtr>& body, Flow* flow) {
    std::string buf;
    std::string* saved_out = out_;
    ScopeRestore restore{this, scope_};
    scope_ = child_scope();
    out_ = &buf;
    Status st = exec_block(body, flow);
    out_ = saved_out;
    if (!st.ok()) return st;
    return buf;
  }

  Status exec_inner(const Stmt& s, Flow* flow) {
    switch (s.kind) {
      case StmtKind::kData: return located(emit(s.text), s.pos);
      case StmtKind::kOutput:
        for (const auto& e : s.exprs) {
          KILN_ASSIGN_OR_RETURN(Value v, eval(*e));
          KILN_RETURN_IF_ERROR(located(emit(to_str(v)), e->pos));
        }
        return Status::ok_status();
      case StmtKind::kIf: {
        KILN_ASSIGN_OR_RETURN(Value test, eval(*s.exprs[0]));
        return exec_block(truthy(test) ? s.body : s.else_body, flow);
      }
      case StmtKind::kFor: return exec_for(s, flow);
      case StmtKind::kSet: {
        KILN_ASSIGN_OR_RETURN(Value v, eval(*s.exprs[0]));
        return assign(s.targets[0], v);
      }
      case StmtKind::kSetBlock: {
        KILN_ASSIGN_OR_RETURN(std::string text, capture(s.body, flow));
        Value v = Value::string(std::move(text));
        if (s.exprs[0]) {
          KILN_ASSIGN_OR_RETURN(v, eval_filter(*s.exprs[0], &v));
        }
        return assign(s.targets[0], v);
      }
      case StmtKind::kMacro: {
        Value fn = make_closure(s, s.name);
        scope_->vars[s.name] = std::move(fn);
        return Status::ok_status();
      }
      case StmtKind::kCallBlock: {
        Value caller = make_closure(s, "caller");
        const Expr& call_expr = *s.exprs[0];
        KILN_ASSIGN_OR_RETURN(Value callee, eval(*call_expr.args[0]));
        CallArgs args;
        KILN_RETURN_IF_ERROR(eval_args(call_expr, &args));
        args.kw.emplace_back("caller", std::move(caller));
        auto r = call(callee, args, call_expr.pos);
        if (!r.ok()) return located(r.status(), call_expr.pos);
        return located(emit(to_str(*r)), s.pos);
      }
      case StmtKind::kFilterBlock: {
        KILN_ASSIGN_OR_RETURN(std::string text, capture(s.body, flow));
        Value v = Value::string(std::move(text));
        KILN_ASSIGN_OR_RETURN(Value r, eval_filter(*s.exprs[0], &v));
        return located(emit(to_str(r)), s.pos);
      }
      case StmtKind::kWith: {
        std::vector<Value> values;
        for (const auto& e : s.exprs) {
          KILN_ASSIGN_OR_RETURN(Value v, eval(*e));
          values.push_back(std::move(v));
        }
        ScopeRestore restore{this, scope_};
        scope_ = child_scope();
        for (size_t k = 0; k < values.size(); ++k) KILN_RETURN_IF_ERROR(assign(s.targets[k], values[k]));
        return exec_block(s.body, flow);
      }
      case StmtKind::kBreak: *flow = Flow::kBreak; return Status::ok_status();
      case StmtKind::kContinue: *flow = Flow::kContinue; return Status::ok_status();
      case StmtKind::kScope: {
        ScopeRestore restore{this, scope_};
        scope_ = child_scope();
        return exec_block(s.body, flow);
      }
    }
    return Status::ok_status();
  }

  // A macro or caller closing over the current scope. The scope is kept alive by
  // the interpreter (not by the closure, which would make a reference cycle).
  Value make_closure(const Stmt& s, const std::string& name) {
    keep_alive_.push_back(scope_);
    std::weak_ptr<Scope> weak = scope_;
    const Stmt* st = &s;
    Value fn = make_function(name, [st, weak](Renderer& r, CallArgs& a, Pos pos) -> Result<Value> {
      return static_cast<Interpreter&>(r).call_macro(*st, weak.lock(), a, pos);
    });
    fn.fn()->is_macro = true;
    return fn;
  }

  Status exec_for(const Stmt& s, Flow* flow) {
    KILN_ASSIGN_OR_RETURN(Value iterable, eval(*s.exprs[0]));
    auto listed = iterate(iterable);
    if (!listed.ok()) return located(listed.status(), s.exprs[0]->pos);
    std::vector<Value> items = std::move(listed).value();
    ScopeRestore restore{this, scope_};
    std::shared_ptr<Scope> outer = scope_;
    if (const Expr* filter = s.exprs[1].get()) {
      std::vector<Value> kept;
      for (Value& item : items) {
        KILN_RETURN_IF_ERROR(located(count_steps(1), s.pos));
        scope_ = std::make_shared<Scope>();
        scope_->parent = outer;
        KILN_RETURN_IF_ERROR(assign(s.targets[0], item));
        KILN_ASSIGN_OR_RETURN(Value keep, eval(*filter));
        if (truthy(keep)) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    auto loop = std::make_shared<LoopObj>();
    loop->items = std::make_shared<SeqObj>();
    loop->items->items = std::move(items);
    struct ForgetChanged {  // loop.changed(loop) would otherwise keep a reference cycle
      LoopObj* l;
      ~ForgetChanged() {
        l->last_changed = Value();
        l->has_last_changed = false;
      }
    } forget{loop.get()};
    Value loop_value;
    loop_value.type = VType::kLoop;
    loop_value.obj = loop;
    const std::vector<Value>& list = loop->items->items;
    if (list.empty()) {
      scope_ = std::make_shared<Scope>();
      scope_->parent = outer;
      return exec_block(s.else_body, flow);
    }
    for (size_t k = 0; k < list.size(); ++k) {
      KILN_RETURN_IF_ERROR(located(count_steps(1), s.pos));
      loop->index0 = k;
      scope_ = std::make_shared<Scope>();
      scope_->parent = outer;
      KILN_RETURN_IF_ERROR(assign(s.targets[0], list[k]));
      scope_->vars["loop"] = loop_value;
      Flow f = Flow::kNormal;
      KILN_RETURN_IF_ERROR(exec_block(s.body, &f));
      if (f == Flow::kBreak) break;
    }
    return Status::ok_status();
  }

  Status assign(const Target& t, const Value& v) {
    switch (t.kind) {
      case Target::kName: scope_->vars[t.name] = v; return Status::ok_status();
      case Target::kNsAttr: {
        const Value* ns = lookup(t.name);
        if (!ns || ns->type != VType::kNamespace) {
          return error_at(t.pos, "cannot assign attribute on non-namespace object");
        }
        return located(ns->ns()->set(t.attr, v), t.pos);
      }
      case Target::kTuple: {
        auto items = iterate(v);
        if (!items.ok()) return located(items.status(), t.pos);
        size_t want = t.items.size(), got = items->size();
        if (got > want) return error_at(t.pos, "too many values to unpack (expected " + std::to_string(want) + ")");
        if (got < want) {
          return error_at(t.pos, "not enough values to unpack (expected " + std::to_string(want) + ", got " +
                                     std::to_string(got) + ")");
        }
        for (size_t k = 0; k < want; ++k) KILN_RETURN_IF_ERROR(assign(t.items[k], (*items)[k]));
        return Status::ok_status();
      }
    }
    return Status::ok_status();
  }

  const Value* lookup(const std::string& name) const {
    for (const Scope* s = scope_.get(); s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }

  // ---- expressions

  Status eval_args(const Expr& e, CallArgs* out) {
    for (size_t k = 1; k < e.args.size(); ++k) {
      KILN_ASSIGN_OR_RETURN(Value v, eval(*e.args[k]));
      out->pos.push_back(std::move(v));
    }
    for (const auto& [name, ex] : e.kwargs) {
      KILN_ASSIGN_OR_RETURN(Value v, eval(*ex));
      out->kw.emplace_back(name, std::move(v));
    }
    if (e.dyn_args) {
      KILN_ASSIGN_OR_RETURN(Value v, eval(*e.dyn_args));
      auto items = iterate(v);
      if (!items.ok()) return located(items.status(), e.dyn_args->pos);
      for (auto& x : *items) out->pos.push_back(std::move(x));
    }
    if (e.dyn_kwargs) {
      KILN_ASSIGN_OR_RETURN(Value v, eval(*e.dyn_kwargs));
      if (v.type != VType::kDict) return error_at(e.dyn_kwargs->pos, "argument after ** must be a mapping");
      for (const auto& [k, x] : v.dict()->items) {
        if (!k.is_string()) return error_at(e.dyn_kwargs->pos, "keywords must be strings");
        out->kw.emplace_back(k.str(), x);
      }
    }
    return Status::ok_status();
  }

  Result<Value> eval_filter(const Expr& e, const Value* block_subject) {
    Value subject;
    if (!e.args[0]) {
      subject = *block_subject;
    } else if (e.args[0]->kind == ExprKind::kFilter) {
      KILN_ASSIGN_OR_RETURN(subject, eval_filter(*e.args[0], block_subject));
    } else {
      KILN_ASSIGN_OR_RETURN(subject, eval(*e.args[0]));
    }
    FilterFn f = find_filter(e.name);
    if (!f) return error_at(e.pos, "No filter named '" + e.name + "' found.");
    CallArgs args;
    KILN_RETURN_IF_ERROR(eval_args(e, &args));
    auto r = f(*this, subject, args, e.pos);
    if (!r.ok()) return located(r.status(), e.pos);
    return r;
  }

  Result<Value> make_sequence(SeqKind kind, std::vector<Value> items, Pos pos) {
    KILN_RETURN_IF_ERROR(located(check_size(items.size()), pos));
    Value v = make_seq(kind, std::move(items));
    if (value_depth(v) > kMaxValueDepth) return error_at(pos, "value nests too deeply");
    return v;
  }

  static bool hashable(const Value& v) {
    if (v.type == VType::kDict) return false;
    if (v.type == VType::kSeq) {
      if (v.seq()->kind != SeqKind::kTuple) return false;
      for (const Value& x : v.seq()->items) {
        if (!hashable(x)) return false;
      }
    }
    return true;
  }

  Result<Value> eval_slice(const Value& obj, const Expr& slice, Pos pos) {
    int64_t parts[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!slice.args[static_cast<size_t>(k)]) continue;
      KILN_ASSIGN_OR_RETURN(Value v, eval(*slice.args[static_cast<size_t>(k)]));
      if (v.is_none()) continue;
      if (v.is_undefined()) return error_at(pos, v.undefined_hint());
      if (!v.is_intlike()) {
        return error_at(pos, "slice indices must be integers or None or have an __index__ method");
      }
      parts[k] = v.i;
      given[k] = true;
    }
    if (given[2] && parts[2] == 0) return error_at(pos, "slice step cannot be zero");
    auto slice_indices = [&](int64_t len, std::vector<size_t>* out) {
      int64_t step = given[2] ? parts[2] : 1;
      int64_t start, stop;
      auto adjust = [&](int64_t v, int64_t lo, int64_t hi) {
        if (v < 0) {
          v += len;
          if (v < 0) v = lo;
        } else if (v >= len) {
          v = hi;
        }
        return v;
      };
      if (step > 0) {
        start = given[0] ? adjust(parts[0], 0, len) : 0;
        stop = given[1] ? adjust(parts[1], 0, len) : len;
        for (int64_t i = start; i < stop; i += step) out->push_back(static_cast<size_t>(i));
      } else {
        start = given[0] ? adjust(parts[0], -1, len - 1) : len - 1;
        stop = given[1] ? adjust(parts[1], -1, len - 1) : -1;
        for (int64_t i = start; i > stop; i += step) out->push_back(static_cast<size_t>(i));
      }
    };
    std::vector<size_t> idx;
    if (obj.is_string()) {
      const std::string& s = obj.str();
      std::string out;
      if (is_ascii(s)) {
        slice_indices(static_cast<int64_t>(s.size()), &idx);
        out.reserve(idx.size());
        for (size_t i : idx) out.push_back(s[i]);
      } else {
        std::u32string u = decode_utf8(s);
        slice_indices(static_cast<int64_t>(u.size()), &idx);
        for (size_t i : idx) append_utf8(out, u[i]);
      }
      return Value::string(std::move(out), obj.markup);
    }
    if (obj.type == VType::kSeq) {
      const SeqObj& seq = *obj.seq();
      if (seq.kind == SeqKind::kList || seq.kind == SeqKind::kTuple || seq.kind == SeqKind::kRange) {
        slice_indices(static_cast<int64_t>(seq.items.size()), &idx);
        std::vector<Value> out;
        out.reserve(idx.size());
        for (size_t i : idx) out.push_back(seq.items[i]);
        return make_seq(seq.kind == SeqKind::kTuple ? SeqKind::kTuple : SeqKind::kList, std::move(out));
      }
    }
    // jinja2 compiles a slice to a plain Python subscript (no sandbox fallback to Undefined).
    if (obj.type == VType::kDict) return error_at(pos, "unhashable type: 'slice'");
    return error_at(pos, "'" + type_name(obj) + "' object is not subscriptable");
  }

  Result<bool> compare(CmpOp op, const Value& a, const Value& b) {
    switch (op) {
      case CmpOp::kEq: return py_equal(a, b);
      case CmpOp::kNe: return !py_equal(a, b);
      case CmpOp::kIn: return contains(b, a);
      case CmpOp::kNotIn: {
        KILN_ASSIGN_OR_RETURN(bool in, contains(b, a));
        return !in;
      }
      default: break;
    }
    const char* sym = op == CmpOp::kLt ? "<" : op == CmpOp::kLe ? "<=" : op == CmpOp::kGt ? ">" : ">=";
    KILN_ASSIGN_OR_RETURN(int c, py_compare(a, b, sym));
    switch (op) {
      case CmpOp::kLt: return c == -1;
      case CmpOp::kLe: return c == -1 || c == 0;
      case CmpOp::kGt: return c == 1;
      default: return c == 1 || c == 0;
    }
  }

  Result<Value> eval_inner(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kConst: return e.value;
      case ExprKind::kName: {
        if (const Value* v = lookup(e.name)) return *v;
        Value g = lookup_global(e.name);
        if (!g.is_undefined()) return g;
        return Value::undefined("'" + e.name + "' is undefined");
      }
      case ExprKind::kList:
      case ExprKind::kTuple: {
        std::vector<Value> items;
        items.reserve(e.args.size());
        for (const auto& a : e.args) {
          KILN_ASSIGN_OR_RETURN(Value v, eval(*a));
          items.push_back(std::move(v));
        }
        return make_sequence(e.kind == ExprKind::kList ? SeqKind::kList : SeqKind::kTuple, std::move(items), e.pos);
      }
      case ExprKind::kDict: {
        std::vector<std::pair<Value, Value>> items;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          KILN_ASSIGN_OR_RETURN(Value key, eval(*e.args[k]));
          KILN_ASSIGN_OR_RETURN(Value val, eval(*e.args[k + 1]));
          if (!hashable(key)) return error_at(e.args[k]->pos, "unhashable type: '" + type_name(key) + "'");
          items.emplace_back(std::move(key), std::move(val));
        }
        Value d = make_dict(std::move(items));
        if (value_depth(d) > kMaxValueDepth) return error_at(e.pos, "value nests too deeply");
        return d;
      }
      case ExprKind::kGetAttr: {
        KILN_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
        auto r = get_attr(obj, e.name);
        if (!r.ok()) return located(r.status(), e.pos);
        return r;
      }
      case ExprKind::kGetItem: {
        KILN_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
        if (obj.is_undefined()) return error_at(e.pos, obj.undefined_hint());
        if (e.args[1]->kind == ExprKind::kSlice) return eval_slice(obj, *e.args[1], e.pos);
        KILN_ASSIGN_OR_RETURN(Value key, eval(*e.args[1]));
        auto r = get_item(obj, key);
        if (!r.ok()) return located(r.status(), e.pos);
        return r;
      }
      case ExprKind::kSlice: return error_at(e.pos, "a slice is only valid inside []");
      case ExprKind::kCall: {
        KILN_ASSIGN_OR_RETURN(Value callee, eval(*e.args[0]));
        CallArgs args;
        KILN_RETURN_IF_ERROR(eval_args(e, &args));
        auto r = call(callee, args, e.pos);
        if (!r.ok()) return located(r.status(), e.pos);
        return r;
      }
      case ExprKind::kFilter: return eval_filter(e, nullptr);
      case ExprKind::kTest: {
        KILN_ASSIGN_OR_RETURN(Value subject, eval(*e.args[0]));
        TestFn t = find_test(e.name);
        if (!t) return error_at(e.pos, "No test named '" + e.name + "' found.");
        CallArgs args;
        KILN_RETURN_IF_ERROR(eval_args(e, &args));
        auto r = t(*this, subject, args, e.pos);
        if (!r.ok()) return located(r.status(), e.pos);
        return Value::boolean(*r);
      }
      case ExprKind::kNeg:
      case ExprKind::kPos: {
        KILN_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
        bool neg = e.kind == ExprKind::kNeg;
        if (v.is_undefined()) return error_at(e.pos, v.undefined_hint());
        if (v.is_intlike()) {
          if (neg && v.i == INT64_MIN) return error_at(e.pos, "integer overflow");
          return Value::integer(neg ? -v.i : v.i);
        }
        if (v.type == VType::kFloat) return Value::number(neg ? -v.f : v.f);
        return error_at(e.pos, std::string("bad operand type for unary ") + (neg ? "-" : "+") + ": '" +
                                   type_name(v) + "'");
      }
      case ExprKind::kNot: {
        KILN_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
        return Value::boolean(!truthy(v));
      }
      case ExprKind::kBinary: {
        KILN_ASSIGN_OR_RETURN(Value a, eval(*e.args[0]));
        KILN_ASSIGN_OR_RETURN(Value b, eval(*e.args[1]));
        auto r = binary_op(*this, e.op, a, b);
        if (!r.ok()) return located(r.status(), e.pos);
        return r;
      }
      case ExprKind::kConcat: {
        std::string out;
        for (const auto& a : e.args) {
          KILN_ASSIGN_OR_RETURN(Value v, eval(*a));
          out += to_str(v);
          KILN_RETURN_IF_ERROR(located(check_size(out.size()), e.pos));
        }
        return Value::string(std::move(out));
      }
      case ExprKind::kCompare: {
        KILN_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
        for (size_t k = 0; k < e.cmp.size(); ++k) {
          KILN_ASSIGN_OR_RETURN(Value right, eval(*e.args[k + 1]));
          auto r = compare(e.cmp[k], left, right);
          if (!r.ok()) return located(r.status(), e.pos);
          if (!*r) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::kAnd:
      case ExprKind::kOr: {
        KILN_ASSIGN_OR_RETURN(Value a, eval(*e.args[0]));
        if (truthy(a) == (e.kind == ExprKind::kOr)) return a;
        return eval(*e.args[1]);
      }
      case ExprKind::kCondExpr: {
        KILN_ASSIGN_OR_RETURN(Value cond, eval(*e.args[0]));
        if (truthy(cond)) return eval(*e.args[1]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.pos.line) +
                                " evaluated to false and no else section was defined.");
      }
    }
    return error_at(e.pos, "unknown expression");
  }

  Result<Value> loop_attr(const Value& obj, const std::string& name) {
    auto loop = std::static_pointer_cast<LoopObj>(obj.obj);
    const auto& items = loop->items->items;
    const int64_t n = static_cast<int64_t>(items.size());
    const int64_t i = static_cast<int64_t>(loop->index0);
    if (name == "index") return Value::integer(i + 1);
    if (name == "index0") return Value::integer(i);
    if (name == "revindex") return Value::integer(n - i);
    if (name == "revindex0") return Value::integer(n - i - 1);
    if (name == "first") return Value::boolean(i == 0);
    if (name == "last") return Value::boolean(i + 1 == n);
    if (name == "length") return Value::integer(n);
    if (name == "depth") return Value::integer(loop->depth);
    if (name == "depth0") return Value::integer(loop->depth - 1);
    if (name == "previtem") {
      return i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item");
    }
    if (name == "nextitem") {
      return i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item");
    }
    if (name == "cycle") {
      return make_function("cycle", [loop](Renderer&, CallArgs& a, Pos) -> Result<Value> {
        if (a.pos.empty()) return type_error("no items for cycling given");
        return a.pos[loop->index0 % a.pos.size()];
      });
    }
    if (name == "changed") {
      return make_function("changed", [loop](Renderer&, CallArgs& a, Pos) -> Result<Value> {
        Value now = make_seq(SeqKind::kTuple, a.pos);
        if (loop->has_last_changed && py_equal(loop->last_changed, now)) return Value::boolean(false);
        loop->has_last_changed = true;
        loop->last_changed = now;
        return Value::boolean(true);
      });
    }
    return Value::undefined("'LoopContext object' has no attribute '" + name + "'");
  }

  const ChatTemplateLimits limits_;
  std::shared_ptr<Scope> scope_;
  std::string* out_ = nullptr;
  std::vector<std::shared_ptr<Scope>> keep_alive_;
  int64_t steps_ = 0;
  int call_depth_ = 0;
  int nesting_ = 0;
};

Result<Value> checked_string(Renderer& r, std::string s, bool markup) {
  KILN_RETURN_IF_ERROR(r.check_size(s.size()));
  return Value::string(std::move(s), markup);
}

}  // namespace

Result<Value> binary_op(Renderer& r, BinOp op, const Value& a, const Value& b) {
  if (op == BinOp::kMod && a.is_string()) return percent_format(r, a, b);  // str.__mod__ runs first
  if (a.is_undefined()) return type_error(a.undefined_hint());
  if (b.is_undefined()) return type_error(b.undefined_hint());
  const std::string sym = kBinOpSymbols[static_cast<int>(op)];
  auto unsupported = [&]() -> Status {
    return type_error("unsupported operand type(s) for " + sym + ": '" + type_name(a) + "' and '" + type_name(b) +
                      "'");
  };
  const bool ints = a.is_intlike() && b.is_intlike();
  const bool nums = a.is_number() && b.is_number();
  auto overflow = []() -> Status { return type_error("integer overflow (Kiln's templates use 64-bit integers)"); };
  auto is_seq = [](const Value& v, SeqKind k) { return v.type == VType::kSeq && v.seq()->kind == k; };
  switch (op) {
    case BinOp::kAdd: {
      if (ints) {
        int64_t out;
        if (__builtin_add_overflow(a.i, b.i, &out)) return overflow();
        return Value::integer(out);
      }
      if (nums) return Value::number(a.as_double() + b.as_double());
      if (a.is_string() && b.is_string()) {
        if (a.markup != b.markup) {  // Markup escapes the plain str it is added to
          std::string x = a.markup ? a.str() : html_escape(a.str());
          std::string y = b.markup ? b.str() : html_escape(b.str());
          return checked_string(r, x + y, true);
        }
        KILN_RETURN_IF_ERROR(r.check_size(a.str().size() + b.str().size()));
        return Value::string(a.str() + b.str(), a.markup);
      }
      if (a.is_string()) return type_error("can only concatenate str (not \"" + type_name(b) + "\") to str");
      for (SeqKind k : {SeqKind::kList, SeqKind::kTuple}) {
        if (is_seq(a, k) && is_seq(b, k)) {
          KILN_RETURN_IF_ERROR(r.check_size(a.seq()->items.size() + b.seq()->items.size()));
          std::vector<Value> items = a.seq()->items;
          items.insert(items.end(), b.seq()->items.begin(), b.seq()->items.end());
          return make_seq(k, std::move(items));
        }
        if (is_seq(a, k)) {
          return type_error("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " +
                            type_name(a));
        }
      }
      return unsupported();
    }
    case BinOp::kSub:
      if (ints) {
        int64_t out;
        if (__builtin_sub_overflow(a.i, b.i, &out)) return overflow();
        return Value::integer(out);
      }
      if (nums) return Value::number(a.as_double() - b.as_double());
      return unsupported();
    case BinOp::kMul: {
      if (ints) {
        int64_t out;
        if (__builtin_mul_overflow(a.i, b.i, &out)) return overflow();
        return Value::integer(out);
      }
      if (nums) return Value::number(a.as_double() * b.as_double());
      const Value* seq = nullptr;
      const Value* count = nullptr;
      if (b.is_intlike() && (a.is_string() || a.type == VType::kSeq)) {
        seq = &a;
        count = &b;
      } else if (a.is_intlike() && (b.is_string() || b.type == VType::kSeq)) {
        seq = &b;
        count = &a;
      }
      if (!seq) {
        if (a.is_string() || a.type == VType::kSeq || b.is_string() || b.type == VType::kSeq) {
          return type_error("can't multiply sequence by non-int of type '" +
                            type_name(a.is_string() || a.type == VType::kSeq ? b : a) + "'");
        }
        return unsupported();
      }
      int64_t n = std::max<int64_t>(count->i, 0);
      if (seq->is_string()) {
        const std::string& s = seq->str();
        if (!s.empty() && static_cast<uint64_t>(n) > r.limits().max_output_bytes / s.size()) {
          return r.check_size(r.limits().max_output_bytes + 1);
        }
        std::string out;
        out.reserve(s.size() * static_cast<size_t>(n));
        for (int64_t k = 0; k < n; ++k) out += s;
        return Value::string(std::move(out), seq->markup);
      }
      SeqKind kind = seq->seq()->kind;
      if (kind != SeqKind::kList && kind != SeqKind::kTuple) return unsupported();
      const auto& items = seq->seq()->items;
      if (!items.empty() && static_cast<uint64_t>(n) > r.limits().max_output_bytes / items.size()) {
        return r.check_size(r.limits().max_output_bytes + 1);
      }
      std::vector<Value> out;
      for (int64_t k = 0; k < n; ++k) out.insert(out.end(), items.begin(), items.end());
      return make_seq(kind, std::move(out));
    }
    case BinOp::kDiv:
      if (!nums) return unsupported();
      if (b.as_double() == 0) return type_error("division by zero");
      return Value::number(a.as_double() / b.as_double());
    case BinOp::kFloorDiv:
      if (ints) {
        if (b.i == 0) return type_error("integer division or modulo by zero");
        if (a.i == INT64_MIN && b.i == -1) return overflow();
        int64_t q = a.i / b.i;
        if ((a.i % b.i != 0) && ((a.i < 0) != (b.i < 0))) --q;
        return Value::integer(q);
      }
      if (nums) {
        double x = a.as_double(), y = b.as_double();
        if (y == 0) return type_error("float floor division by zero");
        // CPython's float floor division: derived from fmod, not from x / y.
        double mod = std::fmod(x, y);
        double div = (x - mod) / y;
        if (mod != 0 && ((y < 0) != (mod < 0))) div -= 1.0;
        double floordiv;
        if (div != 0) {
          floordiv = std::floor(div);
          if (div - floordiv > 0.5) floordiv += 1.0;
        } else {
          floordiv = std::copysign(0.0, x / y);
        }
        return Value::number(floordiv);
      }
      return unsupported();
    case BinOp::kMod:
      if (a.is_string()) return percent_format(r, a, b);
      if (ints) {
        if (b.i == 0) return type_error("integer modulo by zero");
        if (b.i == -1) return Value::integer(0);
        int64_t m = a.i % b.i;
        if (m != 0 && ((m < 0) != (b.i < 0))) m += b.i;
        return Value::integer(m);
      }
      if (nums) {
        double x = a.as_double(), y = b.as_double();
        if (y == 0) return type_error("float modulo");
        double m = std::fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        if (m == 0) m = std::copysign(0.0, y);
        return Value::number(m);
      }
      return unsupported();
    case BinOp::kPow:
      if (ints && b.i >= 0) {
        int64_t base = a.i, exp = b.i, out = 1;
        while (exp > 0) {
          if (exp & 1) {
            if (__builtin_mul_overflow(out, base, &out)) return overflow();
          }
          exp >>= 1;
          if (exp > 0 && __builtin_mul_overflow(base, base, &base)) return overflow();
        }
        return Value::integer(out);
      }
      if (nums) {
        double x = a.as_double(), y = b.as_double();
        if (x == 0 && y < 0) return type_error("0.0 cannot be raised to a negative power");
        if (x < 0 && y != std::floor(y)) return type_error("complex results are not supported");
        double p = std::pow(x, y);
        if (std::isinf(p) && std::isfinite(x) && std::isfinite(y)) {
          return type_error("(34, 'Numerical result out of range')");
        }
        return Value::number(p);
      }
      return unsupported();
  }
  return unsupported();
}

namespace {

template <typename J>
Result<std::string> render_impl(const Program* program, const J& context, const ChatTemplateLimits& limits) {
  if (!program) return failed_precondition("chat template was not parsed");
  if (!context.is_object()) return invalid_argument("chat template context must be a JSON object");
  KILN_ASSIGN_OR_RETURN(Value ctx, from_json(context));
  Interpreter interpreter(limits);
  return interpreter.run(*program, ctx);
}

// A special token as transformers' special_tokens_map has it: the string, or an
// AddedToken's "content".
template <typename J>
std::string token_string(const J& v) {
  if (v.is_string()) return v.template get<std::string>();
  if (v.is_object()) {
    auto it = v.find("content");
    if (it != v.end() && it->is_string()) return it->template get<std::string>();
  }
  return "";
}

template <typename J>
Result<std::string> apply_impl(const J& config, const J& messages, bool add_generation_prompt, const J& extra) {
  if (!config.is_object()) return invalid_argument("tokenizer_config must be a JSON object");
  if (!extra.is_null() && !extra.is_object()) return invalid_argument("extra_context must be a JSON object or null");
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return not_found("tokenizer_config has no chat_template");
  const bool has_tools = extra.is_object() && extra.contains("tools") && !extra.at("tools").is_null();
  std::string source;
  if (it->is_string()) {
    source = it->template get<std::string>();
  } else if (it->is_array()) {
    const J* chosen = nullptr;
    const J* fallback = nullptr;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template")) continue;
      const std::string name = token_string(entry.at("name"));
      if (name == "tool_use" && has_tools) chosen = &entry.at("template");
      if (name == "default") fallback = &entry.at("template");
    }
    if (!chosen) chosen = fallback;
    if (!chosen || !chosen->is_string()) {
      return invalid_argument("tokenizer_config has named chat templates but none named 'default'");
    }
    source = chosen->template get<std::string>();
  } else {
    return invalid_argument("tokenizer_config chat_template must be a string or a list of named templates");
  }
  J context = J::object();
  for (const char* attr : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    auto t = config.find(attr);
    if (t == config.end()) continue;
    std::string s = token_string(*t);
    if (!s.empty()) context[attr] = s;
  }
  auto extra_tokens = config.find("additional_special_tokens");
  if (extra_tokens != config.end() && extra_tokens->is_array() && !extra_tokens->empty()) {
    J list = J::array();
    for (const auto& t : *extra_tokens) list.push_back(token_string(t));
    context["additional_special_tokens"] = list;
  }
  if (extra.is_object()) {
    for (auto e = extra.begin(); e != extra.end(); ++e) context[e.key()] = e.value();
  }
  context["messages"] = messages;
  context["tools"] = has_tools ? extra.at("tools") : J();
  context["documents"] = extra.is_object() && extra.contains("documents") ? extra.at("documents") : J();
  context["add_generation_prompt"] = add_generation_prompt;
  KILN_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::parse(source));
  return tmpl.render(context);
}

}  // namespace
}  // namespace kiln::chat_template_detail

namespace kiln {

Result<std::string> ChatTemplate::render(const nlohmann::json& context, const ChatTemplateLimits& limits) const {
  return chat_template_detail::render_impl(program_.get(), context, limits);
}

Result<std::string> ChatTemplate::render_ordered(const nlohmann::ordered_json& context,
                                                 const ChatTemplateLimits& limits) const {
  return chat_template_detail::render_impl(program_.get(), context, limits);
}

Result<std::string> apply_chat_template(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                        bool add_generation_prompt, const nlohmann::json& extra_context) {
  return chat_template_detail::apply_impl(tokenizer_config, messages, add_generation_prompt, extra_context);
}

Result<std::string> apply_chat_template_ordered(const nlohmann::ordered_json& tokenizer_config,
                                                const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                                const nlohmann::ordered_json& extra_context) {
  return chat_template_detail::apply_impl(tokenizer_config, messages, add_generation_prompt, extra_context);
}

}  // namespace kiln
