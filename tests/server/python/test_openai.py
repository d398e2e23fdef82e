"""The OpenAI-compatible API of `kiln serve` (/v1/models, /v1/completions, /v1/chat/completions) through the
official `openai` Python client, against the repositories of conftest.py (phi3 fixture engine and tokenizer):
greedy text equals `kiln run`'s ids decoded (and the ensemble's text_output), chat prompts are the model's chat
template as transformers renders it, streamed deltas add up to the whole text, finish reasons (length, stop
string), usage counts, n > 1 with seeds (choice j = seed + j, and the same draw the ensemble makes with that
random_seed), log-probs equal to the tensorrt_llm model's output_log_probs with consistent top alternatives,
OpenAI's error shape for bad requests (the server serving after each), and a client that leaves mid-stream
cancelling its request.

pip: openai (plus what the other suites use: pytest, requests, tritonclient[http], transformers)
run: KILN_BIN=build/kiln .venv/bin/python -m pytest -q tests/server/python/test_openai.py
"""
import json
import math
import re
import socket
import time

import numpy as np
import openai
import pytest
import requests
import tritonclient.http as httpclient

import endpoint_helpers as eh
from conftest import MAX_INPUT_LEN, MAX_SEQ_LEN, wait_for

TIMEOUT = 60
TEXT_MODELS = ["ensemble", "tensorrt_llm_bls"]
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}]


def make_client(server):
    return openai.OpenAI(base_url="http://%s/v1" % server.http_url, api_key="unused", max_retries=0,
                         timeout=TIMEOUT)


@pytest.fixture(scope="module")
def client(server):
    c = make_client(server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stream_client(stream_server):
    c = make_client(stream_server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def hf_tokenizers(tokenizer_dir):
    """The `tokenizers` library on the same tokenizer.json: the ids kiln's tokenizer reproduces. (transformers 5
    rebuilds a Llama tokenizer from tokenizer_config.json's legacy=false, which changes the ids of text right after
    a special token such as <|system|>; transformers 4's fast tokenizer and `tokenizers` do not.)"""
    import os
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))


