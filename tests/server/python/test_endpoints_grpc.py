"""Every gRPC endpoint of docs/PROTOCOL.md's table against `kiln serve`, through the official client library
(tritonclient.grpc) and grpcio's standard health service, checking the values that come back: metadata against
the repository's config.pbtxt, output ids against `kiln run`, text against the Hugging Face tokenizer,
statistics and metrics against the requests sent.

run: .venv/bin/python -m pytest -q tests/server/python/test_endpoints_grpc.py
"""
import os
import queue
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import endpoint_helpers as eh
from conftest import Server, make_repo, wait_for

TIMEOUT = 60  # seconds for any one call; the fixture model answers in milliseconds


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stream_client(stream_server):
    c = grpcclient.InferenceServerClient(stream_server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def explicit_server(workdir, engine_dir, tokenizer_dir):
    """A repository served with --model-control-mode explicit, only preprocessing and postprocessing loaded at
    start (the repository API loads the rest)."""
    repo = make_repo(os.path.join(workdir, "repo_explicit_grpc"), engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo, ["--model-control-mode", "explicit", "--load-model", "preprocessing",
                      "--load-model", "postprocessing"])
    yield s
    assert s.stop() == 0, s.log()


def status_of(exc_info):
    return str(exc_info.value.status())


class Stream:
    """One ModelStreamInfer stream: responses (or errors) land in a queue, in order."""

    def __init__(self, url):
        self.client = grpcclient.InferenceServerClient(url)
        self.queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.queue.put((result, error)))

    def send(self, model, inputs, request_id, **kw):
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True, **kw)

    def collect(self):
        """The responses of one request, up to the one flagged final; an error ends it (and is returned)."""
        responses = []
        while True:
            result, error = self.queue.get(timeout=TIMEOUT)
            if error is not None:
                return responses, error
            responses.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return responses, None

    def close(self):
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(stream_server):
    s = Stream(stream_server.grpc_url)
    yield s
    s.close()


# ---- health and server metadata --------------------------------------------------------------------------------

def test_server_live_and_ready(client, stream_client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert stream_client.is_server_live() is True
    assert stream_client.is_server_ready() is True


def test_server_metadata(client):
    md = client.get_server_metadata()
    assert md.name == "kiln"
    assert md.version and md.version[0].isdigit(), md.version
    extensions = list(md.extensions)
    assert extensions, "no extensions listed"
    assert len(set(extensions)) == len(extensions), extensions
    for e in ("model_repository", "model_configuration", "binary_tensor_data", "statistics", "logging"):
        assert e in extensions, (e, extensions)
    # Shared memory is refused, so it is not advertised.
    assert "system_shared_memory" not in extensions and "cuda_shared_memory" not in extensions
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "kiln" and as_json["extensions"] == extensions


def _health(url, service):
    """grpc.health.v1.Health/Check -> (status enum value, None) or (None, grpc.StatusCode)."""
    channel = grpc.insecure_channel(url)
    try:
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:  # grpcio-health-checking not installed: the same call with the message hand-encoded
            data = service.encode()
            request = b"\x0a" + bytes([len(data)]) + data if data else b""
            call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda x: x,
                                       response_deserializer=lambda x: x)
            try:
                reply = call(request, timeout=TIMEOUT)
            except grpc.RpcError as e:
                return None, e.code()
            return (reply[1] if reply[:1] == b"\x08" else 0), None
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status, None
        except grpc.RpcError as e:
            return None, e.code()
    finally:
        channel.close()


def test_standard_grpc_health_service(server, stream_server):
    SERVING = 1
    assert _health(server.grpc_url, "") == (SERVING, None)
    assert _health(server.grpc_url, "inference.GRPCInferenceService") == (SERVING, None)
    assert _health(stream_server.grpc_url, "") == (SERVING, None)
    assert _health(server.grpc_url, "no.such.Service") == (None, grpc.StatusCode.NOT_FOUND)


