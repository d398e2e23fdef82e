"""Bad input to `kiln serve`, over HTTP and gRPC, with the official Triton clients (and raw sockets or
`requests` where a client library cannot produce the malformed request).

Every bad request must be answered with a clear error: HTTP 4xx (400; 404 for an unknown model or version;
413/431 for sizes) or gRPC INVALID_ARGUMENT / NOT_FOUND (RESOURCE_EXHAUSTED for a message over the cap),
whose message names what was wrong, and leaks no path of the server's machine. After every case a good
request to the same server still gives the reference output (an autouse fixture checks it over both
protocols), so a bad request never takes the server down or poisons it.

The requests that are not errors (docs/PROTOCOL.md): input_lengths smaller than the ids sent marks the rest
as padding (the output is that of the shorter prompt); a larger one is clamped to the ids sent (the normal
output, said once in the log); prompt + request_output_len past max_seq_len is cut to what is left (as
TensorRT-LLM, said once in the log), while request_output_len alone past max_seq_len is refused.
"""
import json
import os
import socket
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from conftest import MAX_INPUT_LEN, MAX_SEQ_LEN, Server, make_repo

# A prompt of the phi3 fixture (BOS + "Hello, my name is" in Phi-3 ids) and a short output.
PROMPT = [1, 15043, 29892, 590, 1024, 338]
OUT_LEN = 8

# "http": JSON tensor data; "http_binary": the binary-tensor extension; "grpc": raw_input_contents.
TRANSPORTS = ("http", "http_binary", "grpc")
PROTOCOLS = ("http", "grpc")

CAP = 4096  # --max-request-bytes of the capped server


# ---- clients and tensors -------------------------------------------------------------------------------------

class T:
    """One input tensor to send: values (an array-like), the numpy dtype, and optionally a datatype or shape
    that differ from the data's (to send a wrong one)."""

    def __init__(self, name, values, dtype=np.int32, datatype=None, shape=None):
        self.name = name
        self.array = np.array(values, dtype=dtype)
        self.datatype = datatype or np_to_triton_dtype(self.array.dtype)
        self.shape = shape


def good_tensors(ids=PROMPT, out_len=OUT_LEN, length=None):
    return [T("input_ids", [ids]), T("input_lengths", [[len(ids) if length is None else length]]),
            T("request_output_len", [[out_len]])]


def without(tensors, name):
    return [t for t in tensors if t.name != name]


def replace(tensors, new):
    return [new if t.name == new.name else t for t in tensors]


def text_tensors(text, max_tokens=OUT_LEN):
    return [T("text_input", [[text]], dtype=object, datatype="BYTES"), T("max_tokens", [[max_tokens]])]


class Client:
    """The Triton client of one transport, with one call that sends T tensors."""

    def __init__(self, server, transport):
        self.transport = transport
        self.grpc = transport == "grpc"
        self.mod = grpcclient if self.grpc else httpclient
        if self.grpc:
            self.client = grpcclient.InferenceServerClient(server.grpc_url)
        else:
            self.client = httpclient.InferenceServerClient(server.http_url, connection_timeout=60,
                                                           network_timeout=60)

    def inputs(self, tensors):
        out = []
        for t in tensors:
            i = self.mod.InferInput(t.name, list(t.array.shape), t.datatype)
            if self.grpc:
                i.set_data_from_numpy(t.array)
            else:
                i.set_data_from_numpy(t.array, binary_data=self.transport == "http_binary")
            if t.shape is not None:
                i.set_shape(list(t.shape))
            out.append(i)
        return out

    def infer(self, model, tensors, version=""):
        return self.client.infer(model, self.inputs(tensors), model_version=version)

    def close(self):
        self.client.close()


@pytest.fixture(scope="module")
def clients(server):
    made = {t: Client(server, t) for t in TRANSPORTS}
    yield made
    for c in made.values():
        c.close()


def generated(result):
    """The generated ids of a tensorrt_llm reply (repo init's config does not echo the prompt)."""
    ids = result.as_numpy("output_ids")
    n = int(result.as_numpy("sequence_length").reshape(-1)[0])
    return ids.reshape(-1)[:n].tolist()


