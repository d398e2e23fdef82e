#!/usr/bin/env python3
"""Plots the H100 results kept in bench/results/h100 into docs/gpu_benchmarks.png.

Left: Llama-3-8B shape fp16 offline throughput (output tokens/s) at TensorRT-LLM's published lengths:
Kiln, TensorRT-LLM v0.14's published H100 FP16 figures, transformers eager (batch 64, 128/128 only).
Right: Phi-3-mini shape fp16 batch-1 decode tokens/s: Kiln (CUDA graphs on/off), the issue's target,
the bandwidth floor, transformers eager.

    .venv/bin/python bench/plot_gpu.py   (needs matplotlib)
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results", "h100")
TRTLLM = {"128/128": 15572, "128/2048": 9151, "2048/128": 1904}  # v0.14 published, H100 FP16


def last_json(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def main():
    kiln = {k: last_json(os.path.join(RES, f"llama3_{k.replace('/', '_')}.json"))["output_tokens_per_s"] for k in TRTLLM}
    hf = last_json(os.path.join(RES, "hf_llama3.json"))["output_tokens_per_s"]
    phi = {}
    with open(os.path.join(RES, "phi3.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            phi[j["run"]] = j
    hf_phi = last_json(os.path.join(RES, "hf_phi3.json"))["output_tokens_per_s"]

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = list(TRTLLM)
    w = 0.27
    a.bar([i - w for i in range(3)], [kiln[k] for k in xs], w, label="Kiln (CUDA backend)")
    a.bar([i for i in range(3)], [TRTLLM[k] for k in xs], w, label="TensorRT-LLM v0.14 (published)")
    a.bar([2 + w - 2], [hf], w, label="transformers eager (batch 64)")
    a.set_xticks(range(3), [f"{k} in/out" for k in xs])
    a.set_ylabel("output tokens/s")
    a.set_title("Llama-3-8B shape, fp16, one H100, offline")
    for i, k in enumerate(xs):
        a.text(i - w, kiln[k], f"{kiln[k]:.0f}", ha="center", va="bottom", fontsize=8)
        a.text(i, TRTLLM[k], f"{TRTLLM[k]}", ha="center", va="bottom", fontsize=8)
    a.legend(fontsize=8)

    names = ["Kiln", "no host/GPU\noverlap", "no RoPE\nfusion", "no GEMV\nfusion", "no PDL", "no graphs", "target",
             "floor (BW)", "transformers\neager"]
    vals = [phi["phi3_decode_b1"]["output_tokens_per_s"], phi["phi3_decode_b1_nooverlap"]["output_tokens_per_s"],
            phi["phi3_decode_b1_noropefusion"]["output_tokens_per_s"],
            phi["phi3_decode_b1_nofusion"]["output_tokens_per_s"],
            phi["phi3_decode_b1_nopdl"]["output_tokens_per_s"], phi["phi3_decode_b1_nographs"]["output_tokens_per_s"],
            345, 405, hf_phi]
    b.bar(range(len(vals)), vals, color=["C0", "C0", "C0", "C0", "C0", "C0", "C2", "C7", "C3"])
    for i, v in enumerate(vals):
        b.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    b.set_xticks(range(len(vals)), names, fontsize=8)
    b.set_ylabel("tokens/s")
    b.set_title("Phi-3-mini shape, fp16, batch-1 decode")
    fig.tight_layout()
    out = os.path.join(HERE, "..", "docs", "gpu_benchmarks.png")
    fig.savefig(out, dpi=110)
    print("wrote", os.path.normpath(out))


if __name__ == "__main__":
    main()
