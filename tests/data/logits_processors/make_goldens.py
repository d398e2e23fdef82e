#!/usr/bin/env python3
"""Generates tests/data/logits_processors/goldens.json.gz for tests/executor/logits_processor_test.cpp
(LogitsProcessorGoldens).

Each case draws seeded random float32 logits [vocab 1000] and random prompt/output token ids, runs Hugging Face
transformers' own logits processor classes over them in the order `generate` builds them
(RepetitionPenaltyLogitsProcessor, NoBadWordsLogitsProcessor, MinNewTokensLengthLogitsProcessor, then
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper) and records the float64 softmax of the float32
scores they produce, plus every input.

Two steps have no transformers class and are computed here in numpy from their definitions, independently of
the C++ code: embedding_bias (scores + bias, before everything) and OpenAI's presence/frequency penalties
(scores -= presence * (count > 0) + frequency * count over the OUTPUT tokens, right after the repetition
penalty). Cases that use them say so in "reference".

Cases where the C++ and transformers may legitimately disagree are avoided, and the script checks it:
no tie at the top-k boundary, and no top-p boundary within 1e-4 of a cumulative probability (transformers sums
float32 probabilities, Kiln doubles); multi-token bad words are only matched against contexts longer than the
word (transformers skips a word as long as the context or longer).

Needs torch, transformers (5.x) and numpy. Usage:
    python3 make_goldens.py goldens.json.gz
"""

import argparse
import gzip
import json
import math
import sys

import numpy as np
import torch
import transformers
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

VOCAB = 1000


def f32(x):
    """The float32 value nearest x, as the exact Python float (so JSON round-trips it bit for bit)."""
    return float(np.float32(x))


def softmax64(scores32):
    s = scores32.astype(np.float64)
    m = np.max(s)
    if not np.isfinite(m):
        raise ValueError("every score is -inf")
    e = np.exp(s - m)
    return e / e.sum()


def case(name, **p):
    base = dict(
        name=name,
        sigma=3.0,
        prompt_len=24,
        output_len=12,
        embedding_bias=False,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        bad_words=[],
        min_length=0,
        end_ids=[],
        temperature=1.0,
        top_k=0,
        top_p=0.0,
    )
    base.update(p)
    return base


CASES = [
    case("identity"),
    case("temperature_0.7", temperature=0.7),
    case("temperature_1.6", temperature=1.6),
    case("temperature_0.25", temperature=0.25, sigma=1.0),
    case("top_k_1", top_k=1),
    case("top_k_10", top_k=10),
    case("top_k_50", top_k=50),
    case("top_k_999", top_k=999),
    case("top_p_0.9", top_p=0.9),
    case("top_p_0.5", top_p=0.5),
    case("top_p_0.1", top_p=0.1),
    case("top_p_0.97_flat", top_p=0.97, sigma=0.5),
    case("repetition_1.3", repetition_penalty=1.3),
    case("repetition_0.7", repetition_penalty=0.7),
    case("repetition_2.5_long_prompt", repetition_penalty=2.5, prompt_len=300, output_len=40),
    case("min_length_active", min_length=20, end_ids=[2]),
    case("min_length_two_end_ids", min_length=13, end_ids=[2, 777]),
    case("min_length_done", min_length=12, end_ids=[2]),
    case("bad_words_single", bad_words=[[5], [17], [999]]),
    case("bad_words_multi_matching", bad_words="matching"),
    case("bad_words_multi_not_matching", bad_words="not_matching"),
    case("presence_frequency", presence_penalty=0.6, frequency_penalty=0.35, output_len=80),
    case("negative_presence_frequency", presence_penalty=-0.5, frequency_penalty=-0.2, output_len=60),
    case("embedding_bias", embedding_bias=True),
    case("temperature_top_k", temperature=0.8, top_k=40),
    case("top_k_top_p", top_k=100, top_p=0.8),
    case("temperature_top_p", temperature=1.3, top_p=0.85),
    case("temperature_top_k_top_p", temperature=0.6, top_k=64, top_p=0.7, sigma=1.0),
    case("penalties_and_warpers", repetition_penalty=1.2, bad_words="matching", min_length=30, end_ids=[0, 3],
         temperature=0.9, top_k=80, top_p=0.9),
    case("everything", embedding_bias=True, repetition_penalty=1.15, presence_penalty=0.4, frequency_penalty=0.1,
         bad_words="matching", min_length=40, end_ids=[2], temperature=1.1, top_k=200, top_p=0.95, output_len=30),
    case("repetition_presence_top_p", repetition_penalty=0.9, presence_penalty=1.0, top_p=0.6, output_len=50),
]