@pytest.fixture(scope="module")
def reference(server):
    """The good request's output ids, and those of each prompt the cases compare with (sent alone)."""
    c = Client(server, "grpc")
    refs = {
        "good": generated(c.infer("tensorrt_llm", good_tensors())),
        "prefix4": generated(c.infer("tensorrt_llm", good_tensors(ids=PROMPT[:4]))),
    }
    c.close()
    assert len(refs["good"]) == OUT_LEN
    return refs


def assert_good_request_works(server, reference, transports=PROTOCOLS):
    assert server.alive(), "the server exited:\n" + server.log()[-4000:]
    for transport in transports:
        c = Client(server, transport)
        try:
            assert generated(c.infer("tensorrt_llm", good_tensors())) == reference["good"], transport
        finally:
            c.close()


@pytest.fixture(autouse=True)
def still_serving(server, reference):
    """After every case: the server still answers a good request, with the same output, over both protocols."""
    yield
    assert_good_request_works(server, reference)


def refused(call, transport, keywords, http_status=(400,), grpc_codes=("INVALID_ARGUMENT",), server=None):
    """Runs call(), which must fail with one of the statuses; the message must hold every keyword."""
    with pytest.raises(InferenceServerException) as info:
        call()
    e = info.value
    msg = e.message() or ""
    if transport == "grpc":
        assert e.status() in ["StatusCode." + c for c in grpc_codes], (e.status(), msg)
    else:
        assert e.status() is not None and int(e.status()) in http_status, (e.status(), msg)
    for k in keywords:
        assert k in msg, "%r not in the error message %r" % (k, msg)
    if server is not None:  # no path of the server's machine in the answer
        assert server.repo not in msg and os.path.dirname(server.repo) not in msg, msg
    return msg


# ---- tensor-level refusals of the tensorrt_llm model (each over HTTP JSON, HTTP binary and gRPC) --------------

def _batch(n):
    return [T("input_ids", [PROMPT] * n), T("input_lengths", [[len(PROMPT)]] * n),
            T("request_output_len", [[OUT_LEN]] * n)]


