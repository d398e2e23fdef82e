"""Request-level parameters (KServe v2 `parameters`): priority and timeout are honoured, the rest is refused
by name (never ignored), over gRPC and HTTP with the official client."""
import os
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import Server, make_repo


@pytest.fixture(scope="module")
def levels_server(workdir, engine_dir, tokenizer_dir):
    """tensorrt_llm with two priority levels (requests without a priority get level 2, the lower)."""
    repo = make_repo(os.path.join(workdir, "repo_priority"), engine_dir, tokenizer_dir, decoupled=False)
    path = os.path.join(repo, "tensorrt_llm", "config.pbtxt")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\ndynamic_batching {\n  priority_levels: 2\n  default_priority_level: 2\n}\n")
    s = Server(repo)
    yield s
    assert s.stop() == 0, s.log()


def inputs(module, ids, output_len):
    tensors = [module.InferInput("input_ids", [1, len(ids)], "INT32"),
               module.InferInput("input_lengths", [1, 1], "INT32"),
               module.InferInput("request_output_len", [1, 1], "INT32")]
    tensors[0].set_data_from_numpy(np.array([ids], dtype=np.int32))
    tensors[1].set_data_from_numpy(np.array([[len(ids)]], dtype=np.int32))
    tensors[2].set_data_from_numpy(np.array([[output_len]], dtype=np.int32))
    return tensors


PROMPT = [1, 450, 2927, 338, 278, 2927, 310, 278, 14744, 29973]


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_unknown_and_sequence_parameters_are_refused(server, proto):
    module = grpcclient if proto == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if proto == "grpc" else server.http_url)
    with pytest.raises(InferenceServerException, match="unknown request parameter 'my_flag'"):
        client.infer("tensorrt_llm", inputs(module, PROMPT, 4), parameters={"my_flag": 1})
    with pytest.raises(InferenceServerException, match="sequence batching"):
        client.infer("tensorrt_llm", inputs(module, PROMPT, 4), sequence_id=7)
    # A priority needs levels in the model's config; the server says so instead of ignoring it.
    with pytest.raises(InferenceServerException, match="priority_levels"):
        client.infer("tensorrt_llm", inputs(module, PROMPT, 4), priority=1)
    # And it still serves.
    out = client.infer("tensorrt_llm", inputs(module, PROMPT, 4), timeout=10_000_000 if proto == "grpc" else None)
    assert out.as_numpy("output_ids").shape[-1] >= 4


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_priority_within_levels(levels_server, proto):
    module = grpcclient if proto == "grpc" else httpclient
    client = module.InferenceServerClient(levels_server.grpc_url if proto == "grpc" else levels_server.http_url)
    plain = client.infer("tensorrt_llm", inputs(module, PROMPT, 6)).as_numpy("output_ids")
    for p in (1, 2):
        got = client.infer("tensorrt_llm", inputs(module, PROMPT, 6), priority=p).as_numpy("output_ids")
        assert np.array_equal(got, plain)  # priority orders the queue; it never changes a result
    with pytest.raises(InferenceServerException, match="outside the model's levels 1..2"):
        client.infer("tensorrt_llm", inputs(module, PROMPT, 6), priority=3)


def test_queue_timeout_fails_only_requests_still_waiting(server):
    """16 long requests fill the engine's 8 slots; a request with a 1 microsecond timeout behind them fails
    with DEADLINE_EXCEEDED, one without a timeout completes."""
    url = server.grpc_url
    errors = []

    def long_request():
        try:
            grpcclient.InferenceServerClient(url).infer("tensorrt_llm", inputs(grpcclient, PROMPT, 200))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=long_request) for _ in range(16)]
    for t in threads:
        t.start()
    client = grpcclient.InferenceServerClient(url)
    from conftest import wait_for
    import urllib.request

    def waiting():
        text = urllib.request.urlopen("http://%s/metrics" % server.metrics_url).read().decode()
        for line in text.splitlines():
            if line.startswith("nv_trt_llm_request_metrics") and 'request_type="waiting"' in line:
                return float(line.rsplit(" ", 1)[1]) > 0
        return False

    assert wait_for(waiting, timeout=30), "the long requests never queued"
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorrt_llm", inputs(grpcclient, PROMPT, 4), timeout=1)
    assert "timeout" in str(e.value)
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    ok = client.infer("tensorrt_llm", inputs(grpcclient, PROMPT, 4))
    assert ok.as_numpy("output_ids").shape[-1] >= 4
    for t in threads:
        t.join()
    assert not errors, errors
