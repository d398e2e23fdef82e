"""Every HTTP endpoint of docs/PROTOCOL.md's table against `kiln serve`, through the official client library
(tritonclient.http, JSON and binary tensor data) and plain requests where the library has no call (generate,
generate_stream over SSE, the metrics port), checking the values that come back: metadata and config against
the repository's config.pbtxt, output ids against `kiln run`, text against the Hugging Face tokenizer,
statistics and metrics against the requests sent.

run: .venv/bin/python -m pytest -q tests/server/python/test_endpoints_http.py
"""
import json
import os
import struct

import numpy as np
import pytest
import requests
import sseclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

import endpoint_helpers as eh
from conftest import Server, make_repo, wait_for

TIMEOUT = 60


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stream_client(stream_server):
    c = httpclient.InferenceServerClient(stream_server.http_url, network_timeout=TIMEOUT)
    yield c
    c.close()


@pytest.fixture(scope="module")
def explicit_server(workdir, engine_dir, tokenizer_dir):
    """A repository served with --model-control-mode explicit --load-model '*'."""
    repo = make_repo(os.path.join(workdir, "repo_explicit_http"), engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo, ["--model-control-mode", "explicit", "--load-model", "*"])
    yield s
    assert s.stop() == 0, s.log()


def url(server, path):
    return "http://%s%s" % (server.http_url, path)


def error_of(response):
    """The {"error": "..."} body of a failed request."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def sse_events(response):
    """The JSON objects of a text/event-stream response's `data:` events."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return [json.loads(e.data) for e in sseclient.SSEClient(response).events() if e.data]


# ---- health and server metadata --------------------------------------------------------------------------------