def chat_prompt_ids(tokenizer, hf_tokenizers, messages):
    """The prompt ids of a chat request: transformers' rendering of the model's chat template with the generation
    prompt, encoded without special tokens (as apply_chat_template(tokenize=True) does)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return hf_tokenizers.encode(text, add_special_tokens=False).ids


def reference(engine_dir, tokenizer, prompt_ids, max_tokens):
    """(generated ids, text, finish_reason, completion_tokens) that a greedy request must give."""
    run = eh.reference_run(engine_dir, prompt_ids, max_tokens)
    gen = run["output_ids"]
    text = eh.expected_text(tokenizer, prompt_ids, gen)
    finish = "length" if run["finish_reason"] == "length" else "stop"
    return gen, text, finish, len(gen) + (1 if run["finish_reason"] == "end_id" else 0)


def check_usage(usage, prompt_tokens, completion_tokens):
    assert usage.prompt_tokens == prompt_tokens
    assert usage.completion_tokens == completion_tokens
    assert usage.total_tokens == prompt_tokens + completion_tokens


# ---- models ----------------------------------------------------------------------------------------------------

def test_models_lists_the_text_models(client, server):
    models = client.models.list()
    assert sorted(m.id for m in models.data) == TEXT_MODELS
    for m in models.data:
        assert m.object == "model" and m.owned_by == "kiln" and m.created > 0
    raw = requests.get("http://%s/v1/models" % server.http_url, timeout=TIMEOUT).json()
    assert raw["object"] == "list"
    assert client.models.retrieve("ensemble").id == "ensemble"
    for name in ("tensorrt_llm", "preprocessing", "no_such_model"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)


# ---- completions -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TEXT_MODELS)
def test_completion_greedy_equals_kiln_run_and_the_ensemble(client, server, engine_dir, tokenizer, model):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    gen, text, finish, used = reference(engine_dir, tokenizer, ids, eh.MAX_TOKENS)
    r = client.completions.create(model=model, prompt=eh.PROMPT, max_tokens=eh.MAX_TOKENS, temperature=0)
    assert r.object == "text_completion" and r.model == model
    assert r.id.startswith("cmpl-") and abs(r.created - time.time()) < 600
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == finish
    assert r.choices[0].logprobs is None
    check_usage(r.usage, len(ids), used)
    # The same text as the Triton path's ensemble for the same prompt.
    g = requests.post("http://%s/v2/models/ensemble/generate" % server.http_url, timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": eh.MAX_TOKENS})
    assert g.status_code == 200 and g.json()["text_output"] == text


def test_completion_prompt_forms(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    ids_2 = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    _, text, _, _ = reference(engine_dir, tokenizer, ids, 6)
    _, text_2, _, _ = reference(engine_dir, tokenizer, ids_2, 6)
    # Token ids, as given (no BOS added).
    r = client.completions.create(model="ensemble", prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == text and r.usage.prompt_tokens == len(ids)
    # Several prompts (text, and token-id lists): one choice each, in order.
    for prompt in ([eh.PROMPT, eh.PROMPT_2], [ids, ids_2]):
        r = client.completions.create(model="ensemble", prompt=prompt, max_tokens=6, temperature=0)
        assert [c.index for c in r.choices] == [0, 1]
        assert [c.text for c in r.choices] == [text, text_2]
        assert r.usage.prompt_tokens == len(ids) + len(ids_2)
    # echo: the prompt leads the text.
    r = client.completions.create(model="ensemble", prompt=eh.PROMPT, max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == eh.PROMPT + text
    # OpenAI's default max_tokens for completions is 16.
    _, text_16, finish_16, used_16 = reference(engine_dir, tokenizer, ids, 16)
    r = client.completions.create(model="ensemble", prompt=eh.PROMPT, temperature=0)
    assert r.choices[0].text == text_16 and r.choices[0].finish_reason == finish_16
    assert r.usage.completion_tokens == used_16


def test_completion_stream_adds_up_with_usage_last(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
    _, text, finish, used = reference(engine_dir, tokenizer, ids, 12)
    chunks = list(client.completions.create(model="tensorrt_llm_bls", prompt=eh.PROMPT_3, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert all(c.object == "text_completion" for c in chunks)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    check_usage(last.usage, len(ids), used)
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].text for c in content) == text
    assert len(content) > 2  # streamed, not one piece
    assert [c.choices[0].finish_reason for c in content] == [None] * (len(content) - 1) + [finish]


# ---- chat ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TEXT_MODELS)
def test_chat_greedy_uses_the_chat_template(client, engine_dir, tokenizer, hf_tokenizers, model):
    ids = chat_prompt_ids(tokenizer, hf_tokenizers, MESSAGES)
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")  # the template's generation prompt
    _, text, finish, used = reference(engine_dir, tokenizer, ids, 10)
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.model == model and r.id.startswith("chatcmpl-")
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == text
    assert c.finish_reason == finish
    assert c.logprobs is None
    check_usage(r.usage, len(ids), used)
    # max_completion_tokens is the newer name of max_tokens; content as text parts is the same prompt.
    parts = [dict(MESSAGES[0]), {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]}]
    r2 = client.chat.completions.create(model=model, messages=parts, max_completion_tokens=10, temperature=0)
    assert r2.choices[0].message.content == text and r2.usage.prompt_tokens == len(ids)


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, tokenizer, hf_tokenizers):
    ids = chat_prompt_ids(tokenizer, hf_tokenizers, MESSAGES)
    # A prompt that leaves little room: the default generates until the context is full (or an end id).
    long_user = " ".join(["word"] * (MAX_INPUT_LEN - len(ids) - 10))
    messages = [MESSAGES[0], {"role": "user", "content": long_user}]
    pids = chat_prompt_ids(tokenizer, hf_tokenizers, messages)
    assert len(pids) <= MAX_INPUT_LEN
    r = client.chat.completions.create(model="ensemble", messages=messages, temperature=0)
    assert r.usage.prompt_tokens == len(pids)
    assert r.usage.completion_tokens <= MAX_SEQ_LEN - len(pids)
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == MAX_SEQ_LEN - len(pids)


@pytest.mark.parametrize("which", ["server", "stream_server"])
def test_chat_stream_role_first_then_deltas_then_usage(request, tokenizer, hf_tokenizers, engine_dir, which):
    """Streaming works whether or not the repository's models are decoupled."""
    c = make_client(request.getfixturevalue(which))
    ids = chat_prompt_ids(tokenizer, hf_tokenizers, MESSAGES)
    _, text, finish, used = reference(engine_dir, tokenizer, ids, 12)
    chunks = list(c.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    c.close()
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    first, *content, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert first.choices[0].finish_reason is None
    assert last.choices == []
    check_usage(last.usage, len(ids), used)
    assert "".join(ch.choices[0].delta.content or "" for ch in content) == text
    # finish_reason on the last content chunk only
    assert [ch.choices[0].finish_reason for ch in content] == [None] * (len(content) - 1) + [finish]
    # without include_usage: no usage chunk
    c = make_client(request.getfixturevalue(which))
    plain = list(c.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=4, temperature=0,
                                           stream=True))
    c.close()
    assert plain[-1].choices[0].finish_reason is not None and plain[-1].usage is None