# name -> (tensors, keywords the message must hold)
REFUSALS = {
    "input_ids_fp32": (replace(good_tensors(), T("input_ids", [PROMPT], np.float32)), ["input_ids", "INT32", "FP32"]),
    "input_ids_int64": (replace(good_tensors(), T("input_ids", [PROMPT], np.int64)), ["input_ids", "INT32", "INT64"]),
    "input_lengths_fp32": (replace(good_tensors(), T("input_lengths", [[6]], np.float32)), ["input_lengths", "INT32"]),
    "request_output_len_int64": (replace(good_tensors(), T("request_output_len", [[8]], np.int64)),
                                 ["request_output_len", "INT32"]),
    "streaming_as_int32": (good_tensors() + [T("streaming", [[1]])], ["streaming", "BOOL"]),
    "shape_product_overflows_uint64": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, 2**32, 2**32])),
                                       ["input_ids", "overflow"]),
    "shape_product_overflows_int64": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, 2**62, 4])),
                                      ["input_ids", "overflow"]),
    "shape_huge_dims": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[2**63 - 1, 2**63 - 1])),
                        ["input_ids", "overflow"]),
    "shape_larger_than_data": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, 10])), ["input_ids", "[1,10]"]),
    "shape_smaller_than_data": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, 2])), ["input_ids", "[1,2]"]),
    "shape_negative_dim": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, -6])), ["shape", "-6"]),
    "shape_wrong_rank": (replace(good_tensors(), T("input_ids", [PROMPT], shape=[1, 3, 2])), ["input_ids", "[1,3,2]"]),
    "scalar_with_two_values": (replace(good_tensors(), T("request_output_len", [[8, 8]])), ["request_output_len", "shape"]),
    "no_batch_dimension": (replace(good_tensors(), T("input_lengths", 6)), ["input_lengths", "batch"]),
    "batch_over_max_batch_size": (_batch(9), ["batch size 9", "max_batch_size=8"]),
    "batch_sizes_differ": (replace(_batch(2), T("input_lengths", [[6]])), ["batch size"]),
    "missing_request_output_len": (without(good_tensors(), "request_output_len"), ["missing", "request_output_len"]),
    "missing_input_ids": (without(good_tensors(), "input_ids"), ["missing", "input_ids"]),
    "missing_input_lengths": (without(good_tensors(), "input_lengths"), ["missing", "input_lengths"]),
    "unknown_input": (good_tensors() + [T("no_such_input", [[1]])], ["no_such_input"]),
    "duplicate_input": (good_tensors() + [T("input_ids", [PROMPT])], ["input_ids", "twice"]),
    "input_lengths_zero": (good_tensors(length=0), ["input_lengths=0"]),
    "input_lengths_negative": (good_tensors(length=-3), ["input_lengths=-3"]),
    "input_lengths_int32_min": (good_tensors(length=-2**31), ["input_lengths"]),
    "request_output_len_zero": (good_tensors(out_len=0), ["request_output_len=0"]),
    "request_output_len_negative": (good_tensors(out_len=-5), ["request_output_len=-5"]),
    "request_output_len_over_max_seq_len": (good_tensors(out_len=MAX_SEQ_LEN + 1),
                                            ["request_output_len=%d" % (MAX_SEQ_LEN + 1), "max_seq_len"]),
    "request_output_len_int32_max": (good_tensors(out_len=2**31 - 1), ["request_output_len", "max_seq_len"]),
    "empty_prompt": ([T("input_ids", np.zeros((1, 0), np.int32)), T("input_lengths", [[1]]),
                      T("request_output_len", [[OUT_LEN]])], ["input_ids", "empty"]),
    "empty_prompt_length_zero": ([T("input_ids", np.zeros((1, 0), np.int32)), T("input_lengths", [[0]]),
                                  T("request_output_len", [[OUT_LEN]])], ["input_lengths"]),
    "prompt_over_max_input_len": (good_tensors(ids=[1] + [15043] * MAX_INPUT_LEN),
                                  ["%d" % (MAX_INPUT_LEN + 1), "max_input_len=%d" % MAX_INPUT_LEN]),
    "streaming_on_a_model_that_is_not_decoupled": (good_tensors() + [T("streaming", [[True]], bool)], ["decoupled"]),
    "stop_words_list_bad_offsets": (good_tensors() + [T("stop_words_list", [[[15043, 29892], [5, -1]]])],
                                    ["stop_words_list"]),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_tensorrt_llm_refuses(server, clients, transport, case):
    tensors, keywords = REFUSALS[case]
    refused(lambda: clients[transport].infer("tensorrt_llm", tensors), transport, keywords, server=server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unsupported_optional_input_is_refused_by_name(server, clients, transport):
    # Sent but not supported by the engine: an error, never silently ignored.
    tensors = good_tensors() + [T("draft_input_ids", [[15043, 29892]])]
    refused(lambda: clients[transport].infer("tensorrt_llm", tensors), transport, ["draft_input_ids"],
            grpc_codes=("INVALID_ARGUMENT", "UNIMPLEMENTED"), http_status=(400, 501), server=server)


# ---- what is not an error: input_lengths and lengths past the engine's limits ---------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_input_lengths_smaller_marks_the_rest_as_padding(clients, reference, transport):
    r = clients[transport].infer("tensorrt_llm", good_tensors(length=4))
    assert generated(r) == reference["prefix4"]
    assert reference["prefix4"] != reference["good"]  # the case tells something


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_input_lengths_larger_is_clamped_to_the_ids_sent(server, clients, reference, transport):
    r = clients[transport].infer("tensorrt_llm", good_tensors(length=1024))
    assert generated(r) == reference["good"]
    # Said in the log (once per kind of note: another case or test may have said it first).
    assert "is larger than the" in server.log()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_output_past_max_seq_len_is_cut_to_what_is_left(server, clients, transport):
    room = MAX_SEQ_LEN - len(PROMPT)
    r = clients[transport].infer("tensorrt_llm", good_tensors(out_len=room + 4))
    ids = generated(r)
    assert len(ids) == room
    assert int(r.as_numpy("sequence_length").reshape(-1)[0]) == room
    # ... and said in the log (once per kind of note, so another case may have said it first).
    assert "generating at most" in server.log()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_prompt_of_exactly_max_input_len_is_served(clients, transport):
    r = clients[transport].infer("tensorrt_llm", good_tensors(ids=[1] + [15043] * (MAX_INPUT_LEN - 1), out_len=2))
    assert len(generated(r)) == 2


# ---- models: unknown model, unknown version, a path as a model name ------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_model(server, clients, transport):
    refused(lambda: clients[transport].infer("no_such_model", good_tensors()), transport, ["no_such_model"],
            http_status=(404,), grpc_codes=("NOT_FOUND",), server=server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_version(server, clients, transport):
    refused(lambda: clients[transport].infer("tensorrt_llm", good_tensors(), version="7"), transport,
            ["version", "7"], http_status=(404,), grpc_codes=("NOT_FOUND",), server=server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_version_that_is_not_a_number(server, clients, transport):
    refused(lambda: clients[transport].infer("tensorrt_llm", good_tensors(), version="abc"), transport,
            ["version"], http_status=(400, 404), grpc_codes=("INVALID_ARGUMENT", "NOT_FOUND"), server=server)


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "..", "tensorrt_llm/../tensorrt_llm"])
def test_path_as_model_name_over_grpc(server, clients, name):
    refused(lambda: clients["grpc"].infer(name, good_tensors()), "grpc", ["model"],
            grpc_codes=("INVALID_ARGUMENT", "NOT_FOUND"), server=server)


@pytest.mark.parametrize("path", ["/v2/models/..%2Fetc/infer", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
                                  "/v2/models/%2E%2E/infer", "/v2/models/../etc/infer",
                                  "/v2/models/..%2Ftensorrt_llm/infer"])
def test_path_as_model_name_over_http(server, path):
    # Raw request target (requests would leave %2F alone, but normalize nothing either: sent as written).
    body = json.dumps({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]})
    status, _, reply = raw_http(server, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path, len(body), body))
    assert status in (400, 404), (status, reply)
    msg = json.loads(reply)["error"]
    assert "model" in msg or "not found" in msg, msg
    assert server.repo not in msg