def test_server_live_and_ready(client, server, stream_client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert stream_client.is_server_ready() is True
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = requests.get(url(server, path), timeout=TIMEOUT)
        assert r.status_code == 200 and r.content == b""
        assert requests.post(url(server, path), timeout=TIMEOUT).status_code == 405


def test_server_metadata(client, server):
    md = client.get_server_metadata()
    assert md["name"] == "kiln"
    assert md["version"] and md["version"][0].isdigit()
    assert md["extensions"] and len(set(md["extensions"])) == len(md["extensions"])
    for e in ("model_repository", "model_configuration", "binary_tensor_data", "statistics", "logging", "generate"):
        assert e in md["extensions"], (e, md["extensions"])
    assert "system_shared_memory" not in md["extensions"]
    assert requests.get(url(server, "/v2"), timeout=TIMEOUT).json() == md


# ---- model metadata, readiness, configuration ------------------------------------------------------------------

@pytest.mark.parametrize("model", eh.MODELS)
def test_model_metadata_matches_config(client, server, model):
    config = eh.load_config(server.repo, model)
    inputs, outputs = eh.expected_metadata(config)
    md = client.get_model_metadata(model)
    assert md["name"] == model and md["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["outputs"]] == outputs
    if config.platform:
        assert md["platform"] == config.platform
    assert client.get_model_metadata(model, "1") == md
    assert requests.get(url(server, "/v2/models/%s/versions/1" % model), timeout=TIMEOUT).json() == md


def test_model_metadata_unknown_version_and_model(client, server):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("tensorrt_llm", "2")
    assert e.value.status() == "404" and "version" in e.value.message()
    r = requests.get(url(server, "/v2/models/tensorrt_llm/versions/2"), timeout=TIMEOUT)
    assert r.status_code == 404 and "version" in error_of(r)
    r = requests.get(url(server, "/v2/models/no_such_model"), timeout=TIMEOUT)
    assert r.status_code == 404 and "no_such_model" in error_of(r)
    r = requests.get(url(server, "/v2/models/tensorrt_llm/versions/one"), timeout=TIMEOUT)
    assert r.status_code == 400 and error_of(r)


def test_model_ready(client, server):
    for model in eh.MODELS:
        assert client.is_model_ready(model) is True
        assert client.is_model_ready(model, "1") is True
        r = requests.get(url(server, "/v2/models/%s/ready" % model), timeout=TIMEOUT)
        assert r.status_code == 200
    assert client.is_model_ready("tensorrt_llm", "2") is False
    assert client.is_model_ready("no_such_model") is False


@pytest.mark.parametrize("model", eh.MODELS)
def test_model_config_matches_config_pbtxt(client, server, model):
    want = eh.load_config(server.repo, model)
    got = client.get_model_config(model)
    assert got["name"] == model
    assert got["max_batch_size"] == want.max_batch_size
    assert got["backend"] == want.backend and got["platform"] == want.platform
    assert [i["name"] for i in got["input"]] == [i.name for i in want.input]
    assert [(i["data_type"], i["dims"], i["optional"]) for i in got["input"]] == \
        [(eh.model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in want.input]
    assert [o["name"] for o in got["output"]] == [o.name for o in want.output]
    assert got.get("model_transaction_policy", {}).get("decoupled", False) == want.model_transaction_policy.decoupled
    assert {k: v["string_value"] for k, v in got["parameters"].items()} == \
        {k: v.string_value for k, v in want.parameters.items()}
    # Everything else too: read back as a ModelConfig, the JSON is the config.pbtxt.
    assert json_format.ParseDict(got, eh.model_config_pb2.ModelConfig()) == want
    assert all(isinstance(d, int) for i in got["input"] for d in i["dims"])  # numbers, not strings
    assert client.get_model_config(model, "1") == got


def test_model_config_decoupled_policy(client, stream_client, server):
    assert client.get_model_config("tensorrt_llm")["model_transaction_policy"]["decoupled"] is False
    assert stream_client.get_model_config("tensorrt_llm")["model_transaction_policy"]["decoupled"] is True
    assert stream_client.get_model_config("tensorrt_llm_bls")["model_transaction_policy"]["decoupled"] is True
    r = requests.get(url(server, "/v2/models/tensorrt_llm/versions/7/config"), timeout=TIMEOUT)
    assert r.status_code == 404 and error_of(r)


# ---- infer: tensorrt_llm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_tensorrt_llm_matches_kiln_run(client, server, engine_dir, tokenizer, binary):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    ref = eh.reference_ids(engine_dir, ids, eh.MAX_TOKENS)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("output_ids", "sequence_length")]
    result = client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, eh.MAX_TOKENS, binary=binary),
                          outputs=outputs, request_id="trt-%s" % binary)
    response = result.get_response()
    assert response["model_name"] == "tensorrt_llm" and response["model_version"] == "1"
    assert response["id"] == "trt-%s" % binary
    for o in response["outputs"]:
        if binary:  # binary tensor extension: the size in parameters, the bytes after the JSON
            assert "data" not in o and o["parameters"]["binary_data_size"] > 0
        else:
            assert "data" in o and "parameters" not in o
    echo = eh.echoes_prompt(server.repo)
    assert echo is False  # `kiln repo init` sets exclude_input_in_output: true
    expected = (ids + ref) if echo else ref
    output_ids = result.as_numpy("output_ids")
    assert output_ids.dtype == np.int32 and output_ids.shape == (1, 1, len(expected))
    assert output_ids[0, 0].tolist() == expected
    assert result.as_numpy("sequence_length").tolist() == [[len(expected)]]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_tensorrt_llm_log_probs(client, server, engine_dir, tokenizer, binary):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    ref = eh.reference_run(engine_dir, ids, eh.MAX_TOKENS)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("output_ids", "cum_log_probs", "output_log_probs")]
    result = client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, eh.MAX_TOKENS, binary=binary,
                                                          return_log_probs=True), outputs=outputs)
    gen = ref["output_ids"]
    assert result.as_numpy("output_ids")[0, 0].tolist() == gen
    cum, lps = result.as_numpy("cum_log_probs"), result.as_numpy("output_log_probs")
    assert cum.dtype == np.float32 and cum.shape == (1, 1)
    assert lps.dtype == np.float32 and lps.shape == (1, 1, len(gen))
    assert np.all(lps <= 0)
    assert cum[0, 0] == pytest.approx(float(lps.sum(dtype=np.float64)), rel=1e-4, abs=1e-3)
    assert lps[0, 0].tolist() == pytest.approx(ref["log_probs"], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_infer_compressed_request(client, server, engine_dir, tokenizer, algorithm):
    """tritonclient.http's request compression (Content-Encoding gzip / deflate)."""
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    result = client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, 5, binary=True),
                          request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    assert result.as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 5)


