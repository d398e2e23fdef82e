"""Load: many concurrent requests, far more than the engine's batch (max_batch_size 8), so that the server
queues them. Every one must finish without an error, and greedy decoding must give each request exactly the
tokens (or text) of the same prompt sent alone.

 - 256 concurrent streaming requests: gRPC ModelStreamInfer on stream_server's decoupled tensorrt_llm
   (tritonclient.grpc.aio, one bidirectional stream per request, spread over a few channels), prompts of
   varied length, request_output_len 16..32, streaming=True; each stream must end with its final response.
 - A mixed HTTP load on `server`: 64 concurrent generate requests on ensemble, with tensorrt_llm infer
   (JSON tensors) and tensorrt_llm_bls generate requests at the same time.

The executor refuses requests as overloaded beyond max_queue_size waiting ones; kiln's default is 4096 and
`kiln repo init` writes no max_queue_size (nor a dynamic_batching queue policy), so 256 are accepted.
Throughput is printed (this machine has 2 cores: the numbers are for comparison, not asserted).
"""
import asyncio
import concurrent.futures
import random
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient

from conftest import MAX_INPUT_LEN, kiln_run_ids, wait_for

N_STREAMS = 256
CHANNELS = 4


def metric_value(server, name, model, label=None):
    text = requests.get("http://%s/metrics" % server.metrics_url, timeout=10).text
    head = '%s{model="%s",version="1"' % (name, model)
    for line in text.splitlines():
        if line.startswith(head) and (label is None or label in line):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError((name, model, label))


