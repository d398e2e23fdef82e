#!/usr/bin/env python3
"""Writes the reference renderings that Kiln's C++ chat-template renderer is tested
against, rendered by Python's jinja2 configured the way transformers'
apply_chat_template configures it.

  python3 -m venv /tmp/jvenv && /tmp/jvenv/bin/pip install jinja2
  /tmp/jvenv/bin/python tests/data/chat_templates/make_reference.py

Outputs (next to this script):
  reference.json           [{template, name, conversation, extra_context,
                             add_generation_prompt, rendered}] for the Phi-3,
                            Llama-3, Qwen3 and SmolLM2 templates
  language_reference.json  {context, cases: [{name, template, rendered | error}]}:
                            small templates exercising one piece of the language
                            each, all rendered with the one context

The environment follows transformers (utils/chat_template_utils.py):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]) with its own `tojson` filter and the globals
`raise_exception` and `strftime_now`; the context is the special tokens of
tokenizer_config.json (as special_tokens_map gives them: only the set ones, as
strings) overlaid with the extra keyword arguments, plus messages, tools,
documents and add_generation_prompt. transformers' {% generation %} tag is not
registered here (no reference template uses it).
"""

import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


SPECIAL_TOKEN_ATTRIBUTES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                            "mask_token", "additional_special_tokens"]


def token_string(t):
    return t["content"] if isinstance(t, dict) else t


def special_tokens_map(config):
    out = {}
    for attr in SPECIAL_TOKEN_ATTRIBUTES:
        value = config.get(attr)
        if attr == "additional_special_tokens" and value:
            value = [token_string(t) for t in value]
        elif value is not None:
            value = token_string(value)
        if value:
            out[attr] = value
    return out


def load_configs():
    configs = {}
    for name in ["phi3", "llama3", "qwen3"]:
        with open(os.path.join(DATA, "tokenizers", name, "tokenizer_config.json"), encoding="utf-8") as f:
            configs[name] = json.load(f)
    with open(os.path.join(HERE, "smollm2.jinja"), encoding="utf-8") as f:
        smollm2 = {"chat_template": f.read()}
    with open(os.path.join(HERE, "smollm2_special_tokens.json"), encoding="utf-8") as f:
        smollm2.update(json.load(f))
    configs["smollm2"] = smollm2
    return configs


def render_chat(env, config, messages, add_generation_prompt, extra):
    template = env.from_string(config["chat_template"])
    kwargs = dict(extra)
    tools = kwargs.pop("tools", None)
    documents = kwargs.pop("documents", None)
    template_kwargs = {**special_tokens_map(config), **kwargs}
    return template.render(messages=messages, tools=tools, documents=documents,
                           add_generation_prompt=add_generation_prompt, **template_kwargs)


CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "Hello!"}], {}),
    ("system_user", [{"role": "system", "content": "You are a terse assistant."},
                     {"role": "user", "content": "What is 2+2?"}], {}),
    ("multi_turn", [{"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": "Hi there."},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."},
                    {"role": "assistant", "content": "Why did the chicken cross the road?"},
                    {"role": "user", "content": "Why?"}], {}),
    ("ends_with_assistant", [{"role": "user", "content": "Say hi."},
                             {"role": "assistant", "content": "Hi!"}], {}),
    ("korean_emoji", [{"role": "user", "content": "안녕하세요! 😀 오늘 날씨 어때요?"},
                      {"role": "assistant", "content": "맑아요 🌞 — enjoy ✨"},
                      {"role": "user", "content": "고마워요 🙏🏽 👨‍👩‍👧"}], {}),
    ("empty_content", [{"role": "system", "content": ""},
                       {"role": "user", "content": ""},
                       {"role": "assistant", "content": ""},
                       {"role": "user", "content": "ok"}], {}),
    ("whitespace_content", [{"role": "user", "content": "  padded with spaces  \n\n"},
                            {"role": "assistant", "content": "\n\tindented answer\n"},
                            {"role": "user", "content": " \u3000 ideographic space \u00a0"}], {}),
    ("template_syntax_in_content", [{"role": "user",
                                     "content": "{{ not a template }} {% raw %} {# no #} 'quotes' \"dq\" \\ back"}], {}),
    ("newlines_and_tabs", [{"role": "system", "content": "line1\nline2\r\nline3\ttab"},
                           {"role": "user", "content": "a\n\nb"}], {}),
    ("system_only", [{"role": "system", "content": "Only a system prompt."}], {}),
    ("json_like_content", [{"role": "user", "content": "{\"key\": [1, 2, {\"nested\": \"\\u00e9\"}]}"},
                           {"role": "assistant", "content": "Parsed: key -> [1, 2, {nested: é}]"}], {}),
    ("long_multi_turn", [m for k in range(5) for m in (
        {"role": "user", "content": f"Question number {k}?"},
        {"role": "assistant", "content": f"Answer number {k}."})] + [{"role": "user", "content": "Last one."}], {}),
]