# ---- model metadata, readiness, configuration ------------------------------------------------------------------

@pytest.mark.parametrize("model", eh.MODELS)
def test_model_metadata_matches_config(client, server, model):
    config = eh.load_config(server.repo, model)
    inputs, outputs = eh.expected_metadata(config)
    md = client.get_model_metadata(model)
    assert md.name == model
    assert list(md.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == outputs
    if config.platform:
        assert md.platform == config.platform
    # With the version named explicitly: the same answer.
    assert client.get_model_metadata(model, "1") == md


def test_model_metadata_of_tensorrt_llm_has_the_contract_tensors(client):
    md = client.get_model_metadata("tensorrt_llm")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in md.inputs}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in md.outputs}
    assert inputs["input_ids"] == ("INT32", [-1, -1])
    assert inputs["input_lengths"] == ("INT32", [-1, 1])
    assert inputs["request_output_len"] == ("INT32", [-1, 1])
    assert inputs["streaming"][0] == "BOOL" and inputs["random_seed"][0] == "UINT64"
    assert outputs["output_ids"] == ("INT32", [-1, -1, -1])
    assert outputs["sequence_length"] == ("INT32", [-1, -1])
    assert outputs["cum_log_probs"] == ("FP32", [-1, -1])
    assert outputs["output_log_probs"] == ("FP32", [-1, -1, -1])


def test_model_metadata_unknown_version_and_model(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("tensorrt_llm", "2")
    assert status_of(e) == "StatusCode.NOT_FOUND"
    assert "version" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert status_of(e) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in e.value.message()


def test_model_ready(client):
    for model in eh.MODELS:
        assert client.is_model_ready(model) is True
        assert client.is_model_ready(model, "1") is True
    assert client.is_model_ready("tensorrt_llm", "2") is False
    assert client.is_model_ready("no_such_model") is False


@pytest.mark.parametrize("model", eh.MODELS)
def test_model_config_matches_config_pbtxt(client, server, model):
    want = eh.load_config(server.repo, model)
    got = client.get_model_config(model).config
    assert got.name == model
    assert got.max_batch_size == want.max_batch_size
    assert got.backend == want.backend and got.platform == want.platform
    assert [i.name for i in got.input] == [i.name for i in want.input]
    assert [(i.data_type, list(i.dims), i.optional) for i in got.input] == \
        [(i.data_type, list(i.dims), i.optional) for i in want.input]
    assert [o.name for o in got.output] == [o.name for o in want.output]
    assert got.model_transaction_policy.decoupled == want.model_transaction_policy.decoupled
    assert dict((k, v.string_value) for k, v in got.parameters.items()) == \
        dict((k, v.string_value) for k, v in want.parameters.items())
    assert got == want  # nothing else added or lost either
    assert client.get_model_config(model, "1").config == got


def test_model_config_decoupled_policy(client, stream_client):
    assert client.get_model_config("tensorrt_llm").config.model_transaction_policy.decoupled is False
    assert stream_client.get_model_config("tensorrt_llm").config.model_transaction_policy.decoupled is True
    assert stream_client.get_model_config("tensorrt_llm_bls").config.model_transaction_policy.decoupled is True
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("tensorrt_llm", "7")
    assert status_of(e) == "StatusCode.NOT_FOUND"


# ---- infer: tensorrt_llm -----------------------------------------------------------------------------------------

def test_infer_tensorrt_llm_matches_kiln_run(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    ref = eh.reference_ids(engine_dir, ids, eh.MAX_TOKENS)
    result = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, eh.MAX_TOKENS), request_id="trt-1",
                          client_timeout=TIMEOUT)
    response = result.get_response()
    assert response.model_name == "tensorrt_llm" and response.model_version == "1"
    assert response.id == "trt-1"
    echo = eh.echoes_prompt(server.repo)
    assert echo is False  # `kiln repo init` sets exclude_input_in_output: true
    expected = (ids + ref) if echo else ref
    output_ids = result.as_numpy("output_ids")
    assert output_ids.dtype == np.int32
    assert output_ids.shape == (1, 1, len(expected))  # [batch, beam, len]
    assert output_ids[0, 0].tolist() == expected
    seq = result.as_numpy("sequence_length")
    assert seq.shape == (1, 1) and seq[0, 0] == len(expected)
    # Log-prob outputs only come when asked for.
    assert result.as_numpy("cum_log_probs") is None


