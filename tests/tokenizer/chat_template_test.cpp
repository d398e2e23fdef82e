// Chat templates: byte-for-byte against Python jinja2 (configured as transformers
// configures it; see tests/data/chat_templates/make_reference.py), plus unit tests
// of the language pieces, errors and limits.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace kiln {
namespace {

using ojson = nlohmann::ordered_json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ojson read_json(const std::string& rel) {
  std::string text = read_file(test::data_path(rel));
  EXPECT_FALSE(text.empty()) << rel;
  return ojson::parse(text);
}

ojson model_config(const std::string& name) {
  if (name == "smollm2") {
    ojson config = read_json("chat_templates/smollm2_special_tokens.json");
    config["chat_template"] = read_file(test::data_path("chat_templates/smollm2.jinja"));
    return config;
  }
  return read_json("tokenizers/" + name + "/tokenizer_config.json");
}

// Renders `source` with `context` (JSON text, insertion order kept).
Result<std::string> render(const std::string& source, const std::string& context = "{}",
                           const ChatTemplateLimits& limits = {}) {
  KILN_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::parse(source));
  return t.render(ojson::parse(context), limits);
}

template <typename T>
T must(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? std::move(r).value() : T{};
}

std::string render_ok(const std::string& source, const std::string& context = "{}") {
  auto r = render(source, context);
  EXPECT_TRUE(r.ok()) << source << "\n" << r.status().to_string();
  return r.ok() ? *r : std::string("<error>");
}

// ---- against jinja2

TEST(ChatTemplateReference, ModelTemplatesMatchJinja2) {
  ojson refs = read_json("chat_templates/reference.json");
  ASSERT_GT(refs.size(), 100u);
  std::map<std::string, ojson> configs;
  int checked = 0;
  for (const auto& ref : refs) {
    const std::string name = ref["template"].get<std::string>();
    if (!configs.count(name)) configs[name] = model_config(name);
    const ojson& extra = ref["extra_context"];
    auto out = apply_chat_template(configs[name], ref["conversation"], ref["add_generation_prompt"].get<bool>(),
                                   extra.empty() ? ojson() : extra);
    ASSERT_TRUE(out.ok()) << name << "/" << ref["name"] << ": " << out.status().to_string();
    EXPECT_EQ(*out, ref["rendered"].get<std::string>())
        << name << "/" << ref["name"] << " add_generation_prompt=" << ref["add_generation_prompt"];
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(refs.size()));
  for (const char* name : {"phi3", "llama3", "qwen3", "smollm2"}) EXPECT_TRUE(configs.count(name)) << name;
}

TEST(ChatTemplateReference, LanguageCasesMatchJinja2) {
  ojson ref = read_json("chat_templates/language_reference.json");
  const ojson& context = ref["context"];
  const ojson& cases = ref["cases"];
  ASSERT_GT(cases.size(), 100u);
  for (const auto& c : cases) {
    const std::string name = c["name"].get<std::string>();
    auto t = ChatTemplate::parse(c["template"].get<std::string>());
    Result<std::string> out = t.ok() ? t->render(context) : Result<std::string>(t.status());
    if (c.contains("error")) {
      EXPECT_FALSE(out.ok()) << name << " should fail like jinja2 (" << c["error"] << ") but rendered "
                             << (out.ok() ? *out : "");
      if (!out.ok()) {
        EXPECT_EQ(out.status().message().rfind("chat template line ", 0), 0u) << name << ": " << out.status().message();
      }
    } else {
      ASSERT_TRUE(out.ok()) << name << ": " << out.status().to_string();
      EXPECT_EQ(*out, c["rendered"].get<std::string>()) << name << "\ntemplate: " << c["template"];
    }
  }
}

// ---- language pieces