def test_path_as_model_name_with_the_http_client(server, clients):
    refused(lambda: clients["http"].infer("..%2Fetc", good_tensors()), "http", ["model"], http_status=(400, 404),
            server=server)


# ---- the text models: empty and invalid-UTF-8 prompts, wrong types --------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_empty_text_input(server, clients, transport, model):
    refused(lambda: clients[transport].infer(model, text_tensors("")), transport, ["text_input", "empty"],
            server=server)


@pytest.mark.parametrize("transport", ["http_binary", "grpc"])  # JSON cannot carry invalid UTF-8
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls", "preprocessing"])
@pytest.mark.parametrize("text", [b"\xff\xfe", b"Hello \xc3", b"\xed\xa0\x80 surrogate", b"over\xc0\xafshort"])
def test_invalid_utf8_text_input(server, clients, transport, model, text):
    if model == "preprocessing":
        tensors = [T("QUERY", [[text]], dtype=object, datatype="BYTES"), T("REQUEST_OUTPUT_LEN", [[OUT_LEN]])]
        name = "QUERY"
    else:
        tensors = [T("text_input", [[text]], dtype=object, datatype="BYTES"), T("max_tokens", [[OUT_LEN]])]
        name = "text_input"
    refused(lambda: clients[transport].infer(model, tensors), transport, [name, "UTF-8"], server=server)