def test_infer_raw_json_request(server, engine_dir, tokenizer):
    """The JSON form written by hand (nested data arrays), no client library."""
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
    body = {"id": "raw-json",
            "inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)], "data": [ids]},
                       {"name": "input_lengths", "datatype": "INT32", "shape": [1, 1], "data": [[len(ids)]]},
                       {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [5]}],
            "outputs": [{"name": "output_ids"}]}
    r = requests.post(url(server, "/v2/models/tensorrt_llm/versions/1/infer"), json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    reply = r.json()
    assert reply["id"] == "raw-json" and reply["model_name"] == "tensorrt_llm"
    ref = eh.reference_ids(engine_dir, ids, 5)
    assert reply["outputs"] == [{"name": "output_ids", "datatype": "INT32", "shape": [1, 1, len(ref)], "data": ref}]


def test_infer_raw_binary_request(server, engine_dir, tokenizer):
    """The binary tensor extension written by hand: Inference-Header-Content-Length on the way in and out."""
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
    raw_ids = np.array(ids, dtype="<i4").tobytes()
    header = {"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)],
                          "parameters": {"binary_data_size": len(raw_ids)}},
                         {"name": "input_lengths", "datatype": "INT32", "shape": [1, 1], "data": [len(ids)]},
                         {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [5]}],
              "outputs": [{"name": "output_ids", "parameters": {"binary_data": True}},
                          {"name": "sequence_length", "parameters": {"binary_data": False}}]}
    head = json.dumps(header).encode()
    r = requests.post(url(server, "/v2/models/tensorrt_llm/infer"), data=head + raw_ids, timeout=TIMEOUT,
                      headers={"Inference-Header-Content-Length": str(len(head)),
                               "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    reply = json.loads(r.content[:n])
    out = {o["name"]: o for o in reply["outputs"]}
    ref = eh.reference_ids(engine_dir, ids, 5)
    assert out["output_ids"]["shape"] == [1, 1, len(ref)]
    assert out["output_ids"]["parameters"]["binary_data_size"] == 4 * len(ref) == len(r.content) - n
    assert list(struct.unpack("<%di" % len(ref), r.content[n:])) == ref
    assert out["sequence_length"]["data"] == [len(ref)]


def test_infer_binary_data_output_parameter(server, engine_dir, tokenizer):
    """"parameters": {"binary_data_output": true} with no outputs named: every output comes back binary."""
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    body = {"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)], "data": ids},
                       {"name": "input_lengths", "datatype": "INT32", "shape": [1, 1], "data": [len(ids)]},
                       {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [3]}],
            "parameters": {"binary_data_output": True}}
    r = requests.post(url(server, "/v2/models/tensorrt_llm/infer"), json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    outputs = json.loads(r.content[:n])["outputs"]
    assert [o["name"] for o in outputs] == ["output_ids", "sequence_length"]
    assert all("data" not in o for o in outputs)
    ref = eh.reference_ids(engine_dir, ids, 3)
    sizes = [o["parameters"]["binary_data_size"] for o in outputs]
    assert sizes == [4 * len(ref), 4] and sum(sizes) == len(r.content) - n
    assert list(struct.unpack("<%di" % (len(ref) + 1), r.content[n:])) == ref + [len(ref)]


def test_infer_unknown_requested_output_is_refused(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, 3, binary=True),
                     outputs=[httpclient.InferRequestedOutput("no_such_output")])
    assert e.value.status() == "400" and "no_such_output" in e.value.message()


def test_infer_errors(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, 4, binary=True, drop=("request_output_len",)))
    assert e.value.status() == "400" and "request_output_len" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("no_such_model", eh.token_inputs(httpclient, ids, 4, binary=False))
    assert e.value.status() == "404"
    r = requests.post(url(server, "/v2/models/tensorrt_llm/infer"), data=b"{not json", timeout=TIMEOUT)
    assert r.status_code == 400 and "JSON" in error_of(r)
    r = requests.get(url(server, "/v2/models/tensorrt_llm/infer"), timeout=TIMEOUT)
    assert r.status_code == 405