TEST(ChatTemplateLanguage, WhitespaceControl) {
  // trim_blocks eats the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(render_ok("{% if true %}\n  x\n{% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render_ok("a\n  {% if true %}b{% endif %}"), "a\nb");
  // Variable tags are not lstripped; `-` strips every whitespace character, newlines included.
  EXPECT_EQ(render_ok("a\n  {{ 1 }}"), "a\n  1");
  EXPECT_EQ(render_ok("a \n {{- 1 -}} \n b"), "a1b");
  EXPECT_EQ(render_ok("{%- if true -%}  \n x {%- endif %}"), "x");
  // `+` keeps the whitespace; comments vanish with the same rules.
  EXPECT_EQ(render_ok("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(render_ok("{% if true +%}\nb{% endif %}"), "\nb");
  EXPECT_EQ(render_ok("a\n  {# note #}\nb"), "a\nb");
  // One trailing newline of the template is dropped; \r\n becomes \n.
  EXPECT_EQ(render_ok("x\r\ny\n"), "x\ny");
}

TEST(ChatTemplateLanguage, LoopsAndScoping) {
  EXPECT_EQ(render_ok("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}"),
            "1a,2b,3c");
  EXPECT_EQ(render_ok("{% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}", R"({"d": {"z": 1, "a": 2}})"),
            "z=1 a=2 ");
  EXPECT_EQ(render_ok("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render_ok("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  // Assignments inside a loop body do not leak; namespace() carries state out.
  EXPECT_EQ(render_ok("{% set n = 0 %}{% for x in [1, 2] %}{% set n = n + x %}{% endfor %}{{ n }}"), "0");
  EXPECT_EQ(render_ok("{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}"),
            "3");
  EXPECT_EQ(render_ok("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "012");
}

TEST(ChatTemplateLanguage, Macros) {
  EXPECT_EQ(render_ok("{% macro tag(name, body='') %}<{{ name }}>{{ body }}</{{ name }}>{% endmacro %}"
                      "{{ tag('b', 'x') }}{{ tag(name='i') }}"),
            "<b>x</b><i></i>");
  EXPECT_EQ(render_ok("{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}in{% endcall %}"), "[in]");
}

TEST(ChatTemplateLanguage, Filters) {
  EXPECT_EQ(render_ok("{{ '  hi  '|trim }}|{{ 'a'|upper }}|{{ [1, 2]|length }}|{{ x|default('d') }}"), "hi|A|2|d");
  EXPECT_EQ(render_ok("{{ m|tojson }}", R"({"m": {"b": "é", "a": [1, 2.5, null]}})"),
            R"({"b": "é", "a": [1, 2.5, null]})");
  EXPECT_EQ(render_ok("{{ m|tojson(indent=2) }}", R"({"m": {"k": [1]}})"), "{\n  \"k\": [\n    1\n  ]\n}");
  EXPECT_EQ(render_ok("{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='c')|join(',') }}",
                      R"({"ms": [{"role": "user", "c": "1"}, {"role": "bot", "c": "2"}, {"role": "user", "c": "3"}]})"),
            "1,3");
}

TEST(ChatTemplateLanguage, KeyOrderFollowsTheJsonType) {
  ChatTemplate t = must(ChatTemplate::parse("{{ m|tojson }}"));
  // ordered_json keeps the caller's order (as a Python dict does); json sorts keys.
  EXPECT_EQ(must(t.render(ojson::parse(R"({"m": {"b": 1, "a": 2}})"))), R"({"b": 1, "a": 2})");
  EXPECT_EQ(must(t.render(nlohmann::json::parse(R"({"m": {"b": 1, "a": 2}})"))), R"({"a": 2, "b": 1})");
}

TEST(ChatTemplateLanguage, UndefinedSemantics) {
  EXPECT_EQ(render_ok("[{{ missing }}][{{ d.missing }}][{{ l[9] }}]", R"({"d": {}, "l": []})"), "[][][]");
  EXPECT_EQ(render_ok("{{ missing is defined }} {{ missing|length }} {% for x in missing %}x{% endfor %}"), "False 0 ");
  auto r = render("{{ missing.attr }}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'missing' is undefined"), std::string::npos) << r.status().message();
}

TEST(ChatTemplateLanguage, RaiseExceptionIsAnInvalidArgumentWithItsMessage) {
  auto r = render("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
                  R"({"messages": [{"role": "assistant"}]})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  const std::string& msg = r.status().message();
  EXPECT_EQ(msg.rfind("chat template line 1:", 0), 0u) << msg;
  const std::string tail = ": Conversation roles must alternate";
  ASSERT_GE(msg.size(), tail.size());
  EXPECT_EQ(msg.substr(msg.size() - tail.size()), tail);
}

TEST(ChatTemplateLanguage, ErrorsNameLineAndColumn) {
  auto syntax = ChatTemplate::parse("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}");
  ASSERT_FALSE(syntax.ok());
  EXPECT_EQ(syntax.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(syntax.status().message().rfind("chat template line 3:10: ", 0), 0u) << syntax.status().message();

  auto unclosed = ChatTemplate::parse("a\n{% for x in y %}\nb");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.status().message().find("'endfor'"), std::string::npos) << unclosed.status().message();

  auto runtime = render("ok\n\n   {{ 'a' + 1 }}");
  ASSERT_FALSE(runtime.ok());
  EXPECT_EQ(runtime.status().message(), "chat template line 3:11: can only concatenate str (not \"int\") to str");

  auto in_macro = render("{% macro m() %}\n{{ nope.x }}{% endmacro %}\n{{ m() }}");
  ASSERT_FALSE(in_macro.ok());
  EXPECT_EQ(in_macro.status().message().rfind("chat template line 2:", 0), 0u) << in_macro.status().message();
}

TEST(ChatTemplateLanguage, UnsupportedTagsAreRefusedByName) {
  auto r = ChatTemplate::parse("{% include 'other.jinja' %}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
}

TEST(ChatTemplateLanguage, GenerationBlockRendersItsBody) {
  EXPECT_EQ(render_ok("a{% generation %}b{{ 1 }}{% endgeneration %}c"), "ab1c");
}

TEST(ChatTemplateLanguage, StrftimeNow) {
  std::string year = render_ok("{{ strftime_now('%Y') }}");
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  EXPECT_EQ(year, std::to_string(tm.tm_year + 1900));
}

// ---- limits

TEST(ChatTemplateLimits, NestedLoopsStopAtTheIterationCap) {
  auto r = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("max_loop_iterations"), std::string::npos) << r.status().message();
}

TEST(ChatTemplateLimits, HugeOutputStops) {
  auto r = render("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("max_output_bytes"), std::string::npos) << r.status().message();

  ChatTemplateLimits small;
  small.max_output_bytes = 10;
  EXPECT_TRUE(render("0123456789", "{}", small).ok());
  EXPECT_EQ(render("0123456789a", "{}", small).status().code(), StatusCode::kResourceExhausted);
}

TEST(ChatTemplateLimits, GrowingValuesStopWithoutOutput) {
  // Doubling a string never prints anything but must not eat memory.
  auto r = render("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(render("{{ 'x' * 100000000000 }}").status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(render("{{ [1] * 100000000000 }}").status().code(), StatusCode::kResourceExhausted);
}

TEST(ChatTemplateLimits, RecursionDepth) {
  auto r = render("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("max_depth"), std::string::npos) << r.status().message();
  // Fan-out recursion within the depth cap is stopped by the call budget.
  auto fan = render("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(50) }}");
  ASSERT_FALSE(fan.ok());
  EXPECT_EQ(fan.status().code(), StatusCode::kResourceExhausted);
}

TEST(ChatTemplateLimits, DeepRecursionThroughNestedStatementsStopsCleanly) {
  // 63 macro levels x 150 nested ifs would need ~10k native frames.
  std::string t = "{% macro r(n) %}";
  for (int k = 0; k < 150; ++k) t += "{% if true %}";
  t += "{% if n < 63 %}{{ r(n + 1) }}{% endif %}";
  for (int k = 0; k < 150; ++k) t += "{% endif %}";
  t += "{% endmacro %}{{ r(0) }}";
  auto r = render(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("nests too deeply"), std::string::npos) << r.status().message();
}

TEST(ChatTemplateLimits, NamespacesCannotFormCycles) {
  auto r = render("{% set ns = namespace(x=1) %}{% set ns.self = ns %}{{ ns }}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  EXPECT_FALSE(render("{% set ns = namespace() %}{% set ns.l = [1, [ns]] %}").ok());
  EXPECT_EQ(render_ok("{% set ns = namespace(l=[]) %}{% for x in [1, 2] %}{% set ns.l = ns.l + [{'x': x}] %}{% endfor %}"
                      "{{ ns.l }}"),
            "[{'x': 1}, {'x': 2}]");
}

TEST(ChatTemplateLimits, DeepNestingIsASyntaxErrorNotACrash) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  auto r = ChatTemplate::parse(deep);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nests too deeply"), std::string::npos) << r.status().message();
  std::string lists = "{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}";
  EXPECT_FALSE(ChatTemplate::parse(lists).ok());
  std::string ifs;
  for (int k = 0; k < 2000; ++k) ifs += "{% if true %}";
  for (int k = 0; k < 2000; ++k) ifs += "{% endif %}";
  EXPECT_FALSE(ChatTemplate::parse(ifs).ok());
}

TEST(ChatTemplateLimits, DeepContextIsRefused) {
  std::string deep = std::string(2000, '[') + std::string(2000, ']');
  auto r = render("{{ x }}", "{\"x\": " + deep + "}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(ChatTemplateLimits, TheTemplateSeesOnlyItsContext) {
  // No Python object model to climb: dunder attributes are just missing.
  EXPECT_EQ(render_ok("[{{ ''.__class__ }}][{{ messages.__class__ }}][{{ range.__globals__ }}]", R"({"messages": []})"),
            "[][][]");
  EXPECT_FALSE(render("{{ messages.append(1) }}", R"({"messages": []})").ok());
}

// ---- apply_chat_template

TEST(ChatTemplateApply, BuildsTheTransformersContext) {
  ojson config = {{"chat_template", "{{ bos_token is defined }}|{{ eos_token }}|{{ pad_token }}|{{ tools }}|"
                                    "{{ documents }}|{{ add_generation_prompt }}|{{ additional_special_tokens }}|{{ x }}"},
                  {"bos_token", nullptr},
                  {"eos_token", {{"__type", "AddedToken"}, {"content", "</s>"}, {"special", true}}},
                  {"pad_token", ""},
                  {"additional_special_tokens", {"<a>", {{"content", "<b>"}}}}};
  auto out = apply_chat_template(config, ojson::array(), true, ojson{{"x", 5}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(*out, "False|</s>||None|None|True|['<a>', '<b>']|5");
}

TEST(ChatTemplateApply, NamedTemplates) {
  nlohmann::json config = {{"chat_template", nlohmann::json::array({{{"name", "default"}, {"template", "plain"}},
                                                                    {{"name", "tool_use"}, {"template", "tools"}}})}};
  nlohmann::json messages = nlohmann::json::array();
  EXPECT_EQ(must(apply_chat_template(config, messages, false)), "plain");
  EXPECT_EQ(must(apply_chat_template(config, messages, false, {{"tools", nlohmann::json::array()}})), "tools");
  EXPECT_EQ(apply_chat_template(nlohmann::json::object(), messages, false).status().code(), StatusCode::kNotFound);
}

TEST(ChatTemplateApply, QwenThinkingSwitch) {
  ojson config = model_config("qwen3");
  ojson messages = ojson::parse(R"([{"role": "user", "content": "hi"}])");
  auto plain = apply_chat_template(config, messages, true);
  auto no_think = apply_chat_template(config, messages, true, ojson{{"enable_thinking", false}});
  ASSERT_TRUE(plain.ok() && no_think.ok());
  EXPECT_EQ(*plain, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(*no_think, *plain + "<think>\n\n</think>\n\n");
}

TEST(ChatTemplateApply, BracedContextsPickTheJsonOverload) {
  ChatTemplate t = must(ChatTemplate::parse("{{ a }}-{{ b }}"));
  EXPECT_EQ(must(t.render({{"b", 2}, {"a", 1}})), "1-2");
  ojson ordered = {{"b", 2}, {"a", 1}};
  EXPECT_EQ(must(t.render(ordered)), "1-2");
  EXPECT_EQ(must(apply_chat_template({{"chat_template", "{{ messages|length }}"}}, {1, 2}, false)), "2");
  EXPECT_EQ(must(apply_chat_template(ojson{{"chat_template", "{{ messages|length }}"}}, {1, 2, 3}, false)), "3");
}

TEST(ChatTemplateApply, ParsedTemplateIsReusable) {
  ChatTemplate t = must(ChatTemplate::parse(model_config("llama3")["chat_template"].get<std::string>()));
  ChatTemplate copy = t;
  for (int k = 0; k < 3; ++k) {
    auto out = copy.render(ojson{{"messages", {{{"role", "user"}, {"content", "x"}}}},
                                 {"bos_token", "<|begin_of_text|>"}});
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(*out,
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
}

}  // namespace
}  // namespace kiln