TEXT_REFUSALS = {
    "text_input_as_int32": ([T("text_input", [[5]]), T("max_tokens", [[OUT_LEN]])], ["text_input", "BYTES"]),
    "max_tokens_zero": (text_tensors("Hello", 0), ["max_tokens=0"]),
    "max_tokens_negative": (text_tensors("Hello", -1), ["max_tokens=-1"]),
    "max_tokens_over_max_seq_len": (text_tensors("Hello", MAX_SEQ_LEN + 1), ["max_seq_len"]),
    "missing_max_tokens": (text_tensors("Hello")[:1], ["missing", "max_tokens"]),
    "missing_text_input": (text_tensors("Hello")[1:], ["missing", "text_input"]),
    "unknown_input": (text_tensors("Hello") + [T("no_such_input", [[1]])], ["no_such_input"]),
    "prompt_over_max_input_len": (text_tensors(" hello" * (MAX_INPUT_LEN + 10)), ["max_input_len"]),
    "stream_on_a_model_that_is_not_decoupled": (text_tensors("Hello") + [T("stream", [[True]], bool)], ["stream"]),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(TEXT_REFUSALS))
def test_ensemble_refuses(server, clients, transport, case):
    tensors, keywords = TEXT_REFUSALS[case]
    refused(lambda: clients[transport].infer("ensemble", tensors), transport, keywords, server=server)


# ---- ids the tokenizer does not know (not an error) ------------------------------------------------------------
# The phi3 fixture engine's vocabulary has 32064 rows, its tokenizer 32011 tokens, and the random-weight model
# emits a padding id now and then. Triton's Python postprocessing (Hugging Face decode) skips such ids; so must
# kiln's text models, instead of failing a valid request.

@pytest.fixture(scope="module")
def unknown_id_case(server, tokenizer):
    """(prompt, max_tokens, generated ids) for a prompt whose greedy output holds an id past the tokenizer's
    vocabulary, found by asking the tensorrt_llm model."""
    c = Client(server, "grpc")
    try:
        for prompt in ("Hi there", "Hello", "Once upon a time", "The cat", "What is", "A", "Good morning"):
            ids = tokenizer(prompt).input_ids  # the preprocessing of `kiln repo init` adds BOS, as this does
            gen = generated(c.infer("tensorrt_llm", good_tensors(ids=ids, out_len=MAX_SEQ_LEN - len(ids))))
            unknown = [k for k, t in enumerate(gen) if t >= len(tokenizer)]
            if unknown:
                n = unknown[0] + 4
                return prompt, n, gen[:n]
    finally:
        c.close()
    pytest.skip("no prompt of the list makes the fixture model emit an id past the tokenizer's vocabulary")


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_text_models_skip_ids_the_tokenizer_does_not_know(server, tokenizer, unknown_id_case, model):
    prompt, n, gen = unknown_id_case
    r = requests.post("http://%s/v2/models/%s/generate" % (server.http_url, model),
                      json={"text_input": prompt, "max_tokens": n}, timeout=60)
    assert r.status_code == 200, r.text
    expected = tokenizer.decode([t for t in gen if t < len(tokenizer)], skip_special_tokens=True)
    assert r.json()["text_output"].strip() == expected.strip()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_postprocessing_skips_ids_the_tokenizer_does_not_know(server, clients, tokenizer, unknown_id_case,
                                                              transport):
    _, n, gen = unknown_id_case
    r = clients[transport].infer("postprocessing", [T("TOKENS_BATCH", [[gen]]), T("SEQUENCE_LENGTH", [[n]])])
    expected = tokenizer.decode([t for t in gen if t < len(tokenizer)], skip_special_tokens=True)
    assert r.as_numpy("OUTPUT").reshape(-1)[0].decode() == expected
    # A negative id is nobody's token: refused, by value.
    refused(lambda: clients[transport].infer("postprocessing", [T("TOKENS_BATCH", [[[gen[0], -7]]])]),
            transport, ["-7"], server=server)


