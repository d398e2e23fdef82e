// Chat templates: the parser. Recursive descent over the lexer's tokens following
// jinja2's grammar (operator precedence, tuples, filters/tests, subscripts and
// slices, call arguments) and its statements: for (with else and an inline `if`),
// if/elif/else, set (plain, tuple, namespace attribute, block), macro, call, filter,
// with, print, break/continue (transformers enables loopcontrols) and
// transformers' {% generation %} block.
#include <array>

#include "tokenizer/chat_template.h"

namespace kiln::chat_template_detail {
namespace {

constexpr int kMaxParseDepth = 200;

std::string describe(const Token& t) {
  switch (t.type) {
    case TokType::kEof: return "end of template";
    case TokType::kBlockEnd: return "end of statement block";
    case TokType::kVarEnd: return "end of print statement";
    case TokType::kBlockBegin: return "begin of statement block";
    case TokType::kVarBegin: return "begin of print statement";
    case TokType::kData: return "template data";
    case TokType::kString: return "string";
    case TokType::kInt: return "integer";
    case TokType::kFloat: return "float";
    default: return t.text;
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : toks_(std::move(toks)) {}

  Result<std::shared_ptr<Program>> run() {
    auto program = std::make_shared<Program>();
    std::string found;
    KILN_ASSIGN_OR_RETURN(program->body, subparse({}, &found));
    KILN_RETURN_IF_ERROR(check_names(program->body));
    return program;
  }

 private:
  // ---- token stream
  const Token& cur() const { return toks_[i_]; }
  const Token& look() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_name(const char* s) const { return cur().type == TokType::kName && cur().text == s; }
  bool is_op(const char* s) const { return cur().type == TokType::kOp && cur().text == s; }
  Status fail(const std::string& msg) const { return error_at(cur().pos, msg); }
  Status fail_at(Pos pos, const std::string& msg) const { return error_at(pos, msg); }

  Status expect_op(const char* op) {
    if (!is_op(op)) return fail("expected token '" + std::string(op) + "', got '" + describe(cur()) + "'");
    advance();
    return Status::ok_status();
  }
  Status expect(TokType type, const char* what) {
    if (cur().type != type) return fail("expected token '" + std::string(what) + "', got '" + describe(cur()) + "'");
    advance();
    return Status::ok_status();
  }
  Result<std::string> expect_name() {
    if (cur().type != TokType::kName) return fail("expected token 'name', got '" + describe(cur()) + "'");
    std::string s = cur().text;
    advance();
    return s;
  }

  struct DepthGuard {
    explicit DepthGuard(int* d) : d_(d) { ++*d_; }
    ~DepthGuard() { --*d_; }
    int* d_;
  };
  Status check_depth() const {
    if (depth_ > kMaxParseDepth) return fail("template nests too deeply");
    return Status::ok_status();
  }

  // Saves and restores the frame flags that jinja2 resets in an inner frame.
  struct FrameGuard {
    FrameGuard(Parser* p, bool soft, bool reset_loops) : p_(p), soft_(p->soft_), loops_(p->loop_depth_) {
      p->soft_ = soft;
      if (reset_loops) p->loop_depth_ = 0;
    }
    ~FrameGuard() {
      p_->soft_ = soft_;
      p_->loop_depth_ = loops_;
    }
    Parser* p_;
    bool soft_;
    int loops_;
  };

  ExprPtr node(ExprKind kind, Pos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    e->soft = soft_;
    return e;
  }
  StmtPtr stmt(StmtKind kind, Pos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->pos = pos;
    return s;
  }

  static void mark_soft(Expr* e) {
    if (!e) return;
    e->soft = true;
    for (auto& a : e->args) mark_soft(a.get());
    for (auto& kv : e->kwargs) mark_soft(kv.second.get());
    mark_soft(e->dyn_args.get());
    mark_soft(e->dyn_kwargs.get());
  }

  // ---- statements

  Result<std::vector<StmtPtr>> subparse(const std::vector<std::string>& end_tokens, std::string* found) {
    std::vector<StmtPtr> body;
    while (true) {
      const Token& t = cur();
      switch (t.type) {
        case TokType::kData: {
          auto s = stmt(StmtKind::kData, t.pos);
          s->text = t.text;
          body.push_back(std::move(s));
          advance();
          break;
        }
        case TokType::kVarBegin: {
          auto s = stmt(StmtKind::kOutput, t.pos);
          advance();
          KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, false));
          s->exprs.push_back(std::move(e));
          KILN_RETURN_IF_ERROR(expect(TokType::kVarEnd, "end of print statement"));
          body.push_back(std::move(s));
          break;
        }
        case TokType::kBlockBegin: {
          advance();
          if (cur().type == TokType::kName) {
            for (const auto& e : end_tokens) {
              if (cur().text == e) {
                *found = e;
                return body;
              }
            }
          }
          KILN_ASSIGN_OR_RETURN(StmtPtr s, parse_statement(end_tokens));
          body.push_back(std::move(s));
          KILN_RETURN_IF_ERROR(expect(TokType::kBlockEnd, "end of statement block"));
          break;
        }
        case TokType::kEof:
          if (!end_tokens.empty()) {
            std::string names;
            for (size_t k = 0; k < end_tokens.size(); ++k) {
              names += (k ? " or '" : "'") + end_tokens[k] + "'";
            }
            return fail("Unexpected end of template. Jinja was looking for the following tags: " + names + ".");
          }
          return body;
        default: return fail("unexpected '" + describe(t) + "'");
      }
    }
  }