def stream_prompts(n, seed=1234):
    """n prompts of varied length (1..MAX_INPUT_LEN - 8 ids after BOS) and output lengths 16..32."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        length = rng.choice([1, 2, 5, 17, 40, 64, 100, 150, 200, MAX_INPUT_LEN - 8]) if k % 4 == 0 \
            else rng.randrange(1, 120)
        ids = [1] + [rng.randrange(3, 32000) for _ in range(length)]
        out.append((ids, rng.randrange(16, 33)))
    return out


def stream_inputs(ids, out_len):
    out = []
    for name, arr in (("input_ids", np.array([ids], np.int32)),
                      ("input_lengths", np.array([[len(ids)]], np.int32)),
                      ("request_output_len", np.array([[out_len]], np.int32)),
                      ("streaming", np.array([[True]], bool))):
        i = grpcaio.InferInput(name, list(arr.shape), "BOOL" if arr.dtype == bool else "INT32")
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


async def one_stream(client, key, ids, out_len):
    """One request on its own ModelStreamInfer stream: (tokens, responses, final seen, error, ttft)."""
    async def requests_iter():
        yield {"model_name": "tensorrt_llm", "inputs": stream_inputs(ids, out_len), "request_id": key,
               "enable_empty_final_response": True}

    tokens, responses, final, error, first = [], 0, False, None, None
    t0 = time.monotonic()
    async for result, err in client.stream_infer(requests_iter()):
        if err is not None:
            error = err
            break
        if final:
            error = "a response after the final one"
            break
        responses += 1
        got = result.as_numpy("output_ids")
        if got is not None and got.size:
            if first is None:
                first = time.monotonic() - t0
            tokens += got.reshape(-1).tolist()
        if result.get_response().id != key:
            error = "response for request id %r on the stream of %r" % (result.get_response().id, key)
            break
        p = result.get_response().parameters
        if "triton_final_response" in p and p["triton_final_response"].bool_param:
            final = True
            break  # the final response ends the request: the stream is closed here
    return tokens, responses, final, error, first


async def run_streams(url, work, concurrent):
    clients = [grpcaio.InferenceServerClient(url) for _ in range(CHANNELS)]
    try:
        if concurrent:
            t0 = time.monotonic()
            results = await asyncio.gather(*(one_stream(clients[k % CHANNELS], "load-%d" % k, ids, n)
                                             for k, (ids, n) in enumerate(work)))
        else:
            t0 = time.monotonic()
            results = [await one_stream(clients[0], "alone-%d" % k, ids, n) for k, (ids, n) in enumerate(work)]
        return results, time.monotonic() - t0
    finally:
        for c in clients:
            await c.close()


def test_256_concurrent_streams_match_each_prompt_alone(stream_server, engine_dir):
    work = stream_prompts(N_STREAMS)
    ok_before = metric_value(stream_server, "nv_inference_request_success", "tensorrt_llm")
    failed_before = metric_value(stream_server, "nv_inference_request_failure", "tensorrt_llm")

    alone, alone_s = asyncio.run(run_streams(stream_server.grpc_url, work, concurrent=False))
    for k, (tokens, _, final, error, _) in enumerate(alone):
        assert error is None and final, (k, error)
        assert len(tokens) == work[k][1], k  # no end_id: the whole request_output_len
    # The server's reference is `kiln run`'s (in-process, same engine) for a few of them.
    for k in (0, 1, 4, 8):
        assert alone[k][0] == kiln_run_ids(engine_dir, work[k][0], work[k][1]), k

    results, load_s = asyncio.run(run_streams(stream_server.grpc_url, work, concurrent=True))
    errors = [(k, r[3]) for k, r in enumerate(results) if r[3] is not None]
    assert not errors, "%d of %d streams failed, e.g. %s" % (len(errors), N_STREAMS, errors[:3])
    not_final = [k for k, r in enumerate(results) if not r[2]]
    assert not not_final, "streams without a final response: %s" % not_final[:10]
    differ = [k for k in range(N_STREAMS) if results[k][0] != alone[k][0]]
    assert not differ, "%d streams differ from their prompt sent alone, e.g. #%d: %s vs %s" % (
        len(differ), differ[0], results[differ[0]][0], alone[differ[0]][0])
    assert all(r[1] >= 2 for r in results), "streaming=True must give a response per step"

    tokens = sum(len(r[0]) for r in results)
    ttft = sorted(r[4] for r in results)
    print("\n%d concurrent streams: %.2f s, %.0f tokens/s, %.1f requests/s; time to first token p50 %.0f ms, "
          "p99 %.0f ms (alone, one after another: %.2f s, %.0f tokens/s)"
          % (N_STREAMS, load_s, tokens / load_s, N_STREAMS / load_s, 1000 * ttft[len(ttft) // 2],
             1000 * ttft[int(len(ttft) * 0.99)], alone_s, tokens / alone_s))

    # Counted: every request a success, nothing failed, pending or holding KV-cache blocks.
    assert wait_for(lambda: metric_value(stream_server, "nv_inference_request_success", "tensorrt_llm")
                    == ok_before + 2 * N_STREAMS, timeout=10)
    assert metric_value(stream_server, "nv_inference_request_failure", "tensorrt_llm") == failed_before
    assert metric_value(stream_server, "nv_inference_pending_request_count", "tensorrt_llm") == 0
    assert wait_for(lambda: metric_value(stream_server, "nv_trt_llm_kv_cache_block_metrics", "tensorrt_llm",
                                         'kv_cache_block_type="used"') == 0, timeout=10)


# ---- a mixed HTTP load -----------------------------------------------------------------------------------------

WORDS = ("the river light garden north stone music window paper summer island quiet market silver engine "
         "forest winter letter mountain city bridge story ocean morning history simple question answer").split()


def text_prompts(n, seed=99):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 40))).capitalize() for _ in range(n)]


def generate(session, server, model, prompt, max_tokens):
    r = session.post("http://%s/v2/models/%s/generate" % (server.http_url, model),
                     json={"text_input": prompt, "max_tokens": max_tokens}, timeout=120)
    return r.status_code, r.json()


def trtllm_http(server, ids, out_len):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        inputs = []
        for name, arr in (("input_ids", np.array([ids], np.int32)), ("input_lengths", np.array([[len(ids)]], np.int32)),
                          ("request_output_len", np.array([[out_len]], np.int32))):
            i = httpclient.InferInput(name, list(arr.shape), "INT32")
            i.set_data_from_numpy(arr, binary_data=False)
            inputs.append(i)
        r = client.infer("tensorrt_llm", inputs)
        n = int(r.as_numpy("sequence_length").reshape(-1)[0])
        return r.as_numpy("output_ids").reshape(-1)[:n].tolist()
    finally:
        client.close()


def test_mixed_http_load_matches_each_request_alone(server):
    n_ensemble, n_trtllm, n_bls = 64, 32, 32
    session = requests.Session()
    # The text requests and what each gives alone.
    rng = random.Random(7)
    text_work = []
    for p in text_prompts(n_ensemble + n_bls):
        n = rng.randrange(16, 33)
        status, body = generate(session, server, "ensemble", p, n)
        assert status == 200, (p, body)
        text_work.append((p, n, body["text_output"]))
    id_work = [(ids, n) for ids, n in stream_prompts(n_trtllm, seed=5)]
    id_alone = [trtllm_http(server, ids, n) for ids, n in id_work]
    bls_alone = [generate(session, server, "tensorrt_llm_bls", p, n)[1]["text_output"] for p, n, _ in text_work[n_ensemble:]]
    for (p, n, text), bls in zip(text_work[n_ensemble:], bls_alone):
        assert bls == text, "the BLS model and the ensemble differ for %r" % p

    jobs = [("ensemble", k) for k in range(n_ensemble)] + [("tensorrt_llm", k) for k in range(n_trtllm)] + \
        [("tensorrt_llm_bls", k) for k in range(n_bls)]
    random.Random(3).shuffle(jobs)

    def run(job):
        model, k = job
        if model == "tensorrt_llm":
            return job, 200, trtllm_http(server, *id_work[k])
        p, n, _ = text_work[k if model == "ensemble" else n_ensemble + k]
        with requests.Session() as s:  # a connection of its own
            status, body = generate(s, server, model, p, n)
        return job, status, body

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    elapsed = time.monotonic() - t0
    failures = []
    for (model, k), status, body in results:
        if status != 200:
            failures.append((model, k, status, body))
        elif model == "tensorrt_llm":
            assert body == id_alone[k], (model, k)
        elif model == "ensemble":
            assert body["text_output"] == text_work[k][2], (model, k)
        else:
            assert body["text_output"] == bls_alone[k], (model, k)
    assert not failures, failures[:3]
    print("\nmixed HTTP load: %d concurrent requests (%d ensemble generate, %d tensorrt_llm infer, %d BLS "
          "generate) in %.2f s, %.1f requests/s" % (len(jobs), n_ensemble, n_trtllm, n_bls, elapsed, len(jobs) / elapsed))
    for model in ("ensemble", "tensorrt_llm", "tensorrt_llm_bls"):
        assert metric_value(server, "nv_inference_pending_request_count", model) == 0