GENERATE_REFUSALS = {
    "empty_text_input": (b'{"text_input": "", "max_tokens": 4}', ["text_input", "empty"]),
    "invalid_utf8_in_the_json": (b'{"text_input": "\xff\xfe", "max_tokens": 4}', ["UTF-8"]),
    "lone_surrogate_escape": (b'{"text_input": "\\ud800", "max_tokens": 4}', ["surrogate"]),
    "text_input_a_number": (b'{"text_input": 5, "max_tokens": 4}', ["text_input"]),
    "max_tokens_zero": (b'{"text_input": "Hello", "max_tokens": 0}', ["max_tokens"]),
    "max_tokens_a_string": (b'{"text_input": "Hello", "max_tokens": "x"}', ["max_tokens"]),
    "missing_max_tokens": (b'{"text_input": "Hello"}', ["max_tokens"]),
    "not_an_object": (b'["Hello", 4]', ["object"]),
}


@pytest.mark.parametrize("case", sorted(GENERATE_REFUSALS))
def test_generate_endpoint_refuses(server, case):
    body, keywords = GENERATE_REFUSALS[case]
    r = requests.post("http://%s/v2/models/ensemble/generate" % server.http_url, data=body,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text)
    msg = r.json()["error"]
    for k in keywords:
        assert k in msg, msg


# ---- HTTP only: malformed requests, sizes, nesting, chunking, headers -----------------------------------------

def raw_http(server, request, body_chunks=(), port=None, timeout=60):
    """Sends a raw HTTP/1.1 request (bytes or str) and reads the reply: (status, headers, body text)."""
    host, p = server.http_url.split(":")
    s = socket.create_connection((host, port or int(p)), timeout=timeout)
    try:
        s.sendall(request.encode("latin-1") if isinstance(request, str) else request)
        for chunk in body_chunks:
            s.sendall(chunk)
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                headers = head.decode("latin-1").lower()
                if "content-length:" in headers:
                    n = int(headers.split("content-length:")[1].split("\r\n")[0])
                    if len(rest) >= n:
                        break
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), head.decode("latin-1"), body.decode("utf-8", "replace")


GOOD_JSON = {"inputs": [
    {"name": "input_ids", "shape": [1, len(PROMPT)], "datatype": "INT32", "data": PROMPT},
    {"name": "input_lengths", "shape": [1, 1], "datatype": "INT32", "data": [len(PROMPT)]},
    {"name": "request_output_len", "shape": [1, 1], "datatype": "INT32", "data": [OUT_LEN]}]}

MALFORMED_JSON = {
    "truncated": (b'{"inputs": [ {"name": ', ["JSON"]),
    "trailing_garbage": (json.dumps(GOOD_JSON).encode() + b" garbage", ["JSON"]),
    "empty_body": (b"", ["body"]),
    "not_an_object": (b"[1, 2, 3]", ["object"]),
    "inputs_not_an_array": (b'{"inputs": 5}', ["inputs"]),
    "input_without_shape": (b'{"inputs": [{"name": "input_ids", "datatype": "INT32", "data": [1]}]}', ["shape"]),
    "data_of_the_wrong_type": (b'{"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT32", '
                               b'"data": ["a", "b"]}]}', ["input_ids", "INT32"]),
    "int32_out_of_range": (b'{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT32", '
                           b'"data": [99999999999]}]}', ["input_ids", "INT32"]),
    "unknown_datatype": (b'{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT33", '
                         b'"data": [1]}]}', ["datatype", "INT33"]),
    "number_overflow": (b'{"inputs": [{"name": "input_ids", "shape": [1, 1e400], "datatype": "INT32", '
                        b'"data": [1]}]}', ["JSON"]),
    "shape_over_int64": (b'{"inputs": [{"name": "input_ids", "shape": [1, 99999999999999999999], '
                         b'"datatype": "INT32", "data": [1]}]}', ["shape"]),
    "invalid_utf8": (b'{"inputs": [{"name": "input_\xff\xfe", "shape": [1], "datatype": "INT32", "data": [1]}]}',
                     ["UTF-8"]),
    "nul_byte": (b'{"inputs": [{"name": "input_ids\x00", "shape": [1], "datatype": "INT32", "data": [1]}]}',
                 ["JSON"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_JSON))
def test_http_malformed_json(server, case):
    body, keywords = MALFORMED_JSON[case]
    r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % server.http_url, data=body,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text)
    msg = r.json()["error"]
    for k in keywords:
        assert k in msg, msg