  // Parses statements up to one of end_tokens; the current token is then that name
  // (or the block end after it when drop_needle).
  Result<std::vector<StmtPtr>> parse_statements(const std::vector<std::string>& end_tokens, bool drop_needle,
                                               std::string* found) {
    if (is_op(":")) advance();
    KILN_RETURN_IF_ERROR(expect(TokType::kBlockEnd, "end of statement block"));
    KILN_ASSIGN_OR_RETURN(std::vector<StmtPtr> body, subparse(end_tokens, found));
    if (drop_needle) advance();
    return body;
  }

  Result<StmtPtr> parse_statement(const std::vector<std::string>& outer_end) {
    DepthGuard g(&depth_);
    KILN_RETURN_IF_ERROR(check_depth());
    const Token& t = cur();
    if (t.type != TokType::kName) return fail("tag name expected");
    const std::string& name = t.text;
    if (name == "for") return parse_for();
    if (name == "if") return parse_if();
    if (name == "set") return parse_set();
    if (name == "macro") return parse_macro();
    if (name == "call") return parse_call_block();
    if (name == "filter") return parse_filter_block();
    if (name == "with") return parse_with();
    if (name == "print") return parse_print();
    if (name == "generation") {  // transformers' AssistantTracker: renders its body
      auto s = stmt(StmtKind::kScope, t.pos);
      advance();
      FrameGuard fg(this, false, true);
      std::string found;
      KILN_ASSIGN_OR_RETURN(s->body, parse_statements({"endgeneration"}, true, &found));
      return s;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) return fail("'" + name + "' outside loop");
      auto s = stmt(name == "break" ? StmtKind::kBreak : StmtKind::kContinue, t.pos);
      advance();
      return s;
    }
    if (name == "block" || name == "extends" || name == "include" || name == "import" || name == "from" ||
        name == "autoescape" || name == "raw") {
      return error_at(t.pos, "the '" + name + "' tag is not supported in chat templates", StatusCode::kUnimplemented);
    }
    std::string msg = "Encountered unknown tag '" + name + "'.";
    if (!outer_end.empty()) {
      msg += " Jinja was looking for the following tags: ";
      for (size_t k = 0; k < outer_end.size(); ++k) msg += (k ? " or '" : "'") + outer_end[k] + "'";
      msg += ".";
    }
    return fail(msg);
  }

  Result<StmtPtr> parse_for() {
    auto s = stmt(StmtKind::kFor, cur().pos);
    advance();
    KILN_ASSIGN_OR_RETURN(Target target, parse_target_tuple({"in"}, false));
    s->targets.push_back(std::move(target));
    if (!is_name("in")) return fail("expected token 'in', got '" + describe(cur()) + "'");
    advance();
    KILN_ASSIGN_OR_RETURN(ExprPtr iter, parse_tuple(false, false, {"recursive"}, false));
    s->exprs.push_back(std::move(iter));
    ExprPtr filter;
    if (is_name("if")) {
      advance();
      FrameGuard fg(this, false, false);  // the loop filter runs in an inner frame
      KILN_ASSIGN_OR_RETURN(filter, parse_expression(true));
    }
    s->exprs.push_back(std::move(filter));
    if (is_name("recursive")) {
      return error_at(cur().pos, "recursive for loops are not supported in chat templates",
                      StatusCode::kUnimplemented);
    }
    std::string found;
    {
      FrameGuard fg(this, false, false);
      ++loop_depth_;
      KILN_ASSIGN_OR_RETURN(s->body, parse_statements({"endfor", "else"}, false, &found));
    }
    advance();
    if (found == "else") {
      FrameGuard fg(this, false, false);
      KILN_ASSIGN_OR_RETURN(s->else_body, parse_statements({"endfor"}, true, &found));
    }
    return s;
  }

