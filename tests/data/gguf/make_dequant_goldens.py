#!/usr/bin/env python3
"""Generates tests/data/gguf/dequant_goldens.json, the independent reference for tests/core/quant_test.cpp.

The expected values come from the `gguf` package on PyPI (the numpy code in gguf.quants), not from Kiln:
  - dequantize: for every block type Kiln reads, fixed pseudo-random blocks of random bytes (so NaN, inf and
    subnormal half scales occur), except that every other block gets finite half scales drawn from a wide
    range of magnitudes (subnormal to large); the value types F32/F16/BF16 are "blocks" of one value.
  - quantize: Q8_0, Q4_0 and Q4_1 of fixed inputs: random rows at several magnitudes plus blocks that probe
    the rounding rules (exact .5 ties, a negative extreme, equal magnitudes of both signs, constant blocks,
    zeros, a scale that underflows half and one that overflows it).

Everything is written as hex of the little-endian bytes: "blocks" (the raw blocks), "values" (the f32 bits
of the dequantized values), "input" (f32 bits) and "expected" (the quantized bytes).

Usage (a throwaway venv keeps the repo and the system Python clean):
    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy
    /tmp/gguf-venv/bin/python tests/data/gguf/make_dequant_goldens.py [-o OUT.json]
"""

import argparse
import importlib.metadata
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0x6B696C6E  # "kiln"

# Block type -> (number of blocks, byte offsets of the half fields inside one block).
DEQUANT = {
    T.F32: (64, []),
    T.F16: (64, [0]),
    T.BF16: (64, []),
    T.Q4_0: (16, [0]),
    T.Q4_1: (16, [0, 2]),
    T.Q5_0: (16, [0]),
    T.Q5_1: (16, [0, 2]),
    T.Q8_0: (16, [0]),
    T.Q4_K: (6, [0, 2]),
    T.Q5_K: (6, [0, 2]),
    T.Q6_K: (6, [208]),
}
QUANTIZE = [T.Q8_0, T.Q4_0, T.Q4_1]


def finite_half(rng):
    """A finite half of random sign and a magnitude from subnormal (2^-26 rounds to 0 or 2^-24) to 2^6."""
    v = np.float32(rng.standard_normal()) * np.float32(2.0) ** np.float32(rng.integers(-26, 7))
    return np.array([v], dtype=np.float16)


def dequant_case(rng, qtype):
    n_blocks, half_offsets = DEQUANT[qtype]
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for b in range(0, n_blocks, 2):
        for off in half_offsets:
            raw[b, off:off + 2] = finite_half(rng).view(np.uint8)
    with np.errstate(all="ignore"):  # inf * 0 and the like in the random blocks are intended
        values = dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
    assert values.size == n_blocks * block_elems
    return {
        "type": qtype.name,
        "id": int(qtype),
        "n": int(values.size),
        "blocks": raw.tobytes().hex(),
        "values": values.astype("<f4").tobytes().hex(),
    }


def quantize_inputs(rng):
    """Rows of 32-value blocks for the quantizers."""
    blocks = []
    for scale in (1e-3, 0.05, 1.0, 30.0, 1000.0):
        for _ in range(4):
            blocks.append(rng.standard_normal(32) * scale)
    blocks.append(rng.uniform(-1.0, 1.0, 32))
    blocks.append(rng.uniform(0.25, 2.0, 32))  # all positive: Q4_1's min is not the most negative code
    # Q8_0 with d = 1: x * id hits exact halves, which round away from zero.
    blocks.append(np.array([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, 125.5, -126.5] + [float(i) - 10.5 for i in range(22)]))
    # Q4_0 with d = 1 (max = -8): codes at x * id + 8.5 exactly on integers; Q4_1 ties at 0.5 steps.
    blocks.append(np.array([-8.0] + [float(i % 17) - 8.0 for i in range(31)]))
    blocks.append(np.array([3.0, -3.0] + list(rng.uniform(-2.0, 2.0, 30))))  # |max| tie: the first wins
    blocks.append(np.array([-3.0, 3.0] + list(rng.uniform(-2.0, 2.0, 30))))
    blocks.append(np.zeros(32))
    blocks.append(np.full(32, 0.75))
    blocks.append(np.full(32, -2.5))
    blocks.append(rng.standard_normal(32) * 1e-30)  # tiny inputs: d underflows half to 0
    blocks.append(rng.standard_normal(32) * 1e7)  # d overflows half (stored as inf)
    return np.concatenate(blocks).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "dequant_goldens.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    out = {
        "about": "Expected dequantized values and quantized bytes from gguf-py's numpy gguf.quants; "
                 "written by make_dequant_goldens.py",
        "gguf_py_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "seed": SEED,
        "dequantize": [dequant_case(rng, t) for t in DEQUANT],
        "quantize": [],
    }
    x = quantize_inputs(rng)
    with np.errstate(over="ignore"):  # the block whose scale overflows half
        for qtype in QUANTIZE:
            q = quantize(x.reshape(1, -1), qtype).reshape(-1)
            out["quantize"].append({
                "type": qtype.name,
                "id": int(qtype),
                "n": int(x.size),
                "input": x.astype("<f4").tobytes().hex(),
                "expected": q.tobytes().hex(),
            })
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, gguf {out['gguf_py_version']})")


if __name__ == "__main__":
    main()
