#!/usr/bin/env python3
"""Time llama.cpp (through the PyPI package llama-cpp-python) on a GGUF file.

Batch 1, like llama-bench's pp/tg tests:
  * pp: prompt processing of --prompt tokens in one llama_decode call
        (n_batch = n_ubatch = --prompt), from an empty KV cache;
  * tg: generation of --gen tokens, one llama_decode call per token,
        from an empty KV cache.
Token ids are fixed pseudo-random ids from the vocabulary (seeded), built
before timing: only llama_decode (+ llama_synchronize) is inside the timer,
no tokenization, no sampling, no Python-side logits copies.
One warm-up run of each, then the median of --reps runs.

    /work/llamacpp-venv/bin/python bench/llamacpp_bench.py MODEL.gguf \
        --threads 2 --prompt 512 --gen 128 --reps 3

Prints one JSON line, then one human-readable line.

ggml's CPU backend uses OpenMP here; with libgomp's default (active, spinning)
wait policy a machine with more runnable threads than cores (load average
above the core count) makes 2-thread runs many times slower (measured:
at load ~9 on 2 cores: tg 4.9 tok/s with 2 threads, 40 tok/s with 1). Run it on an
idle machine; the JSON records the load average before and after and
OMP_WAIT_POLICY (set OMP_WAIT_POLICY=passive in the environment to soften
the effect on a busy machine).
"""

import argparse
import json
import os
import platform
import random
import statistics
import time

import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser(description="llama.cpp pp/tg benchmark (batch 1)")
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    load_start = os.getloadavg()

    n_ctx = args.prompt + args.gen + 16
    llm = Llama(
        model_path=args.gguf,
        n_ctx=n_ctx,
        n_batch=max(args.prompt, 1),
        n_ubatch=max(args.prompt, 1),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        n_gpu_layers=0,
        flash_attn=False,
        verbose=False,
    )
    ctx = llm._ctx.ctx
    mem = llama_cpp.llama_get_memory(ctx)
    n_vocab = llm.n_vocab()
    rng = random.Random(args.seed)
    pp_tokens = (llama_cpp.llama_token * args.prompt)(*[rng.randrange(n_vocab) for _ in range(args.prompt)])
    tg_ids = [rng.randrange(n_vocab) for _ in range(args.gen)]
    tg_tokens = [(llama_cpp.llama_token * 1)(t) for t in tg_ids]

    def decode(arr, n):
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, n))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def run_pp():
        llama_cpp.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        decode(pp_tokens, args.prompt)
        llama_cpp.llama_synchronize(ctx)
        return time.perf_counter() - t0

    def run_tg():
        llama_cpp.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        for arr in tg_tokens:
            decode(arr, 1)
        llama_cpp.llama_synchronize(ctx)
        return time.perf_counter() - t0

    res = {}
    if args.prompt > 0:
        run_pp()  # warm-up
        pp_s = [run_pp() for _ in range(args.reps)]
        res["pp"] = {"tokens": args.prompt, "runs_s": pp_s,
                     "median_s": statistics.median(pp_s),
                     "tok_per_s": args.prompt / statistics.median(pp_s)}
    if args.gen > 0:
        run_tg()  # warm-up
        tg_s = [run_tg() for _ in range(args.reps)]
        res["tg"] = {"tokens": args.gen, "runs_s": tg_s,
                     "median_s": statistics.median(tg_s),
                     "tok_per_s": args.gen / statistics.median(tg_s)}

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = {
        "engine": "llama.cpp",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model": os.path.basename(args.gguf),
        "threads": args.threads,
        "batch": 1,
        "reps": args.reps,
        "warmup": 1,
        "n_ctx": n_ctx,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "machine": platform.machine(),
        "loadavg_at_start": list(load_start),
        "loadavg_at_end": list(load) if load else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: active)"),
        **res,
    }
    print(json.dumps(out))
    parts = [f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) {os.path.basename(args.gguf)}, "
             f"{args.threads} threads:"]
    if "pp" in res:
        parts.append(f"pp{args.prompt} {res['pp']['tok_per_s']:.1f} tok/s")
    if "tg" in res:
        parts.append(f"tg{args.gen} {res['tg']['tok_per_s']:.1f} tok/s")
    parts.append(f"(median of {args.reps} after 1 warm-up)")
    print(" ".join(parts))


if __name__ == "__main__":
    main()