def test_infer_tensorrt_llm_log_probs(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    ref = eh.reference_run(engine_dir, ids, eh.MAX_TOKENS)
    outputs = [grpcclient.InferRequestedOutput(n)
               for n in ("output_ids", "sequence_length", "cum_log_probs", "output_log_probs")]
    result = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, eh.MAX_TOKENS, return_log_probs=True),
                          outputs=outputs, client_timeout=TIMEOUT)
    gen = ref["output_ids"]
    assert result.as_numpy("output_ids")[0, 0].tolist() == gen
    cum = result.as_numpy("cum_log_probs")
    lps = result.as_numpy("output_log_probs")
    assert cum.dtype == np.float32 and cum.shape == (1, 1)
    assert lps.dtype == np.float32 and lps.shape == (1, 1, len(gen))
    assert np.all(lps <= 0)
    assert cum[0, 0] == pytest.approx(float(lps.sum(dtype=np.float64)), rel=1e-4, abs=1e-3)
    assert lps[0, 0].tolist() == pytest.approx(ref["log_probs"], rel=1e-4, abs=1e-4)


def test_infer_requested_outputs_only(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    result = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4),
                          outputs=[grpcclient.InferRequestedOutput("sequence_length")], client_timeout=TIMEOUT)
    names = [o.name for o in result.get_response().outputs]
    assert names == ["sequence_length"]
    assert result.as_numpy("sequence_length")[0, 0] == len(eh.reference_ids(engine_dir, ids, 4))


def test_infer_unknown_requested_output_is_refused(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 3),
                     outputs=[grpcclient.InferRequestedOutput("no_such_output")], client_timeout=TIMEOUT)
    assert status_of(e) == "StatusCode.INVALID_ARGUMENT" and "no_such_output" in e.value.message()


def test_infer_compressed(client, server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    result = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 5), compression_algorithm="gzip",
                          client_timeout=TIMEOUT)
    assert result.as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 5)


def test_infer_typed_contents(server, engine_dir, tokenizer):
    """ModelInfer with the elements in InferTensorContents (not raw_input_contents), through the generated stub
    that tritonclient ships."""
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
    request = service_pb2.ModelInferRequest(model_name="tensorrt_llm", id="typed")
    for name, values in (("input_ids", ids), ("input_lengths", [len(ids)]), ("request_output_len", [5])):
        t = request.inputs.add(name=name, datatype="INT32", shape=[1, len(values)])
        t.contents.int_contents.extend(values)
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT)
    finally:
        channel.close()
    assert reply.id == "typed"
    out = {o.name: (list(o.shape), raw) for o, raw in zip(reply.outputs, reply.raw_output_contents)}
    shape, raw = out["output_ids"]
    ref = eh.reference_ids(engine_dir, ids, 5)
    assert shape == [1, 1, len(ref)]
    assert np.frombuffer(raw, dtype="<i4").tolist() == ref


def test_infer_errors(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4, drop=("request_output_len",)))
    assert status_of(e) == "StatusCode.INVALID_ARGUMENT"
    assert "request_output_len" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("no_such_model", eh.token_inputs(grpcclient, ids, 4))
    assert status_of(e) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4), model_version="3")
    assert status_of(e) == "StatusCode.NOT_FOUND"