# ---- finish reasons and stop strings ---------------------------------------------------------------------------

def test_finish_reasons_length_and_stop_string(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    gen, text, _, _ = reference(engine_dir, tokenizer, ids, 12)
    r = client.completions.create(model="ensemble", prompt=eh.PROMPT_2, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    # A stop string taken from the middle of the greedy text: the text ends before it, finish "stop".
    visible = text.strip()
    assert len(visible) > 8, text
    stop = visible[len(visible) // 2:len(visible) // 2 + 3]
    cut = text[:text.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = [c for c in client.completions.create(model="ensemble", prompt=eh.PROMPT_2, max_tokens=12,
                                                           temperature=0, stop=[stop, "zzzz"], stream=True)]
            got = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = client.completions.create(model="ensemble", prompt=eh.PROMPT_2, max_tokens=12, temperature=0,
                                          stop=stop)
            got, reason = r.choices[0].text, r.choices[0].finish_reason
            assert r.usage.completion_tokens < 12  # generation ended at the stop string
            # The tokens counted are those up to the one that completed the stop string.
            n = r.usage.completion_tokens
            assert stop in eh.expected_text(tokenizer, ids, gen[:n])
            assert stop not in eh.expected_text(tokenizer, ids, gen[:n - 1])
        assert got == cut, (stream, stop)
        assert reason == "stop"
    r = client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=12, temperature=0,
                                       stop=["\u00e9\u00e9\u00e9"])  # never generated
    assert r.choices[0].finish_reason in ("length", "stop")


# ---- n > 1 and seeds -------------------------------------------------------------------------------------------

def test_n_choices_with_seeds(client, server, tokenizer):
    kw = dict(model="ensemble", prompt=eh.PROMPT, max_tokens=8, temperature=1.0, seed=1234)
    r = client.completions.create(n=2, **kw)
    assert [c.index for c in r.choices] == [0, 1]
    again = client.completions.create(n=2, **kw)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seeded: reproducible
    # choice j draws with seed + j: the same as a single request with that seed.
    one = client.completions.create(n=1, **kw)
    assert one.choices[0].text == r.choices[0].text
    kw["seed"] = 1235
    assert client.completions.create(n=1, **kw).choices[0].text == r.choices[1].text
    assert r.usage.prompt_tokens == len(eh.encode_prompt(tokenizer, server.repo, eh.PROMPT))  # the prompt once
    assert r.usage.completion_tokens <= 16 and all(c.finish_reason for c in r.choices)
    # The same draw as the ensemble's with random_seed (temperature 1, top_p 1: the whole distribution).
    g = requests.post("http://%s/v2/models/ensemble/generate" % server.http_url, timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": 8, "temperature": 1.0, "top_p": 1.0,
                            "random_seed": 1234})
    assert g.status_code == 200, g.text
    assert g.json()["text_output"] == r.choices[0].text
    # Chat, streamed: chunks carry their choice's index; each choice's deltas add up to its text.
    chat = client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=6, temperature=0.8,
                                          seed=7, n=3)
    texts = {c.index: "" for c in chat.choices}
    finished = {}
    for ch in client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=6, temperature=0.8,
                                             seed=7, n=3, stream=True):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                assert c.index not in finished
                finished[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in chat.choices}
    assert finished == {c.index: c.finish_reason for c in chat.choices}


# ---- log-probs -------------------------------------------------------------------------------------------------

def triton_log_probs(server, ids, max_tokens):
    """output_ids and output_log_probs of the tensorrt_llm model (the Triton path) for one prompt."""
    c = httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    try:
        result = c.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, max_tokens, return_log_probs=True),
                         outputs=[httpclient.InferRequestedOutput(n) for n in ("output_ids", "output_log_probs")])
    finally:
        c.close()
    out = result.as_numpy("output_ids")[0, 0].tolist()
    lps = result.as_numpy("output_log_probs")[0, 0].tolist()
    return out, lps[:len(out)]


