#!/usr/bin/env python3
"""How far llama.cpp agrees with itself: greedy generation on SmolLM2 under other llama.cpp settings.

The goldens (make_llamacpp_goldens.py) fix one llama.cpp configuration. Quantized inference is chaotic:
every matmul quantizes its input activations to 8 bits per block of 32, so a change in the last bit of
any value can flip a rounding, and the flips cascade through the layers into logit changes of ~0.1.
This script measures that on llama.cpp alone, by rerunning the goldens' prompts with settings that
change only float rounding or summation order, and records for each variant the tokens it generates
and how many leading tokens equal the goldens'. The C++ test (tests/model/smollm2_llamacpp_test.cpp)
prints Kiln's agreement next to these.

    /path/to/llamacpp-venv/bin/python tests/data/gguf/make_llamacpp_variants.py GGUF
"""

import argparse
import json
import os

import llama_cpp
from llama_cpp import Llama

import make_llamacpp_goldens as goldens

VARIANTS = {
    # Fused flash attention: another order of the same float16 operations.
    "flash_attention": {"flash_attn": True},
    # KV cache in float32: more precise than the default float16.
    "kv_cache_f32": {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32},
    # Prompt in micro-batches of 32 tokens: other matmul shapes, same math.
    "ubatch_32": {"n_batch": 32, "n_ubatch": 32},
    # Control: one thread instead of two must change nothing (rows do not depend on the split).
    "one_thread": {"n_threads": 1, "n_threads_batch": 1},
}


def leading_equal(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--goldens", default=os.path.join(here, "smollm2_llamacpp_goldens.json"))
    ap.add_argument("-o", "--out", default=os.path.join(here, "smollm2_llamacpp_variants.json"))
    args = ap.parse_args()
    with open(args.goldens) as f:
        gold = {p["name"]: p["generated_ids"] for p in json.load(f)["prompts"]}

    base = {k: goldens.SETTINGS[k] for k in ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch",
                                             "seed", "n_gpu_layers", "flash_attn")}
    out = {"llama_cpp_python": llama_cpp.__version__, "base_settings": base, "variants": {}}
    for name, change in VARIANTS.items():
        llm = Llama(model_path=args.gguf, verbose=False, **{**base, **change})
        rows = {}
        for prompt_name, text in goldens.PROMPTS:
            ids = goldens.run_prompt(llm, text, set())["generated_ids"]
            rows[prompt_name] = {"generated_ids": ids, "equal_to_goldens": leading_equal(ids, gold[prompt_name])}
        at16 = sum(r["equal_to_goldens"] >= 16 for r in rows.values())
        print(f"{name:16s} {[r['equal_to_goldens'] for r in rows.values()]}  >= 16 tokens on {at16}/{len(rows)}")
        out["variants"][name] = {"settings": {k: str(v) for k, v in change.items()}, "prompts": rows,
                                 "prompts_equal_for_16": at16}
        del llm
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