# ---- infer: the text models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_infer_text_models(client, server, engine_dir, tokenizer, model):
    prompt_ids, gen, text = eh.reference_text(engine_dir, tokenizer, server.repo, eh.PROMPT, eh.MAX_TOKENS)
    result = client.infer(model, eh.text_inputs(grpcclient, eh.PROMPT, eh.MAX_TOKENS), request_id="t-" + model,
                          client_timeout=TIMEOUT)
    assert result.get_response().id == "t-" + model
    out = result.as_numpy("text_output")
    assert out.shape == (1,)
    got = out[0].decode("utf-8")
    assert got == text
    assert not got.startswith(eh.PROMPT)  # the prompt is not echoed
    # PROMPT's first generated token carries a SentencePiece space: kept, so prompt + text reads right.
    assert tokenizer.convert_ids_to_tokens(gen[:1])[0].startswith("\u2581") == got.startswith(" ")


def test_infer_ensemble_batch_of_two(client, server, engine_dir, tokenizer):
    prompts = [eh.PROMPT_2, eh.PROMPT_3]
    want = [eh.reference_text(engine_dir, tokenizer, server.repo, p, eh.MAX_TOKENS)[2] for p in prompts]
    result = client.infer("ensemble", eh.text_inputs(grpcclient, prompts, eh.MAX_TOKENS), client_timeout=TIMEOUT)
    assert [t.decode("utf-8") for t in result.as_numpy("text_output")] == want


def test_infer_preprocessing(client, server, tokenizer):
    config = eh.load_config(server.repo, "preprocessing")
    add_special = eh.config_bool(config, "add_special_tokens", False)
    stops = ["brown fox", "dog"]
    result = client.infer("preprocessing", eh.preprocessing_inputs(grpcclient, eh.PROMPT, 17, stop_words=stops),
                          client_timeout=TIMEOUT)
    ids = tokenizer.encode(eh.PROMPT, add_special_tokens=add_special)
    assert result.as_numpy("INPUT_ID").tolist() == [ids]
    assert result.as_numpy("REQUEST_INPUT_LEN").tolist() == [[len(ids)]]
    assert result.as_numpy("REQUEST_OUTPUT_LEN").tolist() == [[17]]
    assert result.as_numpy("OUT_END_ID").tolist() == [[tokenizer.eos_token_id]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    assert result.as_numpy("OUT_PAD_ID").tolist() == [[pad]]
    assert result.as_numpy("STOP_WORDS_IDS").tolist() == [eh.word_list(tokenizer, stops)]
    assert result.as_numpy("BAD_WORDS_IDS").shape == (1, 2, 0)


def test_infer_preprocessing_batch_pads_with_pad_id(client, tokenizer, server):
    add_special = eh.config_bool(eh.load_config(server.repo, "preprocessing"), "add_special_tokens", False)
    prompts = [eh.PROMPT, "Hi"]
    result = client.infer("preprocessing", eh.preprocessing_inputs(grpcclient, prompts, 4), client_timeout=TIMEOUT)
    rows = [tokenizer.encode(p, add_special_tokens=add_special) for p in prompts]
    pad = result.as_numpy("OUT_PAD_ID")[1, 0]
    width = max(len(r) for r in rows)
    assert result.as_numpy("INPUT_ID").tolist() == [r + [pad] * (width - len(r)) for r in rows]
    assert result.as_numpy("REQUEST_INPUT_LEN").tolist() == [[len(r)] for r in rows]


def test_infer_postprocessing(client, engine_dir, tokenizer, server):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_2)
    gen = eh.reference_ids(engine_dir, ids, eh.MAX_TOKENS)
    hello = tokenizer.encode("Hello world", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    rows = [gen, hello + [eos]]
    result = client.infer("postprocessing", eh.postprocessing_inputs(grpcclient, rows, [len(gen), len(hello) + 1]),
                          client_timeout=TIMEOUT)
    texts = [t.decode("utf-8") for t in result.as_numpy("OUTPUT")]
    # ids -> text with no prompt context: exactly the Hugging Face decode, special tokens skipped.
    assert texts == [tokenizer.decode(gen, skip_special_tokens=True), "Hello world"]
    # SEQUENCE_LENGTH cuts each beam.
    result = client.infer("postprocessing", eh.postprocessing_inputs(grpcclient, [hello], [1]), client_timeout=TIMEOUT)
    assert result.as_numpy("OUTPUT")[0].decode() == tokenizer.decode(hello[:1])


# ---- ModelStreamInfer --------------------------------------------------------------------------------------------

def test_stream_tensorrt_llm_one_response_per_token(stream, stream_server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT)
    ref = eh.reference_ids(engine_dir, ids, eh.MAX_TOKENS)
    stream.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, eh.MAX_TOKENS, streaming=True), "s-1")
    responses, error = stream.collect()
    assert error is None, error
    assert len(responses) == len(ref)  # one response per generated token
    tokens = []
    for k, r in enumerate(responses):
        resp = r.get_response()
        assert resp.id == "s-1" and resp.model_name == "tensorrt_llm"
        assert resp.parameters["triton_final_response"].bool_param == (k == len(responses) - 1)
        out = r.as_numpy("output_ids")
        assert out.shape == (1, 1, 1)
        tokens.append(int(out[0, 0, 0]))
    assert tokens == ref
    # The same request without streaming=True: one final response with every token.
    stream.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, eh.MAX_TOKENS), "s-2")
    responses, error = stream.collect()
    assert error is None, error
    assert len(responses) == 1
    assert responses[0].get_response().parameters["triton_final_response"].bool_param is True
    assert responses[0].as_numpy("output_ids")[0, 0].tolist() == tokens
    assert responses[0].as_numpy("sequence_length")[0, 0] == len(tokens)