def test_completion_logprobs_equal_the_triton_path(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    gen, lps = triton_log_probs(server, ids, eh.MAX_TOKENS)
    r = client.completions.create(model="ensemble", prompt=eh.PROMPT, max_tokens=eh.MAX_TOKENS, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(gen) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs == pytest.approx(lps, abs=1e-6)
    if not any("\ufffd" in t for t in lp.tokens):  # a token holding part of a character shows U+FFFD
        assert "".join(lp.tokens) == r.choices[0].text
    for i, (tok, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        assert 1 <= len(top) <= 4
        assert top[tok] == value                    # the chosen token is always there, with its own value
        assert max(top.values()) == value           # greedy: the chosen token is the best
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
        assert lp.text_offset[i] == len("".join(lp.tokens[:i]))
    # logprobs=0: the chosen token only.
    r0 = client.completions.create(model="ensemble", prompt=eh.PROMPT, max_tokens=3, temperature=0, logprobs=0)
    assert all(len(t) == 1 for t in r0.choices[0].logprobs.top_logprobs)


def test_chat_logprobs_streamed_and_not(client, tokenizer, hf_tokenizers, server):
    ids = chat_prompt_ids(tokenizer, hf_tokenizers, MESSAGES)
    gen, lps = triton_log_probs(server, ids, 6)
    r = client.chat.completions.create(model="tensorrt_llm_bls", messages=MESSAGES, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert [e.logprob for e in content] == pytest.approx(lps, abs=1e-6)
    if not any("\ufffd" in e.token for e in content):
        assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.bytes == list(e.token.encode("utf-8"))
        assert len(e.top_logprobs) == 5
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6
    # Temperature: the log-probs are those of the distribution sampled (logits / T), as output_log_probs.
    streamed = []
    for ch in client.chat.completions.create(model="tensorrt_llm_bls", messages=MESSAGES, max_tokens=6,
                                             temperature=0, logprobs=True, top_logprobs=2, stream=True):
        if ch.choices and ch.choices[0].logprobs:
            streamed += ch.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == [e.logprob for e in content]
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs[:2]]
                                                                      for e in content]
    # logprobs off: none
    r = client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.choices[0].logprobs is None


# ---- errors ----------------------------------------------------------------------------------------------------

CHAT = dict(model="ensemble", messages=MESSAGES)
COMP = dict(model="ensemble", prompt=eh.PROMPT)
LONG_PROMPT = " ".join(["word"] * (MAX_INPUT_LEN + 20))

BAD = [
    # (endpoint, kwargs, param the error names)
    ("chat", dict(CHAT, n=0), "n"),
    ("chat", dict(CHAT, n=17), "n"),
    ("chat", dict(CHAT, max_tokens=0), "max_tokens"),
    ("chat", dict(CHAT, max_tokens=MAX_SEQ_LEN), "max_tokens"),
    ("chat", dict(CHAT, temperature=2.5), "temperature"),
    ("chat", dict(CHAT, top_p=0), "top_p"),
    ("chat", dict(CHAT, presence_penalty=2.5), "presence_penalty"),
    ("chat", dict(CHAT, frequency_penalty=-3), "frequency_penalty"),
    ("chat", dict(CHAT, logprobs=True, top_logprobs=21), "top_logprobs"),
    ("chat", dict(CHAT, stop=["a", "b", "c", "d", "e"]), "stop"),
    ("chat", dict(CHAT, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
    ("chat", dict(CHAT, response_format={"type": "json_object"}), "response_format"),
    ("chat", dict(CHAT, logit_bias={"1": 5}), "logit_bias"),
    ("chat", dict(CHAT, extra_body={"guided_json": {}}), "guided_json"),
    ("chat", dict(model="ensemble", messages=[]), "messages"),
    ("chat", dict(model="ensemble", messages=[{"role": "user", "content": LONG_PROMPT}]), "messages"),
    ("chat", dict(model="ensemble", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), "messages[0].content[0].type"),
    ("completions", dict(COMP, logprobs=6), "logprobs"),
    ("completions", dict(COMP, best_of=3), "best_of"),
    ("completions", dict(COMP, suffix="the end"), "suffix"),
    ("completions", dict(COMP, echo=True, logprobs=1), "echo"),
    ("completions", dict(model="ensemble", prompt=LONG_PROMPT), "prompt"),
    ("completions", dict(model="ensemble", prompt=[1, 2, 99999]), "prompt"),
]


def create(c, endpoint, kwargs):
    return (c.chat.completions if endpoint == "chat" else c.completions).create(**kwargs)


@pytest.mark.parametrize("endpoint,kwargs,param", BAD, ids=["%s-%s-%d" % (b[0], b[2], i) for i, b in enumerate(BAD)])
def test_bad_requests_are_refused_naming_the_field(client, server, endpoint, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        create(client, endpoint, kwargs)
    err = e.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.param == param, err.body
    assert isinstance(err.body, dict) and err.body["message"]
    raw = err.response.json()
    assert list(raw) == ["error"] and set(raw["error"]) == {"message", "type", "param", "code"}
    # Streaming asks are refused the same way, before any event.
    with pytest.raises(openai.BadRequestError):
        create(client, endpoint, dict(kwargs, stream=True))
    # ... and the server still serves.
    ok = client.completions.create(model="ensemble", prompt=eh.PROMPT, max_tokens=1, temperature=0)
    assert ok.choices[0].finish_reason == "length"
    assert server.alive()


def test_unknown_model_malformed_json_and_methods(client, server):
    for endpoint, kwargs in (("chat", dict(CHAT, model="gpt-4o")), ("completions", dict(COMP, model="nope")),
                             ("completions", dict(COMP, model="tensorrt_llm"))):
        with pytest.raises(openai.NotFoundError) as e:
            create(client, endpoint, kwargs)
        assert e.value.status_code == 404 and e.value.code == "model_not_found" and e.value.param == "model"
    base = "http://%s/v1" % server.http_url
    for body in (b"{", b"[]", b"", b'{"model": "ensemble", "model": "x", "prompt": "a"}'):
        r = requests.post(base + "/completions", data=body, headers={"Content-Type": "application/json"},
                          timeout=TIMEOUT)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json" and err["message"]
    r = requests.get(base + "/chat/completions", timeout=TIMEOUT)
    assert r.status_code == 405 and "error" in r.json()
    r = requests.post(base + "/embeddings", json={"model": "ensemble", "input": "x"}, timeout=TIMEOUT)
    assert r.status_code == 404 and "error" in r.json()
    assert client.completions.create(model="ensemble", prompt="x", max_tokens=1).choices
    assert server.alive()


# ---- disconnect ------------------------------------------------------------------------------------------------

def metric_values(server):
    text = requests.get("http://%s/metrics" % server.metrics_url, timeout=TIMEOUT).text
    out = {}
    for line in text.splitlines():
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels.get("model", ""), labels.get("kv_cache_block_type", labels.get("request_type", "")))] = \
                float(m.group(3))
    return out


def test_client_leaving_mid_stream_cancels(server):
    def used():
        return metric_values(server)[("nv_trt_llm_kv_cache_block_metrics", "tensorrt_llm", "used")]
    assert wait_for(lambda: used() == 0, timeout=30)
    before = metric_values(server)
    body = json.dumps({"model": "tensorrt_llm_bls", "prompt": "Hello there, how are", "max_tokens": 400,
                       "temperature": 0, "stream": True}).encode()
    host, port = server.http_url.split(":")
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while data.count(b"data:") < 3:
            part = s.recv(256)
            assert part, data
            data += part
        assert data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in data, data[:300]
        assert used() > 0
    finally:
        s.close()
    assert wait_for(lambda: used() == 0, timeout=10), "the request kept its KV-cache blocks"
    after = metric_values(server)

    def failures(m, model):
        return m[("nv_inference_request_failure", model, "")]
    # Counted as failed (cancelled) by the tensorrt_llm model and the text model it was asked of.
    assert wait_for(lambda: failures(metric_values(server), "tensorrt_llm") == failures(before, "tensorrt_llm") + 1)
    assert wait_for(lambda: failures(metric_values(server), "tensorrt_llm_bls") ==
                    failures(before, "tensorrt_llm_bls") + 1)
    assert after[("nv_trt_llm_request_metrics", "tensorrt_llm", "active")] == 0
    assert server.alive()
