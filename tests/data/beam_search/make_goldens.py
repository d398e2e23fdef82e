#!/usr/bin/env python3
"""Generates tests/data/beam_search/goldens.json, the beam-search reference for tests/executor/beam_search_test.cpp.

For each fixture model in tests/data/models/{llama,mistral,qwen2,qwen3,phi3} (fp32, eager attention, CPU) it runs
transformers' own `model.generate(..., do_sample=False, num_beams=4, num_return_sequences=4)` on the first two
prompts of the model's golden.json and records the returned hypotheses (generated tokens only, best first) and
`sequences_scores` (sum of log-probs / generated_len ** length_penalty).

The tiny random models almost never emit their real EOS, so most cases take as EOS a token the model does emit,
so that beams really finish early and the finished-hypotheses path (length penalty, early stopping, only the top
num_beams candidates may finish) is exercised. Per model and prompt, with 10 new tokens and greedy's step-3 token
as EOS: (length_penalty, early_stopping) = (1.0, True), (0.5, False), (2.0, "never"). Per model, also:
  - the model's real EOS ids (none for the Qwen fixtures: beams then only end at max length);
  - the three early_stopping modes under one EOS (or pair) picked so that their results differ: False vs "never"
    if some pick makes them differ within 10 or 20 new tokens, else True vs False;
  - the two EOS ids that end the most hypotheses (3 * num_beams candidates a step).
Picks are among greedy's tokens and the most frequent tokens of an EOS-free beam search.

Needs torch and transformers 5.x (the C++ code follows 5.17's `_beam_search`). Takes a few minutes. Usage:
    python3 make_goldens.py                 # writes goldens.json beside this script
    python3 make_goldens.py -o OUT.json [--models_dir DIR]
"""

import argparse
import itertools
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["llama", "mistral", "qwen2", "qwen3", "phi3"]
NUM_BEAMS = 4
MAX_NEW_TOKENS = 10
# (length_penalty, early_stopping) combos run with greedy's step-3 token as EOS.
COMBOS = [(1.0, True), (0.5, False), (2.0, "never")]
ES_MODES = (True, False, "never")


def es_code(early_stopping):
    """early_stopping as Kiln's SamplingConfig spells it: 1 = True, 0 = False (heuristic), -1 = "never"."""
    return {True: 1, False: 0, "never": -1}[early_stopping]


def greedy(model, prompt, n):
    """The first n tokens of greedy decoding, by plain forwards (argmax of the last position's logits)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def beam_search(model, real_eos, prompt, length_penalty, early_stopping, eos_ids, max_new_tokens):
    """transformers' beam search: ([generated tokens] best first, [sequences_scores])."""
    import torch

    model.generation_config.eos_token_id = real_eos or None
    kwargs = dict(do_sample=False, num_beams=NUM_BEAMS, num_return_sequences=NUM_BEAMS, max_new_tokens=max_new_tokens,
                  length_penalty=length_penalty, early_stopping=early_stopping, return_dict_in_generate=True,
                  output_scores=True)
    if eos_ids:
        kwargs.update(eos_token_id=eos_ids, pad_token_id=eos_ids[0])
    else:
        # No EOS at all: generate() must not fall back to the model's.
        model.generation_config.eos_token_id = None
        kwargs.update(pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], dtype=torch.long), **kwargs)
    sequences, scores = [], []
    for i in range(NUM_BEAMS):
        gen = out.sequences[i, len(prompt):].tolist()
        # Generated length: beam_indices holds -1 past the end of a hypothesis (padded with pad_token_id).
        length = int((out.beam_indices[i] != -1).sum())
        toks = gen[:length]
        # A hypothesis ends at its first EOS or at max_new_tokens.
        first_eos = next((j for j, t in enumerate(toks) if t in eos_ids), None)
        assert (first_eos is None and length == max_new_tokens) or first_eos == length - 1, (toks, eos_ids)
        sequences.append(toks)
        scores.append(float(out.sequences_scores[i]))
    return sequences, scores