def test_stream_sequence_length_counts_the_response_ids(stream, stream_server, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT)
    stream.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4, streaming=True), "s-len")
    responses, error = stream.collect()
    assert error is None, error
    got = [(r.as_numpy("output_ids").shape[2], int(r.as_numpy("sequence_length")[0, 0])) for r in responses]
    assert all(n == seq for n, seq in got), got


def test_stream_tensorrt_llm_bls_text_deltas(stream, stream_server, engine_dir, tokenizer):
    _, _, text = eh.reference_text(engine_dir, tokenizer, stream_server.repo, eh.PROMPT, eh.MAX_TOKENS)
    stream.send("tensorrt_llm_bls", eh.text_inputs(grpcclient, eh.PROMPT, eh.MAX_TOKENS, stream=True), "b-1")
    responses, error = stream.collect()
    assert error is None, error
    deltas = [r.as_numpy("text_output")[0].decode("utf-8") for r in responses if r.as_numpy("text_output") is not None]
    assert len(deltas) > 1  # streamed, not one reply
    assert "".join(deltas) == text
    assert responses[-1].get_response().parameters["triton_final_response"].bool_param is True
    # Not streamed (stream absent) on the same decoupled model: one response with the whole text.
    stream.send("tensorrt_llm_bls", eh.text_inputs(grpcclient, eh.PROMPT, eh.MAX_TOKENS), "b-2")
    responses, error = stream.collect()
    assert error is None, error
    assert len(responses) == 1 and responses[0].as_numpy("text_output")[0].decode("utf-8") == text


def test_stream_on_a_non_decoupled_model(server, engine_dir, tokenizer):
    """ModelStreamInfer on a model that answers once: one response, flagged final."""
    s = Stream(server.grpc_url)
    try:
        ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT_3)
        s.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, 5), "nd-1")
        responses, error = s.collect()
    finally:
        s.close()
    assert error is None, error
    assert len(responses) == 1
    assert responses[0].get_response().parameters["triton_final_response"].bool_param is True
    assert responses[0].as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 5)


