"""`kiln serve` with a tensor- and pipeline-parallel engine (tp 2 x pp 2: four ranks as threads on the CPU):
the Triton client gets the ids and log-probs that one rank gives (`kiln run` on the single-rank engine), for
several concurrent requests (batched, cut into pipeline micro-batches), and the text models work on top.

run: .venv/bin/python -m pytest -q tests/server/python/test_parallel.py
"""
import os
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import endpoint_helpers as eh
from conftest import DATA, MAX_BATCH_SIZE, MAX_INPUT_LEN, MAX_SEQ_LEN, Server, make_repo, run_kiln

TIMEOUT = 60


@pytest.fixture(scope="module")
def parallel_engine_dir(workdir):
    ckpt = os.path.join(workdir, "ckpt_tp2_pp2")
    engine = os.path.join(workdir, "engine_tp2_pp2")
    run_kiln("convert", "--model_dir", os.path.join(DATA, "models", "phi3"), "--output_dir", ckpt,
             "--dtype", "float32", "--tp_size", "2", "--pp_size", "2")
    out = run_kiln("build", "--checkpoint_dir", ckpt, "--output_dir", engine, "--max_batch_size",
                   str(MAX_BATCH_SIZE), "--max_input_len", str(MAX_INPUT_LEN), "--max_seq_len", str(MAX_SEQ_LEN))
    assert "per rank (rank 0 of 4)" in out.stdout, out.stdout
    return engine


@pytest.fixture(scope="module")
def parallel_server(workdir, parallel_engine_dir, tokenizer_dir):
    repo = make_repo(os.path.join(workdir, "repo_tp2_pp2"), parallel_engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo)
    yield s
    assert s.stop() == 0, s.log()


def test_parallel_engine_answers_as_one_rank(parallel_server, engine_dir, tokenizer):
    prompts = [eh.PROMPT, eh.PROMPT_2, eh.PROMPT_3, eh.PROMPT + " " + eh.PROMPT_2]
    ids = [eh.encode_prompt(tokenizer, parallel_server.repo, p) for p in prompts]
    refs = [eh.reference_run(engine_dir, i, eh.MAX_TOKENS) for i in ids]  # the single-rank engine
    results = [None] * len(ids)

    def ask(k):
        client = grpcclient.InferenceServerClient(parallel_server.grpc_url)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("output_ids", "output_log_probs")]
        results[k] = client.infer("tensorrt_llm", eh.token_inputs(grpcclient, ids[k], eh.MAX_TOKENS,
                                                                  return_log_probs=True),
                                  outputs=outputs, client_timeout=TIMEOUT)
        client.close()

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, ref in enumerate(refs):
        assert results[k].as_numpy("output_ids")[0, 0].tolist() == ref["output_ids"], prompts[k]
        assert results[k].as_numpy("output_log_probs")[0, 0].tolist() == pytest.approx(ref["log_probs"], abs=1e-4)


def test_parallel_engine_serves_text(parallel_server, engine_dir, tokenizer):
    client = grpcclient.InferenceServerClient(parallel_server.grpc_url)
    _, _, text = eh.reference_text(engine_dir, tokenizer, parallel_server.repo, eh.PROMPT, eh.MAX_TOKENS)
    result = client.infer("ensemble", eh.text_inputs(grpcclient, eh.PROMPT, eh.MAX_TOKENS), client_timeout=TIMEOUT)
    assert result.as_numpy("text_output")[0].decode("utf-8") == text
    client.close()