def ended(sequences, eos_ids):
    return sum(1 for s in sequences if s and s[-1] in eos_ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=os.path.join(HERE, "goldens.json"))
    ap.add_argument("--models_dir", default=os.path.join(HERE, "..", "models"))
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cases = []
    for name in MODELS:
        model_dir = os.path.join(args.models_dir, name)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        real_eos = model.generation_config.eos_token_id
        real_eos = [] if real_eos is None else ([real_eos] if isinstance(real_eos, int) else list(real_eos))
        with open(os.path.join(model_dir, "golden.json")) as f:
            prompts = [c["prompt"] for c in json.load(f)["cases"][:2]]

        def run(p, lp, es, eos, max_new=MAX_NEW_TOKENS):
            return beam_search(model, real_eos, prompts[p], lp, es, eos, max_new)

        runs = []  # (prompt index, length_penalty, early_stopping, eos ids, max_new_tokens, what the EOS is)
        picks = []  # per prompt: candidate EOS tokens, most promising first
        for p, prompt in enumerate(prompts):
            g = greedy(model, prompt, 6)
            for lp, es in COMBOS:
                runs.append((p, lp, es, [g[3]], MAX_NEW_TOKENS, "greedy's step-3 token"))
            counts = {}
            for seq in run(p, 1.0, False, [])[0]:
                for t in seq:
                    counts[t] = counts.get(t, 0) + 1
            picks.append(list(dict.fromkeys(g + sorted(counts, key=lambda t: -counts[t])))[:8])
        runs.append((0, 1.0, False, real_eos, MAX_NEW_TOKENS, "the model's own"))

        # The early_stopping modes under one EOS pick: False and "never" differing if possible.
        found, fallback = None, None
        for max_new, lp, p in itertools.product((MAX_NEW_TOKENS, 2 * MAX_NEW_TOKENS), (1.0, 2.0), range(len(prompts))):
            eos_sets = [[t] for t in picks[p]] + [list(c) for c in itertools.combinations(picks[p][:6], 2)]
            for eos in eos_sets:
                outs = {es: run(p, lp, es, eos, max_new) for es in (False, "never")}
                if outs[False] != outs["never"]:
                    found = (p, lp, eos, max_new, 'False and "never" differ')
                    break
                if fallback is None and max_new == MAX_NEW_TOKENS and run(p, lp, True, eos) != outs[False]:
                    fallback = (p, lp, eos, max_new, "True and False differ")
            if found:
                break
        found = found or fallback
        if found:
            p, lp, eos, max_new, what = found
            for es in ES_MODES:
                runs.append((p, lp, es, eos, max_new, f"picked: {what}"))
        else:
            print(f"{name}: no pick makes the early_stopping modes differ", file=sys.stderr)

        # Two EOS ids (3 * num_beams candidates a step): the pair that ends the most hypotheses.
        best = None
        for pair in itertools.combinations(picks[1], 2):
            n = ended(run(1, 1.0, False, list(pair))[0], pair)
            if best is None or n > best[0]:
                best = (n, list(pair))
        runs.append((1, 1.0, False, best[1], MAX_NEW_TOKENS, "picked: the pair that ends the most hypotheses"))

        for p, lp, es, eos, max_new, what in runs:
            seqs, scores = run(p, lp, es, eos, max_new)
            print(f"{name} prompt {p} lp={lp} es={es!r} eos={eos} max_new={max_new} ({what}): "
                  f"{ended(seqs, eos)}/{NUM_BEAMS} end with EOS, lengths {[len(s) for s in seqs]}", file=sys.stderr)
            cases.append({"model": name, "prompt_index": p, "prompt": prompts[p], "max_new_tokens": max_new,
                          "length_penalty": lp, "early_stopping": es_code(es), "eos_token_ids": eos, "eos_is": what,
                          "sequences": seqs, "scores": scores})

    head = {"transformers": transformers.__version__, "torch": torch.__version__, "num_beams": NUM_BEAMS}
    # Compact: one case a line.
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',"cases":[\n'
    text += ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]}\n"
    json.loads(text)  # well-formed
    with open(args.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