def test_stream_error_then_the_stream_goes_on(stream, stream_server, engine_dir, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT)
    stream.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, 3, streaming=True, drop=("input_lengths",)), "bad")
    responses, error = stream.collect()
    assert responses == [] and isinstance(error, InferenceServerException)
    assert "input_lengths" in error.message()
    stream.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, 3, streaming=True), "good")
    responses, error = stream.collect()
    assert error is None, error
    assert [int(r.as_numpy("output_ids")[0, 0, 0]) for r in responses] == eh.reference_ids(engine_dir, ids, 3)


def test_stream_cancelled_by_the_client(stream_server, tokenizer):
    """A client that leaves mid-stream cancels its request: it stops early, counts as a failure, and nothing
    stays pending."""
    c = grpcclient.InferenceServerClient(stream_server.grpc_url)
    metrics_url = "http://%s/metrics" % stream_server.metrics_url
    labels = {"model": "tensorrt_llm", "version": "1"}

    def state():
        s = c.get_inference_statistics("tensorrt_llm").model_stats[0].inference_stats
        m = eh.parse_metrics(requests.get(metrics_url, timeout=TIMEOUT).text)
        return (s.success.count, s.fail.count, eh.metric(m, "nv_inference_pending_request_count", **labels),
                eh.metric(m, "nv_llm_output_token_len_sum", **labels))

    try:
        before = state()
        ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT_2)
        long_run = 500 - len(ids)  # most of max_seq_len (512): far longer than the test waits
        s = Stream(stream_server.grpc_url)
        s.send("tensorrt_llm", eh.token_inputs(grpcclient, ids, long_run, streaming=True), "to-cancel")
        first, error = s.queue.get(timeout=TIMEOUT)
        assert error is None and first.as_numpy("output_ids").shape == (1, 1, 1)
        s.client.stop_stream(cancel_requests=True)
        s.client.close()
        def ended():
            now = state()
            return now if now[0] + now[1] > before[0] + before[1] and now[2] == 0 else None

        after = wait_for(ended, timeout=30)
        assert after, (before, state())
        assert after[1] - before[1] == 1, (before, after)  # counted as a failure
        assert after[0] == before[0]
        assert after[3] - before[3] < long_run  # stopped early
        assert stream_server.alive()
    finally:
        c.close()


def test_plain_infer_on_a_decoupled_model_is_refused(stream_client, stream_server, tokenizer):
    ids = eh.encode_prompt(tokenizer, stream_server.repo, eh.PROMPT)
    for model, inputs in (("tensorrt_llm", eh.token_inputs(grpcclient, ids, 3)),
                          ("tensorrt_llm_bls", eh.text_inputs(grpcclient, eh.PROMPT, 3))):
        with pytest.raises(InferenceServerException) as e:
            stream_client.infer(model, inputs, client_timeout=TIMEOUT)
        assert status_of(e) == "StatusCode.INVALID_ARGUMENT"
        assert "decoupled" in e.value.message() and "ModelStreamInfer" in e.value.message()


# ---- statistics --------------------------------------------------------------------------------------------------

def _stats(client, model, version=""):
    stats = client.get_inference_statistics(model, version).model_stats
    assert len(stats) == 1 and stats[0].name == model and stats[0].version == "1"
    return stats[0]


def test_statistics_count_requests(client, tokenizer):
    before = _stats(client, "preprocessing")
    t0 = int(time.time() * 1000)
    n = 3
    for k in range(n):
        client.infer("preprocessing", eh.preprocessing_inputs(grpcclient, "stats %d" % k, 2), client_timeout=TIMEOUT)
    after = _stats(client, "preprocessing", "1")
    assert after.inference_stats.success.count - before.inference_stats.success.count == n
    assert after.inference_count - before.inference_count == n
    assert after.execution_count - before.execution_count == n
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= t0 - 1000
    # A failed request counts as a failure, not a success.
    with pytest.raises(InferenceServerException):
        client.infer("preprocessing", eh.preprocessing_inputs(grpcclient, "x", 2)[:1])
    failed = _stats(client, "preprocessing")
    assert failed.inference_stats.fail.count - after.inference_stats.fail.count == 1
    assert failed.inference_stats.success.count == after.inference_stats.success.count