@pytest.mark.parametrize("body", [b"[" * 100000, b'{"a":' * 100000, b'{"inputs": ' + b"[" * 100000,
                                  json.dumps({"inputs": GOOD_JSON["inputs"], "parameters": {}})[:-2].encode()
                                  + b'"x": ' + b"[" * 100000 + b"]" * 100000 + b"}}"],
                         ids=["arrays", "objects", "under_inputs", "under_parameters_balanced"])
def test_http_deep_json_nesting(server, body):
    r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % server.http_url, data=body,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert "nest" in r.json()["error"] or "deep" in r.json()["error"], r.text[:300]


def test_http_inference_header_length_beyond_the_body(server):
    body = json.dumps(GOOD_JSON).encode()
    for value in ("100000", "-1", "abc", "99999999999999999999999"):
        r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % server.http_url, data=body,
                          headers={"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": value}, timeout=60)
        assert r.status_code == 400, (value, r.status_code, r.text)
        assert "Inference-Header-Content-Length" in r.json()["error"], r.text


def test_http_binary_tensor_shorter_than_its_shape(server):
    header = {"inputs": [
        {"name": "input_ids", "shape": [1, len(PROMPT)], "datatype": "INT32", "parameters": {"binary_data_size": 24}},
        {"name": "input_lengths", "shape": [1, 1], "datatype": "INT32", "parameters": {"binary_data_size": 4}},
        {"name": "request_output_len", "shape": [1, 1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}]}
    head = json.dumps(header).encode()
    data = np.array(PROMPT, np.int32).tobytes() + np.array([6], np.int32).tobytes()  # the last 4 bytes missing
    r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % server.http_url, data=head + data,
                      headers={"Content-Type": "application/octet-stream",
                               "Inference-Header-Content-Length": str(len(head))}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text)
    assert "binary" in r.json()["error"] or "bytes" in r.json()["error"], r.text


def _chunked(body, size):
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))


def test_http_body_of_100000_tiny_chunks(server, reference):
    """A valid JSON body sent as 10^5 one-byte chunks (chunked transfer encoding): served, same output."""
    body = json.dumps(GOOD_JSON).encode()
    body += b" " * (100000 - len(body))  # JSON allows trailing whitespace
    chunks = _chunked(body, 1)
    head = ("POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    pieces = [chunks[i:i + 6000] for i in range(0, len(chunks), 6000)]  # ~1000 chunks a write
    t0 = time.time()
    status, _, reply = raw_http(server, head, body_chunks=pieces + [b"0\r\n\r\n"])
    print("10^5 chunks: %.2f s" % (time.time() - t0))
    assert status == 200, reply[:300]
    out = {o["name"]: o for o in json.loads(reply)["outputs"]}
    n = out["sequence_length"]["data"][0]
    assert out["output_ids"]["data"][:n] == reference["good"]


def test_http_malformed_chunked_encoding(server):
    head = ("POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    status, _, reply = raw_http(server, head + "zz\r\n{}\r\n0\r\n\r\n")
    assert status == 400, reply
    assert "malformed" in reply or "chunk" in reply, reply


@pytest.mark.parametrize("kind", ["one_64KiB_header", "1000_headers", "64KiB_url"])
def test_http_oversize_headers(server, kind):
    body = json.dumps(GOOD_JSON)
    path, extra = "/v2/models/tensorrt_llm/infer", ""
    if kind == "one_64KiB_header":
        extra = "X-Big: " + "a" * 65536 + "\r\n"
    elif kind == "1000_headers":
        extra = "".join("X-H%d: %s\r\n" % (i, "b" * 100) for i in range(1000))
    else:
        path = "/v2/models/" + "a" * 65536 + "/infer"
    status, _, reply = raw_http(server, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                % (path, extra, len(body), body))
    assert status in (400, 413, 414, 431), (status, reply[:300])
    assert "header" in reply or "URL" in reply or "large" in reply, reply[:300]


def test_http_header_line_without_colon(server):
    status, _, reply = raw_http(server, "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n")
    assert status == 400, reply
    assert "malformed" in reply, reply


# ---- a server with a small request cap (--max-request-bytes 4096) ---------------------------------------------

@pytest.fixture(scope="module")
def capped_server(workdir, engine_dir, tokenizer_dir):
    repo = make_repo(os.path.join(workdir, "repo_capped_bad_input"), engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo, extra_args=["--max-request-bytes", str(CAP)])
    yield s
    assert s.stop() == 0, s.log()


def _big_json(n_bytes):
    """A well-formed infer request of about n_bytes (a long prompt of ids)."""
    n = n_bytes // 7
    return json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, n], "datatype": "INT32", "data": [15043] * n},
        {"name": "input_lengths", "shape": [1, 1], "datatype": "INT32", "data": [n]},
        {"name": "request_output_len", "shape": [1, 1], "datatype": "INT32", "data": [4]}]}).encode()