  Result<StmtPtr> parse_if() {
    FrameGuard fg(this, true, false);
    auto result = stmt(StmtKind::kIf, cur().pos);
    advance();
    Stmt* node = result.get();
    while (true) {
      KILN_ASSIGN_OR_RETURN(ExprPtr test, parse_tuple(false, false, {}, false));
      node->exprs.push_back(std::move(test));
      std::string found;
      KILN_ASSIGN_OR_RETURN(node->body, parse_statements({"elif", "else", "endif"}, false, &found));
      Pos pos = cur().pos;
      advance();
      if (found == "elif") {
        auto elif = stmt(StmtKind::kIf, pos);
        Stmt* next = elif.get();
        node->else_body.push_back(std::move(elif));
        node = next;
        continue;
      }
      if (found == "else") {
        KILN_ASSIGN_OR_RETURN(node->else_body, parse_statements({"endif"}, true, &found));
      }
      break;
    }
    return result;
  }

  Result<StmtPtr> parse_set() {
    Pos pos = cur().pos;
    advance();
    KILN_ASSIGN_OR_RETURN(Target target, parse_target_tuple({}, true));
    if (is_op("=")) {
      advance();
      auto s = stmt(StmtKind::kSet, pos);
      s->targets.push_back(std::move(target));
      KILN_ASSIGN_OR_RETURN(ExprPtr value, parse_tuple(false, true, {}, false));
      s->exprs.push_back(std::move(value));
      return s;
    }
    auto s = stmt(StmtKind::kSetBlock, pos);
    s->targets.push_back(std::move(target));
    KILN_ASSIGN_OR_RETURN(ExprPtr filter, parse_filter(nullptr, false));
    s->exprs.push_back(std::move(filter));
    FrameGuard fg(this, false, false);
    std::string found;
    KILN_ASSIGN_OR_RETURN(s->body, parse_statements({"endset"}, true, &found));
    return s;
  }

  Status parse_signature(Stmt* s) {
    KILN_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      if (!s->params.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      KILN_ASSIGN_OR_RETURN(std::string name, expect_name());
      if (is_op("=")) {
        advance();
        KILN_ASSIGN_OR_RETURN(ExprPtr def, parse_expression(true));
        s->defaults.push_back(std::move(def));
      } else if (!s->defaults.empty()) {
        return fail("non-default argument follows default argument");
      }
      s->params.push_back(std::move(name));
    }
    return expect_op(")");
  }

  // A macro or caller body: an inner, non-soft frame outside any loop, and jinja2's
  // check for the undeclared names caller / varargs / kwargs.
  Status parse_function_body(Stmt* s, const char* end) {
    FrameGuard fg(this, false, true);
    usage_.push_back({false, false, false});
    std::string found;
    auto body = parse_statements({end}, true, &found);
    std::array<bool, 3> used = usage_.back();
    usage_.pop_back();
    if (!body.ok()) return body.status();
    s->body = std::move(body).value();
    auto declared = [&](const char* n) {
      for (const auto& p : s->params) {
        if (p == n) return true;
      }
      return false;
    };
    s->uses_caller = used[0] && !declared("caller");
    s->uses_varargs = used[1] && !declared("varargs");
    s->uses_kwargs = used[2] && !declared("kwargs");
    return Status::ok_status();
  }

  Result<StmtPtr> parse_macro() {
    auto s = stmt(StmtKind::kMacro, cur().pos);
    advance();
    KILN_ASSIGN_OR_RETURN(s->name, expect_name());
    KILN_RETURN_IF_ERROR(parse_signature(s.get()));
    KILN_RETURN_IF_ERROR(parse_function_body(s.get(), "endmacro"));
    return s;
  }