def test_statistics_inference_count_counts_batch_rows(client):
    before = _stats(client, "preprocessing")
    client.infer("preprocessing", eh.preprocessing_inputs(grpcclient, ["a", "b"], 2), client_timeout=TIMEOUT)
    after = _stats(client, "preprocessing")
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    assert after.execution_count - before.execution_count == 1
    assert after.inference_count - before.inference_count == 2


def test_statistics_all_models_and_unknown(client):
    stats = client.get_inference_statistics().model_stats
    assert sorted(s.name for s in stats) == list(eh.MODELS)
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("no_such_model")
    assert status_of(e) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("preprocessing", "9")
    assert status_of(e) == "StatusCode.NOT_FOUND"


# ---- repository --------------------------------------------------------------------------------------------------

def test_repository_index_lists_every_model_ready(client):
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [(m, "1", "READY") for m in eh.MODELS]
    assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == list(eh.MODELS)


def _ready_only_index(url):
    """RepositoryIndex with ready=true (tritonclient.grpc has no argument for it: its generated stub)."""
    channel = grpc.insecure_channel(url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=TIMEOUT)
    finally:
        channel.close()
    assert all(m.state == "READY" for m in reply.models)
    return [m.name for m in reply.models]


def _states(client):
    return {m.name: m.state for m in client.get_model_repository_index().models}


def test_repository_load_and_unload_in_explicit_mode(explicit_server, engine_dir, tokenizer):
    c = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    try:
        # Only what --load-model named is loaded; the server is ready (every model it should load is).
        assert _states(c) == {"ensemble": "UNAVAILABLE", "postprocessing": "READY", "preprocessing": "READY",
                              "tensorrt_llm": "UNAVAILABLE", "tensorrt_llm_bls": "UNAVAILABLE"}
        assert c.is_server_ready() is True
        assert c.is_model_ready("tensorrt_llm") is False
        ids = eh.encode_prompt(tokenizer, explicit_server.repo, eh.PROMPT)
        with pytest.raises(InferenceServerException):
            c.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4))

        c.load_model("tensorrt_llm")
        assert _states(c)["tensorrt_llm"] == "READY" and c.is_model_ready("tensorrt_llm") is True
        result = c.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 4), client_timeout=TIMEOUT)
        assert result.as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 4)

        c.unload_model("postprocessing")
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert index["postprocessing"].state == "UNAVAILABLE" and index["postprocessing"].reason
        assert c.is_model_ready("postprocessing") is False
        assert _ready_only_index(explicit_server.grpc_url) == ["preprocessing", "tensorrt_llm"]
        with pytest.raises(InferenceServerException) as e:
            c.infer("postprocessing", eh.postprocessing_inputs(grpcclient, [[415]]))
        assert status_of(e) in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")

        c.load_model("postprocessing")
        assert _states(c)["postprocessing"] == "READY"
        out = c.infer("postprocessing", eh.postprocessing_inputs(grpcclient, [ids]), client_timeout=TIMEOUT)
        assert out.as_numpy("OUTPUT")[0].decode() == tokenizer.decode(ids, skip_special_tokens=True)

        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert status_of(e) == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as e:
            c.unload_model("ensemble")  # not loaded
        assert status_of(e) == "StatusCode.NOT_FOUND"
    finally:
        c.close()
    assert explicit_server.alive()


