#!/usr/bin/env python3
"""Hugging Face transformers on the same model shapes as Kiln's GPU benchmarks (random fp16 weights).

Runs on the device machine (PyTorch + transformers there). Prints one JSON line per run: generated tokens/s
for a batch of random prompts of input_len tokens generating output_len tokens (EOS ignored: min_new_tokens),
time to first token (a 1-token generate), and which mode:
  eager    model.generate with the default dynamic cache
  compile  static cache + torch.compile of the forward (skipped past --compile-budget seconds of compiling)

    python3 bench/hf_baseline.py --shape bench/shapes/phi-3-mini-128k-instruct.shape.json --batch 1 \
        --input_len 128 --output_len 128 --modes eager,compile
"""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def load(shape):
    cfg = AutoConfig.for_model(**{k: v for k, v in json.load(open(shape)).items() if k != "architectures"})
    cfg.torch_dtype = torch.float16
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    model.eval()
    return model, cfg


def timed_generate(model, ids, out_len, **kw):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len, min_new_tokens=out_len,
                             do_sample=False, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + out_len
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input_len", type=int, default=128)
    ap.add_argument("--output_len", type=int, default=128)
    ap.add_argument("--modes", default="eager")
    ap.add_argument("--compile-budget", type=float, default=240)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, cfg = load(a.shape)
    ids = torch.randint(10, cfg.vocab_size - 10, (a.batch, a.input_len), device="cuda")
    for mode in a.modes.split(","):
        kw = {}
        if mode == "compile":
            kw = {"cache_implementation": "static"}
            model.forward = torch.compile(model.forward, mode="reduce-overhead")  # graph breaks allowed (LongRoPE)
            t0 = time.perf_counter()
            timed_generate(model, ids, 4, **kw)  # compiles
            timed_generate(model, ids, 4, **kw)
            if time.perf_counter() - t0 > a.compile_budget:
                print(json.dumps({"mode": mode, "skipped": "compile took too long"}))
                continue
        timed_generate(model, ids, 2, **kw)  # warm-up
        ttft = min(timed_generate(model, ids, 1, **kw) for _ in range(3))
        total = timed_generate(model, ids, a.output_len, **kw)
        gen_tps = a.batch * a.output_len / total
        print(json.dumps({"shape": a.shape.split("/")[-1], "mode": mode, "batch": a.batch, "input_len": a.input_len,
                          "output_len": a.output_len, "ttft_ms": 1e3 * ttft, "seconds": total,
                          "output_tokens_per_s": gen_tps, "torch": torch.__version__,
                          "transformers": transformers.__version__}), flush=True)


if __name__ == "__main__":
    main()