def test_http_body_over_the_cap(capped_server, reference):
    body = _big_json(8192)
    assert len(body) > CAP * 1.8
    port = int(capped_server.http_url.split(":")[1])
    # With a Content-Length ...
    r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % capped_server.http_url, data=body,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code in (413, 400), (r.status_code, r.text)
    assert str(CAP) in r.json()["error"], r.text
    # ... and chunked, without one.
    head = ("POST /v2/models/tensorrt_llm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    status, _, reply = raw_http(capped_server, head, body_chunks=[_chunked(body, 512) + b"0\r\n\r\n"], port=port)
    assert status in (413, 400), (status, reply)
    assert str(CAP) in reply, reply
    # A gzip body that inflates past the cap.
    import gzip
    packed = gzip.compress(b" " * (64 * CAP) + json.dumps(GOOD_JSON).encode())
    assert len(packed) < CAP
    r = requests.post("http://%s/v2/models/tensorrt_llm/infer" % capped_server.http_url, data=packed,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=60)
    assert r.status_code in (413, 400), (r.status_code, r.text)
    # The capped server still serves requests under the cap.
    assert_good_request_works(capped_server, reference)


def test_grpc_message_over_the_cap(capped_server, reference):
    c = Client(capped_server, "grpc")
    try:
        ids = [15043] * 3000  # 12 KB of raw contents
        refused(lambda: c.infer("tensorrt_llm", good_tensors(ids=ids)), "grpc", [],
                grpc_codes=("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"))
    finally:
        c.close()
    assert_good_request_works(capped_server, reference)


# ---- gRPC only: what the client library never sends ----------------------------------------------------------

def _raw_request(raw_contents_count=3, datatype="INT32"):
    req = service_pb2.ModelInferRequest(model_name="tensorrt_llm")
    for name, values in (("input_ids", PROMPT), ("input_lengths", [len(PROMPT)]), ("request_output_len", [OUT_LEN])):
        t = req.inputs.add(name=name, datatype=datatype if name == "input_ids" else "INT32")
        t.shape.extend([1, len(values)])
        req.raw_input_contents.append(np.array(values, np.int32).tobytes())
    del req.raw_input_contents[raw_contents_count:]
    return req


@pytest.mark.parametrize("case", ["raw_contents_missing", "unknown_datatype", "raw_and_typed_contents",
                                  "no_inputs", "empty_model_name"])
def test_grpc_requests_the_client_library_never_sends(server, case):
    req = _raw_request()
    keywords = []
    if case == "raw_contents_missing":
        req = _raw_request(raw_contents_count=2)
        keywords = ["raw_input_contents"]
    elif case == "unknown_datatype":
        req = _raw_request(datatype="INT33")
        keywords = ["INT33"]
    elif case == "raw_and_typed_contents":
        req.inputs[0].contents.int_contents.extend(PROMPT)
        keywords = ["input_ids"]
    elif case == "no_inputs":
        del req.inputs[:]
        del req.raw_input_contents[:]
        keywords = ["missing"]
    elif case == "empty_model_name":
        req.model_name = ""
        keywords = ["model"]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=60)
    err = info.value
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (err.code(), err.details())
    for k in keywords:
        assert k in err.details(), err.details()