QWEN3_CONVERSATIONS = [
    ("qwen3_no_thinking", [{"role": "user", "content": "Quick answer please."}], {"enable_thinking": False}),
    ("qwen3_thinking_true", [{"role": "user", "content": "Think first."}], {"enable_thinking": True}),
    ("qwen3_think_in_content", [
        {"role": "user", "content": "What is 3*7?"},
        {"role": "assistant", "content": "<think>\n3 times 7 is 21.\n</think>\n\nIt is 21."},
        {"role": "user", "content": "And 3*8?"},
        {"role": "assistant", "content": "<think>\nAdd 3.\n</think>\n\n24."}], {}),
    ("qwen3_reasoning_content", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets me."}], {}),
    ("qwen3_tools", [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Seoul?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                           "arguments": {"city": "Seoul", "unit": "celsius"}}}]},
        {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "tool", "content": "second result"},
        {"role": "assistant", "content": "It is 21°C and clear in Seoul."},
        {"role": "user", "content": "Thanks"}],
     {"tools": [{"type": "function", "function": {
         "name": "get_weather", "description": "Get the weather for a city",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "description": "City name"},
             "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
             "required": ["city"]}}}]}),
    ("qwen3_tool_call_string_arguments", [
        {"role": "user", "content": "Call it"},
        {"role": "assistant", "content": "Calling.",
         "tool_calls": [{"function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "content": "done"}], {}),
]


def model_references(env, configs):
    out = []
    for template in ["phi3", "llama3", "qwen3", "smollm2"]:
        convs = CONVERSATIONS + (QWEN3_CONVERSATIONS if template == "qwen3" else [])
        for name, messages, extra in convs:
            for agp in (True, False):
                rendered = render_chat(env, configs[template], messages, agp, extra)
                out.append({"template": template, "name": name, "conversation": messages, "extra_context": extra,
                            "add_generation_prompt": agp, "rendered": rendered})
    return out


# Small templates, one language feature each. Context values are plain JSON.
CTX = {
    "s": "héllo wörld", "n": 7, "f": 2.5, "neg": -3, "t": True, "z": None, "empty": "",
    "l": [3, 1, 2], "words": ["b", "A", "c", "a"], "d": {"b": 1, "a": 2, "items": 5},
    "users": [{"name": "ann", "age": 30, "tags": ["x"]}, {"name": "Bob", "age": 25, "tags": []},
              {"name": "cy", "age": 35, "tags": ["y", "z"]}],
    "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "u1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}],
    "ko": "안녕 😀 세상", "nested": {"x": {"y": [10, 20, {"z": "deep"}]}},
}

LANGUAGE_CASES = [
    # whitespace control, trim_blocks, lstrip_blocks
    ("trim_blocks", "{% if t %}\nyes\n{% endif %}\nend"),
    ("lstrip_blocks", "a\n    {% if t %}\n    b\n    {% endif %}\nc"),
    ("lstrip_not_vars", "x\n    {{ n }}\n    {% if t %}y{% endif %}"),
    ("minus_left", "a   \n  {%- if t %}b{% endif %}"),
    ("minus_right", "{% if t -%}   \n\n  b{% endif %}"),
    ("minus_var", "a  {{- n -}}  b"),
    ("plus_disables_lstrip", "a\n    {%+ if t %}b{% endif %}"),
    ("plus_disables_trim", "{% if t +%}\nb{% endif %}"),
    ("comment_lstrip_trim", "a\n   {# comment #}\nb {#- c -#} c"),
    ("raw_block", "{% raw %}{{ not }}{% if %}{% endraw %}!"),
    ("raw_trim", "x\n  {% raw -%}  r  {%- endraw %}\ny"),
    ("crlf_newlines", "a\r\n{% if t %}\r\nb\r\n{% endif %}\r\n"),
    ("trailing_newline_dropped", "one\n"),
    ("two_trailing_newlines", "one\n\n"),
    ("tag_after_var_newline", "{{ n }}\n{% if t %}\n  x\n{% endif %}\n"),
    ("unicode_space_lstrip", "a\n\u3000{% if t %}b{% endif %}"),
    ("nested_indent", "{% for i in l %}\n  {% if i > 1 %}\n    {{ i }}\n  {% endif %}\n{% endfor %}"),
    # literals and expressions
    ("int_float_print", "{{ 1 }} {{ 1.0 }} {{ 1.5e3 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ -0.0 }} {{ 10 / 4 }}"),
    ("bools_none", "{{ true }} {{ True }} {{ false }} {{ none }} {{ None }} {{ z }}"),
    ("list_dict_repr", "{{ [1, 'a', none, true, 2.5, {'k': \"it's\"}] }} {{ (1,) }} {{ (1, 'b') }} {{ {} }}"),
    ("string_repr_escapes", "{{ ['a\\nb', 'tab\\t', 'q\"', \"s'\", 'both\\'\"', 'é😀', '\\x01'] }}"),
    ("string_escapes", "{{ 'a\\tb\\u00e9\\x41\\n|' }}{{ \"x\\\"y\" }}{{ 'a' 'b' }}"),
    ("arith", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}"),
    ("arith_precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 10 - 2 - 3 }}"),
    ("string_ops", "{{ 'ab' + 'cd' }} {{ 'ab' ~ 1 ~ none ~ undefined_x }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] + [2] }} {{ [0] * 3 }}"),
    ("comparisons", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ none == none }}"),
    ("logic", "{{ t and 'x' }} {{ z or 'dflt' }} {{ not t }} {{ '' or 0 or [] }} {{ 0 and 1 }} {{ not (1 and 0) }}"),
    ("in_not_in", "{{ 'a' in 'cat' }} {{ 2 in l }} {{ 'b' in d }} {{ 5 not in l }} {{ 'x' not in 'abc' }} {{ 'q' in undefined_x }}"),
    ("cond_expr", "{{ 'y' if t else 'n' }} {{ 'y' if z else 'n' }} [{{ 'only' if z }}] {{ 1 if false else 2 if true else 3 }}"),
    ("tests_basic", "{{ n is defined }} {{ nope is defined }} {{ nope is undefined }} {{ z is none }} {{ s is string }} {{ d is mapping }} {{ l is iterable }} {{ n is number }} {{ l is sequence }} {{ t is boolean }}"),
    ("tests_more", "{{ t is true }} {{ t is false }} {{ n is even }} {{ n is odd }} {{ 9 is divisibleby 3 }} {{ n is integer }} {{ f is float }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ n is not none }} {{ 2 is in l }}"),
    ("tests_compare", "{{ n is eq 7 }} {{ n is ne 7 }} {{ n is gt 3 }} {{ n is lt 3 }} {{ n is ge 7 }} {{ n is le 6 }} {{ n is sameas 7 }} {{ z is sameas none }} {{ 'x' is equalto 'x' }} {{ '==' is test }} {{ 'upper' is filter }}"),
    ("tests_undefined_iterable", "{{ nope is iterable }} {{ nope is sequence }} {{ 5 is iterable }} {{ s is sequence }} {{ d is sequence }}"),
    # attribute / item access
    ("getattr_getitem", "{{ d.a }} {{ d['b'] }} {{ nested.x.y[2].z }} {{ nested['x']['y'][-1]['z'] }} {{ l[0] }} {{ l[-1] }} {{ users[1].name }} {{ l.1 }}"),
    ("dict_method_precedence", "{{ d['items'] }} {{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }}"),
    ("views_repr", "{{ d.items() }} {{ d.keys() }} {{ d.values() }}"),
    ("missing_attr_prints_empty", "[{{ d.zz }}][{{ l[10] }}][{{ s[100] }}][{{ z.x }}][{{ nope }}]"),
    ("string_index_slices", "{{ s[0] }}{{ s[-1] }} {{ s[1:4] }} {{ s[::-1] }} {{ s[::2] }} {{ s[-3:] }} {{ ko[::-1] }} {{ ko[3] }}"),
    ("list_slices", "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[5:] }} {{ l[-100:100] }} {{ msgs[1:3]|map(attribute='role')|join(',') }}"),
    # set, scoping, namespace
    ("set_basic", "{% set x = 5 %}{% set a, b = 1, 2 %}{% set c = 1, 2 %}{{ x }} {{ a }} {{ b }} {{ c }}"),
    ("set_block", "{% set body %}\n  hello {{ n }}\n{% endset %}[{{ body }}]{% set up | upper %}shout{% endset %}{{ up }}"),
    ("loop_scoping", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }},{% endfor %}{{ x }}"),
    ("if_does_not_scope", "{% if true %}{% set y = 3 %}{% endif %}{{ y }}"),
    ("namespace", "{% set ns = namespace(count=0, found=none) %}{% for m in msgs %}{% if m.role == 'user' %}{% set ns.count = ns.count + 1 %}{% set ns.found = m.content %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}"),
    ("namespace_from_dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{{ ns.c }}"),
    ("with_block", "{% set a = 1 %}{% with a = 2, b = a %}{{ a }}{{ b }}{% endwith %}{{ a }}"),
    # loops
    ("loop_vars", "{% for x in words %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }} {% endfor %}"),
    ("loop_prev_next", "{% for x in l %}[{{ loop.previtem }}|{{ x }}|{{ loop.nextitem }}]{% endfor %}"),
    ("loop_else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in l %}{{ x }}{% else %}no{% endfor %}"),
    ("loop_filter", "{% for x in l if x > 1 %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% endfor %}"),
    ("loop_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}"),
    ("loop_dict_and_string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'añb' %}[{{ c }}]{% endfor %}"),
    ("loop_nested_outer", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}{{ b }} {% endfor %}{% endfor %}"),
    ("loop_break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
    ("loop_cycle_changed", "{% for x in [1, 1, 2, 2, 3] %}{{ loop.cycle('a', 'b') }}{% if loop.changed(x) %}!{% endif %}{% endfor %}"),
    ("loop_undefined_iter", "{% for x in nope %}x{% else %}none{% endfor %}"),
    ("range_forms", "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(3) }} {{ range(0)|list }}"),
    ("loop_over_reversed_messages", "{% for m in msgs[::-1] %}{{ (msgs|length - 1) - loop.index0 }}{{ m.role[0] }} {% endfor %}"),
    # macros and call
    ("macro_defaults", "{% macro greet(name, greeting='Hi', punct='!') %}{{ greeting }} {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Yo') }} {{ greet('Cy', punct='?') }}"),
    ("macro_missing_arg", "{% macro m(a, b) %}[{{ a }}|{{ b }}]{% endmacro %}{{ m(1) }}"),
    ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}"),
    ("macro_recursion", "{% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k * fact(k - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }}"),
    ("macro_sees_globals_late", "{% macro m() %}{{ g }}{% endmacro %}{% set g = 'late' %}{{ m() }}"),
    ("macro_returns_str", "{% macro m() %}<b>{% endmacro %}{{ m() + '<' }}{{ m()|length }}"),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('p') %}inside {{ n }}{% endcall %}"),
    ("call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}<{{ x }}>{% endcall %}"),
    ("filter_block", "{% filter upper %}hello {{ s }}{% endfilter %}|{% filter trim|replace('a', 'o') %}  banana  {% endfilter %}"),
    # filters
    ("f_trim_case", "[{{ '  x y  '|trim }}] [{{ 'xxhixx'|trim('x') }}] {{ s|upper }} {{ 'ÀB'|lower }} {{ 'hello wORLD-foo(bar'|title }} {{ 'hELLO world'|capitalize }}"),
    ("f_length_count", "{{ l|length }} {{ s|length }} {{ ko|length }} {{ d|count }} {{ ''|length }} {{ nope|length }}"),
    ("f_default", "{{ nope|default('dflt') }} {{ nope|d('d2') }} {{ z|default('x') }} {{ ''|default('e', true) }} {{ n|default(1) }} [{{ nope|default }}]"),
    ("f_first_last", "{{ l|first }} {{ l|last }} {{ s|first }} {{ s|last }} {{ d|first }} [{{ []|first }}] {{ users|first|attr('items') is defined }}"),
    ("f_join", "{{ l|join }} {{ l|join(', ') }} {{ users|join('/', attribute='name') }} {{ [1, none, 'a']|join('-') }}"),
    ("f_replace", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', '-') }} {{ n|replace('7', 'seven') }}"),
    ("f_list_string", "{{ 'abc'|list }} {{ d|list }} {{ n|string + '!' }} {{ l|string }} {{ (1, 2)|list }}"),
    ("f_int_float", "{{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(-1) }} {{ 3.9|int }} {{ '0x1F'|int(0, 16) }} {{ ' 12 '|int }} {{ '1_000'|int }} {{ '3.5'|float }} {{ 'abc'|float }} {{ 2|float }} {{ true|int }}"),
    ("f_abs_round", "{{ -3|abs }} {{ neg|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 42.55|round(1, 'floor') }} {{ 42.51|round(0, 'ceil') }} {{ 7|round }} {{ 2.5|round|int }}"),
    ("f_items_dictsort", "{{ d|items|list }} {% for k, v in d|dictsort %}{{ k }}{{ v }}{% endfor %} {{ d|dictsort(by='value', reverse=true) }}"),
    ("f_map_select", "{{ users|map(attribute='name')|list }} {{ users|map(attribute='missing', default='?')|list }} {{ l|map('string')|join }} {{ words|map('upper')|list }} {{ l|select('odd')|list }} {{ l|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }}"),
    ("f_selectattr", "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} {{ msgs|rejectattr('role', 'eq', 'user')|list|length }} {{ users|selectattr('tags')|map(attribute='name')|join(',') }} {{ users|selectattr('age', 'gt', 28)|list|length }}"),
    ("f_sort_unique", "{{ l|sort }} {{ l|sort(reverse=true) }} {{ words|sort }} {{ words|sort(case_sensitive=true) }} {{ users|sort(attribute='age')|map(attribute='name')|join }} {{ ['a', 'A', 'b', 'a']|unique|list }} {{ users|sort(attribute='name')|map(attribute='name')|join }}"),
    ("f_reverse", "{{ l|reverse|list }} {{ s|reverse }} {{ (1, 2)|reverse|list }}"),
    ("f_min_max_sum", "{{ l|min }} {{ l|max }} {{ words|min }} {{ words|max(case_sensitive=true) }} {{ users|max(attribute='age') }} {{ l|sum }} {{ users|sum(attribute='age') }} {{ [1.5, 2]|sum(start=10) }}"),
    ("f_tojson", "{{ d|tojson }} {{ users[0]|tojson }} {{ 'é \"q\" <tag> \\n'|tojson }} {{ [1, 2.0, none, true]|tojson }} {{ {}|tojson }} {{ []|tojson }} {{ ko|tojson }} {{ 1e16|tojson }} {{ -0.0|tojson }}"),
    ("f_tojson_options", "{{ nested|tojson(indent=2) }}\n{{ d|tojson(indent='--') }}\n{{ d|tojson(sort_keys=true) }} {{ d|tojson(separators=(',', ':')) }} {{ ko|tojson(ensure_ascii=true) }} {{ [[], {}, [1]]|tojson(indent=1) }}"),
    ("f_indent", "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent('> ', blank=true) }}|{{ 'x'|indent(first=true) }}"),
    ("f_center_truncate_wordcount", "[{{ 'ab'|center(7) }}] {{ 'foo bar baz qux'|truncate(9) }} {{ 'foo bar baz qux'|truncate(9, true) }} {{ 'foo bar baz qux'|truncate(11) }} {{ 'a b-c d_e'|wordcount }}"),
    ("f_batch_attr", "{{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 0)|list }} {{ d|attr('a') }} {{ 'x'|attr('upper') is defined }}"),
    ("f_escape_safe", "{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|safe }} {{ ('<'|safe) + '<' }} {{ '<' + ('<'|e) }} {{ ('<'|e)|e }} {{ '<'|forceescape }}"),
    ("f_format_percent", "{{ '%s-%d-%05.2f-%x-%r' % ('a', 3.9, 3.14159, 255, 'q') }} {{ '%(a)s+%(b)s' % d }} {{ 'n=%s'|format(n) }} {{ '%%|%5s|%-5s|' % ('ab', 'cd') }}"),
    ("str_format_method", "{} {{ '{}-{}'.format(1, 'b') }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{x}!'.format(x=n) }} {{ '{:>6}|{:<4}|{:^7}|{:05d}|{:.3f}|{:,}'.format('ab', 'c', 'mid', 42, 3.14159, 1234567) }} {{ '{{}}'.format() }}"),
    # string methods
    ("str_methods_strip_split", "[{{ '  x  '.strip() }}][{{ 'xxaxx'.lstrip('x') }}][{{ '\\n\\na\\n'.rstrip('\\n') }}] {{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }}"),
    ("str_methods_misc", "{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} {{ 'abc'.upper() }} {{ 'ABC'.lower() }} {{ 'a-b'.replace('-', '+') }} {{ 'banana'.find('an') }} {{ 'banana'.rfind('an') }} {{ 'banana'.count('a') }} {{ 'héllo'.find('l') }} {{ '-'.join(['a', 'b']) }} {{ 'hello world'.title() }} {{ 'abc'.capitalize() }}"),
    ("str_methods_predicates", "{{ '123'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'a1'.isalnum() }} {{ '  '.isspace() }} {{ 'ab'.islower() }} {{ 'AB'.isupper() }} {{ ''.isdigit() }} {{ 'x'.zfill(3) }} {{ 'ab'.ljust(4, '.') }} {{ 'ab'.rjust(4) }} {{ 'a=b=c'.partition('=') }} {{ 'prefix_x'.removeprefix('prefix_') }} {{ 'a\\nb\\r\\nc'.splitlines() }}"),
    ("qwen_think_parsing", "{% set c = '<think>\\nreason\\n</think>\\n\\nanswer' %}{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}"),
    # globals
    ("dict_global", "{{ dict(a=1, b='x') }} {{ dict([('k', 'v')]) }} {{ namespace(a=1) }}"),
    ("joiner_global", "{% set j = joiner(', ') %}{% for x in l %}{{ j() }}{{ x }}{% endfor %}"),
    ("print_statement", "{% print 'p' ~ n %}{% print 1, 2 %}"),
    ("tuple_output", "{{ 1, 'a' }}"),
    ("generator_truthiness", "{% set g = l|select('odd') %}{{ g is defined }}{% if []|select('odd') %}T{% else %}F{% endif %}{% for x in g %}{{ x }}{% endfor %}|{% for x in g %}{{ x }}{% endfor %}"),
    ("markup_concat", "{{ ('<b>'|safe) ~ '<i>' }}"),
    ("float_formatting", "{{ 1/3 }} {{ 2 ** 0.5 }} {{ 123456789012345678901234567890.0 }} {{ 1.5e-10 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1e15 }} {{ 1e16 }} {{ 12345.678 }} {{ -7 // 2.0 }} {{ 2 // 0.1 }} {{ 1e308 * 10 }} {{ -(1e308 * 10) }}"),
    ("round_half_even", "{{ 0.5|round }} {{ 1.5|round }} {{ 2.5|round }} {{ -0.5|round }} {{ 0.125|round(2) }} {{ 0.375|round(2) }} {{ 1.0|int }} {{ '1e3'|int }} {{ 10|string|length }}"),
    ("dict_literal_keys", "{{ {1: 'a', 2.5: 'b', none: 'c', true: 'd'} }} {{ {1: 'a', 2.5: 'b', none: 'c', true: 'd'}|tojson }} {{ {'a': 1, 'a': 2} }}"),
    ("sequence_semantics", "{% set x = [1, 2, 3] %}{{ x[1:] + x[:1] }} {{ [1, 2] == (1, 2) }} {{ (1, 2) + (3,) }} {{ 'abc' in ['abc'] }} {{ 'é' > 'z' }} {{ [] == [] }} {{ {'a': [1]} == {'a': [1]} }}"),
    ("undefined_comparisons", "{{ nope == none }} {{ nope != 1 }} {{ nope == nope2 }} {{ nope|default(none) is none }} {{ not nope }} {{ nope is not defined and true }}"),
    ("macro_default_uses_param", "{% macro m(a, b=a * 2, c=none) %}{{ a }},{{ b }},{{ c }}{% endmacro %}{{ m(3) }} {{ m(3, c='x') }}"),
    ("title_apostrophes", "{{ \"they're bill's friends\"|title }} {{ \"they're bill's\".title() }} {{ 'ǆemal'|title }}"),
    ("percent_misc", "{{ '%s' % none }} {{ '%d%%' % 5 }} {{ '%s|%s' % ([1], {'a': 1}) }} {{ '%.3s' % 'abcdef' }} {{ '%+d % d' % (5, 5) }} {{ '%e' % 12345.678 }} {{ '%g' % 0.0001 }}"),
    ("repr_unicode_printable", "{{ ['\u200b', '\x85', '\u2028', '\u00a0', ' ', '\x7f', 'é', '\U0001F600', '\u0301'] }}"),
    ("raw_minus_both", "a  {%- raw -%}  b  {%- endraw -%}  c"),
    ("string_methods_markup", "{{ ('<a> '|safe).strip() + '<' }} {{ ('x'|e).upper() }}"),
    # errors (the reference records that jinja2 raises; the C++ test expects an error too)
    ("err_raise_exception", "{% if true %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"),
    ("err_undefined_attr", "{{ nope.attr }}"),
    ("err_undefined_call", "{{ nope() }}"),
    ("err_undefined_add", "{{ nope + 1 }}"),
    ("err_type_add", "{{ 1 + 'a' }}"),
    ("err_str_plus_none", "{{ 'a' + z }}"),
    ("err_div_zero", "{{ 1 / 0 }}"),
    ("err_unknown_filter", "{{ s|nosuchfilter }}"),
    ("err_unknown_test", "{{ s is nosuchtest }}"),
    ("unknown_filter_in_if_not_run", "{% if false %}{{ s|nosuchfilter }}{% endif %}ok"),
    ("err_unknown_filter_in_if_run", "{% if true %}{{ s|nosuchfilter }}{% endif %}"),
    ("err_syntax_unclosed_if", "{% if t %}x"),
    ("err_syntax_bad_expr", "{{ 1 + }}"),
    ("err_syntax_unknown_tag", "{% frobnicate %}"),
    ("err_syntax_unclosed_var", "{{ n "),
    ("err_syntax_unclosed_comment", "{# never closed"),
    ("err_unpack", "{% set a, b = [1, 2, 3] %}"),
    ("err_list_append_unsafe", "{{ l.append(4) }}"),
    ("err_dict_update_unsafe", "{{ d.update({'x': 1}) }}"),
    ("err_ns_assign_non_namespace", "{% set d.x = 1 %}"),
    ("err_compare_types", "{{ 1 < 'a' }}"),
    ("err_tojson_undefined", "{{ nope|tojson }}"),
    ("err_first_of_empty_attr", "{{ ([]|first).x }}"),
    ("err_macro_too_many_args", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"),
    ("err_range_too_big", "{{ range(1000000)|length }}"),
    ("err_break_outside_loop", "{% break %}"),
    ("err_generator_len", "{{ l|select('odd')|length }}"),
]


def language_references(env):
    out = []
    names = set()
    for name, template in LANGUAGE_CASES:
        assert name not in names, name
        names.add(name)
        entry = {"name": name, "template": template}
        try:
            entry["rendered"] = env.from_string(template).render(**CTX)
        except Exception as e:  # noqa: BLE001 - any jinja2 failure is an expected error
            entry["error"] = f"{type(e).__name__}: {e}"
        assert ("error" in entry) == name.startswith("err_"), (name, entry.get("error"), entry.get("rendered"))
        out.append(entry)
    return {"context": CTX, "cases": out}


def main():
    env = make_env()
    configs = load_configs()
    with open(os.path.join(HERE, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(model_references(env, configs), f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(HERE, "language_reference.json"), "w", encoding="utf-8") as f:
        json.dump(language_references(env), f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"jinja2 {jinja2.__version__}: wrote reference.json and language_reference.json")


if __name__ == "__main__":
    main()