def bad_words_for(kind, context, rng):
    """Bad words mixing one-token words with multi-token ones whose prefix does / does not end the context."""
    words = [[int(rng.integers(VOCAB))]]
    if kind == "matching":
        for n in (2, 3, 4):  # prefix = the last n-1 context tokens: the last token gets banned
            words.append([int(t) for t in context[-(n - 1):]] + [int(rng.integers(VOCAB))])
        words.append([int(context[-3]), int(context[-2]), int(rng.integers(VOCAB))])  # tail shifted: no match
    else:
        for n in (2, 3):
            prefix = [int(t) for t in context[-(n - 1):]]
            prefix[0] = (prefix[0] + 1) % VOCAB  # differs in its first token only
            words.append(prefix + [int(rng.integers(VOCAB))])
    return words


def run_case(c, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(VOCAB) * c["sigma"]).astype(np.float32)
    prompt = rng.integers(0, VOCAB // 4, c["prompt_len"])  # a narrow range so tokens repeat
    output = rng.integers(0, VOCAB // 4, c["output_len"])
    context = np.concatenate([prompt, output])
    bad_words = c["bad_words"]
    if isinstance(bad_words, str):
        bad_words = bad_words_for(bad_words, context, rng)
    bias = (rng.standard_normal(VOCAB) * 2.0).astype(np.float32) if c["embedding_bias"] else None
    temperature, rep = f32(c["temperature"]), f32(c["repetition_penalty"])
    presence, frequency = f32(c["presence_penalty"]), f32(c["frequency_penalty"])
    top_p = f32(c["top_p"])
    reference = "transformers"

    input_ids = torch.tensor(context, dtype=torch.long).unsqueeze(0)
    scores = torch.from_numpy(logits.copy()).unsqueeze(0)
    if bias is not None:
        scores = torch.from_numpy((scores.numpy()[0] + bias)[None, :])
        reference = "transformers+numpy"
    if rep != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(penalty=rep)(input_ids, scores)
    if presence != 0.0 or frequency != 0.0:
        counts = np.bincount(output, minlength=VOCAB).astype(np.float32)
        pen = np.float32(presence) * (counts > 0).astype(np.float32) + np.float32(frequency) * counts
        scores = torch.from_numpy((scores.numpy()[0] - pen).astype(np.float32)[None, :])
        reference = "transformers+numpy"
    if bad_words:
        # No eos_token_id: Kiln bans one-token bad words even when they are end ids.
        scores = NoBadWordsLogitsProcessor(bad_words_ids=bad_words)(input_ids, scores)
    if c["min_length"] > 0:
        scores = MinNewTokensLengthLogitsProcessor(
            prompt_length_to_skip=len(prompt), min_new_tokens=c["min_length"], eos_token_id=c["end_ids"]
        )(input_ids, scores)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(input_ids, scores)
    if c["top_k"] > 0:
        kth = np.sort(scores.numpy()[0])[::-1]
        k = c["top_k"]
        if k < VOCAB and kth[k - 1] == kth[k]:
            return None  # a tie at the boundary: transformers keeps both, Kiln the lower id
        scores = TopKLogitsWarper(top_k=k)(input_ids, scores)
    if 0.0 < top_p < 1.0:
        before = scores.numpy()[0].astype(np.float64)
        p = np.sort(softmax64(scores.numpy()[0]))[::-1]
        exclusive = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        if np.min(np.abs(exclusive - top_p)) < 1e-4:
            return None  # too close to call between float32 and float64 sums
        scores = TopPLogitsWarper(top_p=top_p)(input_ids, scores)
        kept = int(np.sum(np.isfinite(scores.numpy()[0])))
        want = int(np.sum(exclusive < top_p))
        assert kept == want, (c["name"], kept, want, np.sum(np.isfinite(before)))
    processed = scores.numpy()[0].astype(np.float32)
    probs = softmax64(processed)
    return dict(
        name=c["name"],
        reference=reference,
        seed=seed,
        logits=[float(x) for x in logits],
        prompt=[int(t) for t in prompt],
        output=[int(t) for t in output],
        embedding_bias=[] if bias is None else [float(x) for x in bias],
        repetition_penalty=rep,
        presence_penalty=presence,
        frequency_penalty=frequency,
        bad_words=bad_words,
        min_length=c["min_length"],
        end_ids=c["end_ids"],
        temperature=temperature,
        top_k=c["top_k"],
        top_p=top_p,
        kept=int(np.sum(probs > 0)),
        probs=[float(x) for x in probs],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="path of the .json.gz to write")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = []
    for i, c in enumerate(CASES):
        for attempt in range(100):
            r = run_case(c, seed=1000 * i + attempt)
            if r is not None:
                break
        else:
            sys.exit(f"{c['name']}: no usable draw")
        cases.append(r)
        print(f"{r['name']:32s} seed={r['seed']:6d} kept={r['kept']:4d} ref={r['reference']}", file=sys.stderr)
    doc = dict(
        generator="tests/data/logits_processors/make_goldens.py",
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        vocab=VOCAB,
        cases=cases,
    )
    text = json.dumps(doc, separators=(",", ":")).encode()
    # No name and mtime 0 in the gzip header: the same inputs give the same bytes.
    with open(args.output, "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(text)


if __name__ == "__main__":
    main()