# ---- infer: the text models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_infer_text_models(client, server, engine_dir, tokenizer, model, binary):
    _, gen, text = eh.reference_text(engine_dir, tokenizer, server.repo, eh.PROMPT, eh.MAX_TOKENS)
    result = client.infer(model, eh.text_inputs(httpclient, eh.PROMPT, eh.MAX_TOKENS, binary=binary),
                          outputs=[httpclient.InferRequestedOutput("text_output", binary_data=binary)])
    out = result.as_numpy("text_output")
    assert out.shape == (1,)
    got = out[0].decode("utf-8") if isinstance(out[0], bytes) else out[0]
    assert got == text
    assert not got.startswith(eh.PROMPT)


def test_infer_preprocessing(client, server, tokenizer):
    add_special = eh.config_bool(eh.load_config(server.repo, "preprocessing"), "add_special_tokens", False)
    stops = ["quick", "lazy dog"]
    result = client.infer("preprocessing", eh.preprocessing_inputs(httpclient, eh.PROMPT_2, 9, stop_words=stops,
                                                                   binary=False))
    ids = tokenizer.encode(eh.PROMPT_2, add_special_tokens=add_special)
    assert result.as_numpy("INPUT_ID").tolist() == [ids]
    assert result.as_numpy("REQUEST_INPUT_LEN").tolist() == [[len(ids)]]
    assert result.as_numpy("REQUEST_OUTPUT_LEN").tolist() == [[9]]
    assert result.as_numpy("OUT_END_ID").tolist() == [[tokenizer.eos_token_id]]
    assert result.as_numpy("STOP_WORDS_IDS").tolist() == [eh.word_list(tokenizer, stops)]