  Result<StmtPtr> parse_call_block() {
    auto s = stmt(StmtKind::kCallBlock, cur().pos);
    advance();
    if (is_op("(")) KILN_RETURN_IF_ERROR(parse_signature(s.get()));
    Pos pos = cur().pos;
    KILN_ASSIGN_OR_RETURN(ExprPtr call, parse_expression(true));
    if (call->kind != ExprKind::kCall) return fail_at(pos, "expected call");
    s->exprs.push_back(std::move(call));
    s->name = "caller";
    KILN_RETURN_IF_ERROR(parse_function_body(s.get(), "endcall"));
    return s;
  }

  Result<StmtPtr> parse_filter_block() {
    auto s = stmt(StmtKind::kFilterBlock, cur().pos);
    advance();
    KILN_ASSIGN_OR_RETURN(ExprPtr filter, parse_filter(nullptr, true));
    s->exprs.push_back(std::move(filter));
    FrameGuard fg(this, false, false);
    std::string found;
    KILN_ASSIGN_OR_RETURN(s->body, parse_statements({"endfilter"}, true, &found));
    return s;
  }

  Result<StmtPtr> parse_with() {
    auto s = stmt(StmtKind::kWith, cur().pos);
    advance();
    while (cur().type != TokType::kBlockEnd) {
      if (!s->targets.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      KILN_ASSIGN_OR_RETURN(Target target, parse_target_tuple({}, false));
      s->targets.push_back(std::move(target));
      KILN_RETURN_IF_ERROR(expect_op("="));
      KILN_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      s->exprs.push_back(std::move(value));
    }
    FrameGuard fg(this, false, false);
    std::string found;
    KILN_ASSIGN_OR_RETURN(s->body, parse_statements({"endwith"}, true, &found));
    return s;
  }

  Result<StmtPtr> parse_print() {
    auto s = stmt(StmtKind::kOutput, cur().pos);
    advance();
    while (cur().type != TokType::kBlockEnd) {
      if (!s->exprs.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(true));
      s->exprs.push_back(std::move(e));
    }
    return s;
  }

  // ---- assignment targets

  bool is_tuple_end(const std::vector<std::string>& extra) const {
    if (cur().type == TokType::kVarEnd || cur().type == TokType::kBlockEnd || is_op(")")) return true;
    if (cur().type == TokType::kName) {
      for (const auto& e : extra) {
        if (cur().text == e) return true;
      }
    }
    return false;
  }

  Result<Target> parse_target_primary(bool with_namespace) {
    Target t;
    t.pos = cur().pos;
    if (cur().type == TokType::kName) {
      const std::string& n = cur().text;
      if (n == "true" || n == "false" || n == "True" || n == "False" || n == "none" || n == "None") {
        return fail("can't assign to 'const'");
      }
      t.name = n;
      advance();
      if (with_namespace && is_op(".")) {
        advance();
        KILN_ASSIGN_OR_RETURN(t.attr, expect_name());
        t.kind = Target::kNsAttr;
      }
      return t;
    }
    if (is_op("(")) {
      advance();
      KILN_ASSIGN_OR_RETURN(t, parse_target_tuple({}, with_namespace));
      KILN_RETURN_IF_ERROR(expect_op(")"));
      return t;
    }
    return fail("can't assign to '" + describe(cur()) + "'");
  }

  Result<Target> parse_target_tuple(const std::vector<std::string>& extra_end, bool with_namespace) {
    DepthGuard g(&depth_);
    KILN_RETURN_IF_ERROR(check_depth());
    Target tuple;
    tuple.kind = Target::kTuple;
    tuple.pos = cur().pos;
    bool is_tuple = false;
    while (true) {
      if (!tuple.items.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      if (is_tuple_end(extra_end)) break;
      KILN_ASSIGN_OR_RETURN(Target item, parse_target_primary(with_namespace));
      tuple.items.push_back(std::move(item));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (tuple.items.empty()) return fail("Expected an expression, got '" + describe(cur()) + "'");
      return std::move(tuple.items[0]);
    }
    return tuple;
  }

  // ---- expressions

  Result<ExprPtr> parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra_end,
                              bool explicit_parentheses) {
    Pos pos = cur().pos;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      if (is_tuple_end(extra_end)) break;
      if (simplified) {
        KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_primary());
        items.push_back(std::move(e));
      } else {
        KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(with_condexpr));
        items.push_back(std::move(e));
      }
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) return fail("Expected an expression, got '" + describe(cur()) + "'");
    }
    auto t = node(ExprKind::kTuple, pos);
    t->args = std::move(items);
    return t;
  }

  Result<ExprPtr> parse_expression(bool with_condexpr) {
    DepthGuard g(&depth_);
    KILN_RETURN_IF_ERROR(check_depth());
    if (!with_condexpr) return parse_or();
    Pos pos = cur().pos;
    KILN_ASSIGN_OR_RETURN(ExprPtr expr1, parse_or());
    while (is_name("if")) {
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr expr2, parse_or());
      ExprPtr expr3;
      if (is_name("else")) {
        advance();
        KILN_ASSIGN_OR_RETURN(expr3, parse_expression(true));
      }
      auto c = node(ExprKind::kCondExpr, pos);
      c->args.push_back(std::move(expr2));
      c->args.push_back(std::move(expr1));
      c->args.push_back(std::move(expr3));
      mark_soft(c.get());
      expr1 = std::move(c);
      pos = cur().pos;
    }
    return expr1;
  }

  ExprPtr binary(ExprKind kind, Pos pos, ExprPtr a, ExprPtr b) {
    auto e = node(kind, pos);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  Result<ExprPtr> parse_or() {
    KILN_ASSIGN_OR_RETURN(ExprPtr left, parse_and());
    while (is_name("or")) {
      Pos pos = cur().pos;
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr right, parse_and());
      left = binary(ExprKind::kOr, pos, std::move(left), std::move(right));
    }
    return left;
  }

  Result<ExprPtr> parse_and() {
    KILN_ASSIGN_OR_RETURN(ExprPtr left, parse_not());
    while (is_name("and")) {
      Pos pos = cur().pos;
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr right, parse_not());
      left = binary(ExprKind::kAnd, pos, std::move(left), std::move(right));
    }
    return left;
  }

  Result<ExprPtr> parse_not() {
    if (is_name("not")) {
      DepthGuard g(&depth_);
      KILN_RETURN_IF_ERROR(check_depth());
      auto e = node(ExprKind::kNot, cur().pos);
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr x, parse_not());
      e->args.push_back(std::move(x));
      return e;
    }
    return parse_compare();
  }

  Result<ExprPtr> parse_compare() {
    KILN_ASSIGN_OR_RETURN(ExprPtr expr, parse_math1());
    ExprPtr cmp;
    while (true) {
      Pos pos = cur().pos;
      CmpOp op;
      if (is_op("==")) {
        op = CmpOp::kEq;
      } else if (is_op("!=")) {
        op = CmpOp::kNe;
      } else if (is_op("<")) {
        op = CmpOp::kLt;
      } else if (is_op("<=")) {
        op = CmpOp::kLe;
      } else if (is_op(">")) {
        op = CmpOp::kGt;
      } else if (is_op(">=")) {
        op = CmpOp::kGe;
      } else if (is_name("in")) {
        op = CmpOp::kIn;
      } else if (is_name("not") && look().type == TokType::kName && look().text == "in") {
        op = CmpOp::kNotIn;
        advance();
      } else {
        break;
      }
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr operand, parse_math1());
      if (!cmp) {
        cmp = node(ExprKind::kCompare, pos);
        cmp->args.push_back(std::move(expr));
      }
      cmp->cmp.push_back(op);
      cmp->args.push_back(std::move(operand));
    }
    if (cmp) return cmp;
    return expr;
  }

  Result<ExprPtr> parse_math1() {
    KILN_ASSIGN_OR_RETURN(ExprPtr left, parse_concat());
    while (is_op("+") || is_op("-")) {
      Pos pos = cur().pos;
      BinOp op = is_op("+") ? BinOp::kAdd : BinOp::kSub;
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
      left = binary(ExprKind::kBinary, pos, std::move(left), std::move(right));
      left->op = op;
    }
    return left;
  }

  Result<ExprPtr> parse_concat() {
    Pos pos = cur().pos;
    KILN_ASSIGN_OR_RETURN(ExprPtr first, parse_math2());
    if (!is_op("~")) return first;
    auto c = node(ExprKind::kConcat, pos);
    c->args.push_back(std::move(first));
    while (is_op("~")) {
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr next, parse_math2());
      c->args.push_back(std::move(next));
    }
    return c;
  }

  Result<ExprPtr> parse_math2() {
    KILN_ASSIGN_OR_RETURN(ExprPtr left, parse_pow());
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      Pos pos = cur().pos;
      BinOp op = is_op("*") ? BinOp::kMul : is_op("/") ? BinOp::kDiv : is_op("//") ? BinOp::kFloorDiv : BinOp::kMod;
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
      left = binary(ExprKind::kBinary, pos, std::move(left), std::move(right));
      left->op = op;
    }
    return left;
  }

  Result<ExprPtr> parse_pow() {
    KILN_ASSIGN_OR_RETURN(ExprPtr left, parse_unary(true));
    while (is_op("**")) {
      Pos pos = cur().pos;
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr right, parse_unary(true));
      left = binary(ExprKind::kBinary, pos, std::move(left), std::move(right));
      left->op = BinOp::kPow;
    }
    return left;
  }

  Result<ExprPtr> parse_unary(bool with_filter) {
    DepthGuard g(&depth_);
    KILN_RETURN_IF_ERROR(check_depth());
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = node(is_op("-") ? ExprKind::kNeg : ExprKind::kPos, cur().pos);
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr x, parse_unary(false));
      e->args.push_back(std::move(x));
    } else {
      KILN_ASSIGN_OR_RETURN(e, parse_primary());
    }
    KILN_ASSIGN_OR_RETURN(e, parse_postfix(std::move(e)));
    if (with_filter) {
      KILN_ASSIGN_OR_RETURN(e, parse_filter_expr(std::move(e)));
    }
    return e;
  }

  Result<ExprPtr> parse_primary() {
    DepthGuard g(&depth_);
    KILN_RETURN_IF_ERROR(check_depth());
    const Token& t = cur();
    switch (t.type) {
      case TokType::kName: {
        auto e = node(ExprKind::kConst, t.pos);
        if (t.text == "true" || t.text == "True") {
          e->value = Value::boolean(true);
        } else if (t.text == "false" || t.text == "False") {
          e->value = Value::boolean(false);
        } else if (t.text == "none" || t.text == "None") {
          e->value = Value::none();
        } else {
          e->kind = ExprKind::kName;
          e->name = t.text;
          for (auto& u : usage_) {
            if (t.text == "caller") u[0] = true;
            if (t.text == "varargs") u[1] = true;
            if (t.text == "kwargs") u[2] = true;
          }
        }
        advance();
        return e;
      }
      case TokType::kString: {
        auto e = node(ExprKind::kConst, t.pos);
        std::string s;
        while (cur().type == TokType::kString) {  // adjacent literals concatenate
          s += cur().text;
          advance();
        }
        e->value = Value::string(std::move(s));
        return e;
      }
      case TokType::kInt: {
        auto e = node(ExprKind::kConst, t.pos);
        e->value = Value::integer(t.ival);
        advance();
        return e;
      }
      case TokType::kFloat: {
        auto e = node(ExprKind::kConst, t.pos);
        e->value = Value::number(t.fval);
        advance();
        return e;
      }
      default: break;
    }
    if (is_op("(")) {
      advance();
      KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, true));
      KILN_RETURN_IF_ERROR(expect_op(")"));
      return e;
    }
    if (is_op("[")) {
      auto e = node(ExprKind::kList, cur().pos);
      advance();
      while (!is_op("]")) {
        if (!e->args.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
        if (is_op("]")) break;
        KILN_ASSIGN_OR_RETURN(ExprPtr item, parse_expression(true));
        e->args.push_back(std::move(item));
      }
      KILN_RETURN_IF_ERROR(expect_op("]"));
      return e;
    }
    if (is_op("{")) {
      auto e = node(ExprKind::kDict, cur().pos);
      advance();
      while (!is_op("}")) {
        if (!e->args.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
        if (is_op("}")) break;
        KILN_ASSIGN_OR_RETURN(ExprPtr key, parse_expression(true));
        KILN_RETURN_IF_ERROR(expect_op(":"));
        KILN_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e->args.push_back(std::move(key));
        e->args.push_back(std::move(value));
      }
      KILN_RETURN_IF_ERROR(expect_op("}"));
      return e;
    }
    return fail("unexpected '" + describe(t) + "'");
  }

  Result<ExprPtr> parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        KILN_ASSIGN_OR_RETURN(e, parse_subscript(std::move(e)));
      } else if (is_op("(")) {
        KILN_ASSIGN_OR_RETURN(e, parse_call(std::move(e)));
      } else {
        return e;
      }
    }
  }

  Result<ExprPtr> parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        KILN_ASSIGN_OR_RETURN(e, parse_filter(std::move(e), false));
      } else if (is_name("is")) {
        KILN_ASSIGN_OR_RETURN(e, parse_test(std::move(e)));
      } else if (is_op("(")) {
        KILN_ASSIGN_OR_RETURN(e, parse_call(std::move(e)));
      } else {
        return e;
      }
    }
  }

  Result<ExprPtr> parse_subscript(ExprPtr obj) {
    Pos pos = cur().pos;
    if (is_op(".")) {
      advance();
      const Token& a = cur();
      if (a.type == TokType::kName) {
        auto e = node(ExprKind::kGetAttr, pos);
        e->name = a.text;
        e->args.push_back(std::move(obj));
        advance();
        return e;
      }
      if (a.type != TokType::kInt) return fail("expected name or number");
      auto idx = node(ExprKind::kConst, a.pos);
      idx->value = Value::integer(a.ival);
      advance();
      auto e = node(ExprKind::kGetItem, pos);
      e->args.push_back(std::move(obj));
      e->args.push_back(std::move(idx));
      return e;
    }
    advance();  // '['
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) KILN_RETURN_IF_ERROR(expect_op(","));
      KILN_ASSIGN_OR_RETURN(ExprPtr a, parse_subscribed());
      args.push_back(std::move(a));
    }
    KILN_RETURN_IF_ERROR(expect_op("]"));
    auto e = node(ExprKind::kGetItem, pos);
    e->args.push_back(std::move(obj));
    if (args.size() == 1) {
      e->args.push_back(std::move(args[0]));
    } else {
      auto t = node(ExprKind::kTuple, pos);
      t->args = std::move(args);
      e->args.push_back(std::move(t));
    }
    return e;
  }

  Result<ExprPtr> parse_subscribed() {
    Pos pos = cur().pos;
    std::vector<ExprPtr> parts;
    if (is_op(":")) {
      advance();
      parts.push_back(nullptr);
    } else {
      KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(true));
      if (!is_op(":")) return e;
      advance();
      parts.push_back(std::move(e));
    }
    if (is_op(":") || is_op("]") || is_op(",")) {
      parts.push_back(nullptr);
    } else {
      KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(true));
      parts.push_back(std::move(e));
    }
    if (is_op(":")) {
      advance();
      if (is_op("]") || is_op(",")) {
        parts.push_back(nullptr);
      } else {
        KILN_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(true));
        parts.push_back(std::move(e));
      }
    } else {
      parts.push_back(nullptr);
    }
    auto s = node(ExprKind::kSlice, pos);
    s->args = std::move(parts);
    return s;
  }

  Status parse_call_args(Expr* e) {
    Pos pos = cur().pos;
    KILN_RETURN_IF_ERROR(expect_op("("));
    bool require_comma = false;
    auto ensure = [&](bool ok) {
      return ok ? Status::ok_status() : fail_at(pos, "invalid syntax for function call expression");
    };
    while (!is_op(")")) {
      if (require_comma) {
        KILN_RETURN_IF_ERROR(expect_op(","));
        if (is_op(")")) break;
      }
      if (is_op("*")) {
        KILN_RETURN_IF_ERROR(ensure(!e->dyn_args && !e->dyn_kwargs));
        advance();
        KILN_ASSIGN_OR_RETURN(e->dyn_args, parse_expression(true));
      } else if (is_op("**")) {
        KILN_RETURN_IF_ERROR(ensure(!e->dyn_kwargs));
        advance();
        KILN_ASSIGN_OR_RETURN(e->dyn_kwargs, parse_expression(true));
      } else if (cur().type == TokType::kName && look().type == TokType::kOp && look().text == "=") {
        KILN_RETURN_IF_ERROR(ensure(!e->dyn_kwargs));
        std::string key = cur().text;
        advance();
        advance();
        KILN_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        KILN_RETURN_IF_ERROR(ensure(!e->dyn_args && !e->dyn_kwargs && e->kwargs.empty()));
        KILN_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e->args.push_back(std::move(value));
      }
      require_comma = true;
    }
    return expect_op(")");
  }

  Result<ExprPtr> parse_call(ExprPtr callee) {
    auto e = node(ExprKind::kCall, cur().pos);
    e->args.push_back(std::move(callee));
    KILN_RETURN_IF_ERROR(parse_call_args(e.get()));
    return e;
  }

  Result<ExprPtr> parse_filter(ExprPtr subject, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) advance();
      start_inline = false;
      Pos pos = cur().pos;
      KILN_ASSIGN_OR_RETURN(std::string name, expect_name());
      while (is_op(".")) {
        advance();
        KILN_ASSIGN_OR_RETURN(std::string part, expect_name());
        name += "." + part;
      }
      auto e = node(ExprKind::kFilter, pos);
      e->name = std::move(name);
      e->args.push_back(std::move(subject));
      if (is_op("(")) KILN_RETURN_IF_ERROR(parse_call_args(e.get()));
      subject = std::move(e);
    }
    return subject;
  }

  Result<ExprPtr> parse_test(ExprPtr subject) {
    Pos pos = cur().pos;
    advance();  // 'is'
    bool negated = false;
    if (is_name("not")) {
      advance();
      negated = true;
    }
    KILN_ASSIGN_OR_RETURN(std::string name, expect_name());
    while (is_op(".")) {
      advance();
      KILN_ASSIGN_OR_RETURN(std::string part, expect_name());
      name += "." + part;
    }
    auto e = node(ExprKind::kTest, pos);
    e->name = std::move(name);
    e->args.push_back(std::move(subject));
    if (is_op("(")) {
      KILN_RETURN_IF_ERROR(parse_call_args(e.get()));
    } else if ((cur().type == TokType::kName || cur().type == TokType::kString || cur().type == TokType::kInt ||
                cur().type == TokType::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) return fail("You cannot chain multiple tests with is");
      KILN_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
      KILN_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
      e->args.push_back(std::move(arg));
    }
    if (!negated) return e;
    auto n = node(ExprKind::kNot, pos);
    n->args.push_back(std::move(e));
    return n;
  }

  // jinja2 refuses an unknown filter or test when compiling, except inside an `if`
  // or a conditional expression ("soft" frames), where it fails only if evaluated.
  static Status check_names(const Expr* e) {
    if (!e) return Status::ok_status();
    if (!e->soft && e->kind == ExprKind::kFilter && !find_filter(e->name)) {
      return error_at(e->pos, "No filter named '" + e->name + "'.");
    }
    if (!e->soft && e->kind == ExprKind::kTest && !find_test(e->name)) {
      return error_at(e->pos, "No test named '" + e->name + "'.");
    }
    for (const auto& a : e->args) KILN_RETURN_IF_ERROR(check_names(a.get()));
    for (const auto& kv : e->kwargs) KILN_RETURN_IF_ERROR(check_names(kv.second.get()));
    KILN_RETURN_IF_ERROR(check_names(e->dyn_args.get()));
    return check_names(e->dyn_kwargs.get());
  }
  static Status check_names(const std::vector<StmtPtr>& body) {
    for (const auto& s : body) {
      for (const auto& e : s->exprs) KILN_RETURN_IF_ERROR(check_names(e.get()));
      for (const auto& e : s->defaults) KILN_RETURN_IF_ERROR(check_names(e.get()));
      KILN_RETURN_IF_ERROR(check_names(s->body));
      KILN_RETURN_IF_ERROR(check_names(s->else_body));
    }
    return Status::ok_status();
  }

  std::vector<Token> toks_;
  size_t i_ = 0;
  int depth_ = 0;
  bool soft_ = false;
  int loop_depth_ = 0;
  std::vector<std::array<bool, 3>> usage_;
};

}  // namespace

Result<std::shared_ptr<Program>> parse_program(std::string_view source) {
  KILN_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source));
  Parser parser(std::move(tokens));
  return parser.run();
}

}  // namespace kiln::chat_template_detail

namespace kiln {

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<chat_template_detail::Program> program,
                        chat_template_detail::parse_program(source));
  ChatTemplate t;
  t.program_ = std::move(program);
  return t;
}

}  // namespace kiln