def test_repository_load_refused_in_mode_none(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("postprocessing")  # on the shared server: a reload if kiln accepts it (harmless)
    assert status_of(e) in ("StatusCode.UNAVAILABLE", "StatusCode.FAILED_PRECONDITION", "StatusCode.INVALID_ARGUMENT")


# ---- logging settings --------------------------------------------------------------------------------------------

def _log_settings(client):
    s = client.get_log_settings().settings
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in s.items()}


def test_log_settings(client):
    settings = _log_settings(client)
    assert settings["log_file"] == ""
    assert settings["log_info"] is True and settings["log_warning"] is True and settings["log_error"] is True
    assert settings["log_format"] == "default"
    level = settings["log_verbose_level"]
    try:
        reply = client.update_log_settings({"log_verbose_level": 1}).settings
        assert reply["log_verbose_level"].uint32_param == 1
        assert _log_settings(client)["log_verbose_level"] == 1
    finally:
        client.update_log_settings({"log_verbose_level": level})
    assert _log_settings(client)["log_verbose_level"] == level


def test_log_file_from_the_network_is_refused(client):
    path = "/tmp/kiln-endpoint-test-grpc.log"
    with pytest.raises(InferenceServerException) as e:
        client.update_log_settings({"log_file": path})
    assert status_of(e) == "StatusCode.INVALID_ARGUMENT"
    assert "log_file" in e.value.message()
    assert not os.path.exists(path)
    assert _log_settings(client)["log_file"] == ""


# ---- shared memory -----------------------------------------------------------------------------------------------

def test_shared_memory_calls_are_unsupported(client):
    calls = eh.shared_memory_calls(client)
    for what, call in calls.items():
        with pytest.raises(InferenceServerException) as e:
            call()
        assert status_of(e) == "StatusCode.UNIMPLEMENTED", what
        assert "shared memory" in e.value.message() and "not supported" in e.value.message(), what


def test_infer_with_a_shared_memory_input_is_refused(client, server, tokenizer):
    ids = eh.encode_prompt(tokenizer, server.repo, eh.PROMPT)
    inputs = eh.token_inputs(grpcclient, ids, 4)
    inputs[0] = grpcclient.InferInput("input_ids", [1, len(ids)], "INT32")
    inputs[0].set_shared_memory("region", 4 * len(ids))
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", inputs)
    assert status_of(e) == "StatusCode.INVALID_ARGUMENT"
    assert "shared memory" in e.value.message()


# ---- metrics (the Prometheus port) after gRPC traffic ------------------------------------------------------------

def test_metrics_after_grpc_inferences(client, server, engine_dir, tokenizer):
    url = "http://%s/metrics" % server.metrics_url
    labels = {"model": "tensorrt_llm", "version": "1"}
    before = eh.parse_metrics(requests.get(url, timeout=TIMEOUT).text)
    prompts = [eh.PROMPT, eh.PROMPT_2, eh.PROMPT_3]
    generated = 0
    for p in prompts:
        ids = eh.encode_prompt(tokenizer, server.repo, p)
        result = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids, 6), client_timeout=TIMEOUT)
        assert result.as_numpy("output_ids")[0, 0].tolist() == eh.reference_ids(engine_dir, ids, 6)
        generated += int(result.as_numpy("sequence_length")[0, 0])
    response = requests.get(url, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    after = eh.parse_metrics(response.text)
    success = eh.metric(after, "nv_inference_request_success", **labels)
    assert success >= len(prompts)
    assert success - eh.metric(before, "nv_inference_request_success", **labels) == len(prompts)
    assert eh.metric(after, "nv_inference_count", **labels) >= len(prompts)
    ttft, _ = eh.check_histogram(after, "kiln_time_to_first_token_ms", **labels)
    itl, _ = eh.check_histogram(after, "kiln_inter_token_latency_ms", **labels)
    assert ttft - eh.check_histogram(before, "kiln_time_to_first_token_ms", **labels)[0] == len(prompts)
    assert itl - eh.check_histogram(before, "kiln_inter_token_latency_ms", **labels)[0] == generated - len(prompts)