def test_infer_postprocessing(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    gen = eh.reference_ids(engine_dir, ids, eh.MAX_TOKENS)
    result = client.infer("postprocessing", eh.postprocessing_inputs(httpclient, [gen], [len(gen)], binary=True))
    assert result.as_numpy("OUTPUT")[0].decode("utf-8") == tokenizer.decode(gen, skip_special_tokens=True)


def test_plain_infer_on_a_decoupled_model_is_refused(stream_client, stream_server, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT)
    for model, inputs in (("tensorrt_llm", eh.token_inputs(httpclient, ids, 3, binary=True)),
                          ("tensorrt_llm_bls", eh.text_inputs(httpclient, eh.PROMPT, 3, binary=False))):
        with pytest.raises(InferenceServerException) as e:
            stream_client.infer(model, inputs)
        assert e.value.status() == "400"
        assert "decoupled" in e.value.message() and "generate_stream" in e.value.message()


# ---- generate and generate_stream --------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_generate_text(server, engine_dir, tokenizer, model):
    _, _, text = eh.reference_text(engine_dir, tokenizer, server.repo, eh.PROMPT, eh.MAX_TOKENS)
    r = requests.post(url(server, "/v2/models/%s/generate" % model), timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": eh.MAX_TOKENS, "id": "g-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": model, "model_version": "1", "id": "g-1", "text_output": text}


def test_generate_token_level_and_errors(server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    ref = eh.reference_ids(engine_dir, ids, 6)
    r = requests.post(url(server, "/v2/models/tensorrt_llm/generate"), timeout=TIMEOUT,
                      json={"input_ids": ids, "input_lengths": len(ids), "request_output_len": 6})
    assert r.status_code == 200, r.text
    assert r.json()["output_ids"] == ref and r.json()["sequence_length"] == len(ref)
    # Inputs may also travel in "parameters", as Triton's generate extension allows.
    r = requests.post(url(server, "/v2/models/ensemble/generate"), timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT_2, "parameters": {"max_tokens": eh.MAX_TOKENS}})
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == eh.reference_text(engine_dir, tokenizer, server.repo, eh.PROMPT_2,
                                                        eh.MAX_TOKENS)[2]
    r = requests.post(url(server, "/v2/models/ensemble/generate"), timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": 4, "no_such_input": 1})
    assert r.status_code == 400 and "no_such_input" in error_of(r)
    r = requests.post(url(server, "/v2/models/no_such_model/generate"), timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": 4})
    assert r.status_code == 404


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
def test_generate_stream_text_deltas(server, stream_server, engine_dir, tokenizer, model):
    _, gen, text = eh.reference_text(engine_dir, tokenizer, stream_server.repo, eh.PROMPT, eh.MAX_TOKENS)
    body = {"text_input": eh.PROMPT, "max_tokens": eh.MAX_TOKENS}
    with requests.post(url(stream_server, "/v2/models/%s/generate_stream" % model), timeout=TIMEOUT, stream=True,
                       json=dict(body, stream=True)) as r:
        events = sse_events(r)
    assert all("error" not in e for e in events), events
    assert all(e["model_name"] == model for e in events)
    deltas = [e["text_output"] for e in events if "text_output" in e]
    assert 1 < len(deltas) <= len(gen)  # streamed: at most one event per token (whole characters only)
    assert "".join(deltas) == text
    # The non-streaming generate of the same request (the non-decoupled server, same engine) says the same.
    full = requests.post(url(server, "/v2/models/%s/generate" % model), json=body, timeout=TIMEOUT).json()
    assert full["text_output"] == "".join(deltas)


def test_generate_stream_token_level(stream_server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT_3)
    ref = eh.reference_ids(engine_dir, ids, 6)
    with requests.post(url(stream_server, "/v2/models/tensorrt_llm/generate_stream"), timeout=TIMEOUT, stream=True,
                       json={"input_ids": ids, "input_lengths": len(ids), "request_output_len": 6,
                             "streaming": True}) as r:
        events = sse_events(r)
    assert [e["output_ids"] for e in events] == ref


def test_generate_stream_on_a_non_decoupled_model_sends_one_event(server, engine_dir, tokenizer):
    _, _, text = eh.reference_text(engine_dir, tokenizer, server.repo, eh.PROMPT_2, eh.MAX_TOKENS)
    with requests.post(url(server, "/v2/models/ensemble/generate_stream"), timeout=TIMEOUT, stream=True,
                       json={"text_input": eh.PROMPT_2, "max_tokens": eh.MAX_TOKENS}) as r:
        events = sse_events(r)
    assert events == [{"model_name": "ensemble", "model_version": "1", "text_output": text}]


def test_generate_stream_client_gone_cancels(stream_client, stream_server, tokenizer):
    """A client that closes the connection mid-stream cancels its request: generation stops early, the
    tensorrt_llm call counts as a failure, and nothing stays pending."""
    metrics_url = "http://%s/metrics" % stream_server.metrics_url
    labels = {"model": "tensorrt_llm", "version": "1"}

    def state():
        trt = stream_client.get_inference_statistics("tensorrt_llm")["model_stats"][0]["inference_stats"]
        bls = stream_client.get_inference_statistics("tensorrt_llm_bls")["model_stats"][0]["inference_stats"]
        m = eh.parse_metrics(requests.get(metrics_url, timeout=TIMEOUT).text)
        return {"trt_ok": trt["success"]["count"], "trt_fail": trt["fail"]["count"],
                "bls_done": bls["success"]["count"] + bls["fail"]["count"],
                "pending": eh.metric(m, "nv_inference_pending_request_count", **labels),
                "tokens": eh.metric(m, "nv_llm_output_token_len_sum", **labels)}

    before = state()
    long_run = 400
    r = requests.post(url(stream_server, "/v2/models/tensorrt_llm_bls/generate_stream"), timeout=TIMEOUT,
                      stream=True, json={"text_input": eh.PROMPT_2, "max_tokens": long_run, "stream": True})
    assert r.status_code == 200
    first = next(r.iter_lines())
    assert first.startswith(b"data: ") and "text_output" in json.loads(first[6:])
    r.close()

    def ended():
        now = state()
        return now if now["trt_ok"] + now["trt_fail"] > before["trt_ok"] + before["trt_fail"] and \
            now["bls_done"] > before["bls_done"] and now["pending"] == 0 else None

    after = wait_for(ended, timeout=30)
    assert after, (before, state())
    assert after["trt_fail"] - before["trt_fail"] == 1 and after["trt_ok"] == before["trt_ok"], (before, after)
    assert after["tokens"] - before["tokens"] < long_run
    assert stream_server.alive()


def test_generate_on_a_decoupled_model_is_refused(stream_server):
    r = requests.post(url(stream_server, "/v2/models/tensorrt_llm_bls/generate"), timeout=TIMEOUT,
                      json={"text_input": eh.PROMPT, "max_tokens": 4})
    assert r.status_code == 400 and "generate_stream" in error_of(r)


# ---- statistics --------------------------------------------------------------------------------------------------

def _stats(client, model, version=""):
    stats = client.get_inference_statistics(model, version)["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == model and stats[0]["version"] == "1"
    return stats[0]


def test_statistics_count_requests(client, server, engine_dir, tokenizer):
    before = _stats(client, "postprocessing")
    n = 4
    for k in range(n):
        client.infer("postprocessing", eh.postprocessing_inputs(httpclient, [[415 + k, 2936]], binary=k % 2 == 0))
    after = _stats(client, "postprocessing", "1")
    success = lambda s: s["inference_stats"]["success"]["count"]  # noqa: E731
    assert success(after) - success(before) == n
    assert after["inference_count"] - before["inference_count"] == n
    assert after["execution_count"] - before["execution_count"] == n
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"]
    raw = requests.get(url(server, "/v2/models/postprocessing/versions/1/stats"), timeout=TIMEOUT).json()
    assert raw["model_stats"][0]["inference_count"] == after["inference_count"]
    with pytest.raises(InferenceServerException):
        client.infer("postprocessing", eh.postprocessing_inputs(httpclient, [[415]], [-1], binary=False))
    failed = _stats(client, "postprocessing")
    assert failed["inference_stats"]["fail"]["count"] - after["inference_stats"]["fail"]["count"] == 1
    assert success(failed) == success(after)


def test_statistics_all_models_and_unknown(client, server):
    stats = client.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in stats) == list(eh.MODELS)
    raw = requests.get(url(server, "/v2/models/stats"), timeout=TIMEOUT).json()
    assert sorted(s["name"] for s in raw["model_stats"]) == list(eh.MODELS)
    r = requests.get(url(server, "/v2/models/no_such_model/stats"), timeout=TIMEOUT)
    assert r.status_code == 404 and error_of(r)


# ---- repository --------------------------------------------------------------------------------------------------

def test_repository_index_lists_every_model_ready(client, server):
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [(m, "1", "READY") for m in eh.MODELS]
    r = requests.post(url(server, "/v2/repository/index"), json={"ready": True}, timeout=TIMEOUT)
    assert r.status_code == 200 and [m["name"] for m in r.json()] == list(eh.MODELS)


def test_repository_unload_and_load_in_explicit_mode(explicit_server, engine_dir, tokenizer):
    c = httpclient.InferenceServerClient(explicit_server.http_url, network_timeout=TIMEOUT)
    try:
        states = lambda: {m["name"]: m for m in c.get_model_repository_index()}  # noqa: E731
        assert {n: m["state"] for n, m in states().items()} == {m: "READY" for m in eh.MODELS}
        rows = [eh.encode_prompt(tokenizer, explicit_server.repo, eh.PROMPT)]
        decoded = tokenizer.decode(rows[0], skip_special_tokens=True)
        out = c.infer("postprocessing", eh.postprocessing_inputs(httpclient, rows, binary=False))
        assert out.as_numpy("OUTPUT")[0].decode() == decoded

        c.unload_model("postprocessing")
        index = states()
        assert index["postprocessing"]["state"] == "UNAVAILABLE" and index["postprocessing"].get("reason")
        assert index["preprocessing"]["state"] == "READY"
        assert c.is_model_ready("postprocessing") is False
        assert c.is_server_ready() is True
        with pytest.raises(InferenceServerException) as e:
            c.infer("postprocessing", eh.postprocessing_inputs(httpclient, rows, binary=False))
        assert e.value.status() in ("404", "503")
        ready_only = requests.post(url(explicit_server, "/v2/repository/index"), json={"ready": True},
                                   timeout=TIMEOUT).json()
        assert [m["name"] for m in ready_only] == [m for m in eh.MODELS if m != "postprocessing"]

        c.load_model("postprocessing")
        assert states()["postprocessing"]["state"] == "READY" and c.is_model_ready("postprocessing") is True
        out = c.infer("postprocessing", eh.postprocessing_inputs(httpclient, rows, binary=True))
        assert out.as_numpy("OUTPUT")[0].decode() == decoded

        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert e.value.status() == "404"
        with pytest.raises(InferenceServerException) as e:  # a config override from the network: refused
            c.load_model("postprocessing", config=json.dumps({"max_batch_size": 1}))
        assert e.value.status() == "400"
        assert c.get_model_config("postprocessing")["max_batch_size"] == 8
    finally:
        c.close()
    assert explicit_server.alive()


def test_repository_load_refused_in_mode_none(server):
    r = requests.post(url(server, "/v2/repository/models/postprocessing/load"), timeout=TIMEOUT)
    assert r.status_code in (400, 503), r.status_code  # a reload if kiln accepts it (harmless)


# ---- logging settings --------------------------------------------------------------------------------------------

def test_log_settings(client, server):
    settings = client.get_log_settings()
    assert settings == {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                        "log_verbose_level": settings["log_verbose_level"], "log_format": "default"}
    level = settings["log_verbose_level"]
    assert level == 0
    try:
        reply = client.update_log_settings({"log_verbose_level": 1})
        assert reply["log_verbose_level"] == 1
        assert client.get_log_settings()["log_verbose_level"] == 1
        assert requests.get(url(server, "/v2/logging"), timeout=TIMEOUT).json()["log_verbose_level"] == 1
        # It takes effect: at level 1 the HTTP frontend logs each request.
        requests.get(url(server, "/v2/health/live?probe=verbose"), timeout=TIMEOUT)
        assert wait_for(lambda: "kiln http: GET /v2/health/live" in server.log(), timeout=10), server.log()[-2000:]
    finally:
        client.update_log_settings({"log_verbose_level": level})
    assert client.get_log_settings()["log_verbose_level"] == level


def test_log_file_from_the_network_is_refused(client, server):
    path = "/tmp/kiln-endpoint-test-http.log"
    with pytest.raises(InferenceServerException) as e:
        client.update_log_settings({"log_file": path})
    assert e.value.status() == "400" and "log file" in e.value.message()
    r = requests.post(url(server, "/v2/logging"), json={"log_file": path, "log_verbose_level": 3}, timeout=TIMEOUT)
    assert r.status_code == 400 and error_of(r)
    assert not os.path.exists(path)
    assert client.get_log_settings()["log_file"] == ""
    assert client.get_log_settings()["log_verbose_level"] == 0  # nothing of the refused request was applied


# ---- shared memory -----------------------------------------------------------------------------------------------

def test_shared_memory_calls_are_unsupported(client):
    calls = eh.shared_memory_calls(client)
    for what, call in calls.items():
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "400", what
        assert "shared memory" in e.value.message() and "not supported" in e.value.message(), what


def test_infer_with_a_shared_memory_input_is_refused(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    inputs = eh.token_inputs(httpclient, ids, 4, binary=False)
    inputs[0] = httpclient.InferInput("input_ids", [1, len(ids)], "INT32")
    inputs[0].set_shared_memory("region", 4 * len(ids))
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", inputs)
    assert e.value.status() == "400" and "shared memory" in e.value.message()


# ---- metrics -----------------------------------------------------------------------------------------------------

def test_metrics(client, server, engine_dir, tokenizer):
    metrics_url = "http://%s/metrics" % server.metrics_url
    labels = {"model": "tensorrt_llm", "version": "1"}
    before = eh.parse_metrics(requests.get(metrics_url, timeout=TIMEOUT).text)
    n, generated = 3, 0
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
    for k in range(n):
        result = client.infer("tensorrt_llm", eh.token_inputs(httpclient, ids, 4 + k, binary=k == 1))
        assert result.as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 4 + k)
        generated += int(result.as_numpy("sequence_length")[0, 0])
    r = requests.get(metrics_url, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    after = eh.parse_metrics(r.text)

    success = eh.metric(after, "nv_inference_request_success", **labels)
    assert success is not None and success >= n
    assert success - eh.metric(before, "nv_inference_request_success", **labels) == n
    for model in eh.MODELS:  # every model has the Triton core counters
        assert eh.metric(after, "nv_inference_request_success", model=model, version="1") is not None
        assert eh.metric(after, "nv_inference_request_failure", model=model, version="1") is not None

    kv = {dict(k)["kv_cache_block_type"]: v
          for k, v in eh.metric_series(after, "nv_trt_llm_kv_cache_block_metrics", **labels).items()}
    assert set(kv) == {"max", "free", "used", "tokens_per", "reused", "fraction"}, kv
    assert kv["max"] > 0 and kv["tokens_per"] > 0
    assert kv["free"] + kv["used"] == kv["max"]
    assert kv["fraction"] == pytest.approx(kv["used"] / kv["max"])
    requests_by_type = {dict(k)["request_type"]
                        for k in eh.metric_series(after, "nv_trt_llm_request_metrics", **labels)}
    assert {"active", "max", "scheduled", "context", "waiting"} <= requests_by_type

    ttft, ttft_sum = eh.check_histogram(after, "kiln_time_to_first_token_ms", **labels)
    itl, _ = eh.check_histogram(after, "kiln_inter_token_latency_ms", **labels)
    assert ttft - eh.check_histogram(before, "kiln_time_to_first_token_ms", **labels)[0] == n
    assert itl - eh.check_histogram(before, "kiln_inter_token_latency_ms", **labels)[0] == generated - n
    assert ttft_sum > 0
    assert "# TYPE kiln_time_to_first_token_ms histogram" in r.text
    assert "# TYPE kiln_inter_token_latency_ms histogram" in r.text
    eh.check_histogram(after, "nv_llm_input_token_len", **labels)
    eh.check_histogram(after, "nv_llm_output_token_len", **labels)

    assert requests.get("http://%s/v2/health/live" % server.metrics_url, timeout=TIMEOUT).status_code == 404
