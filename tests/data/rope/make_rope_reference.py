#!/usr/bin/env python3
"""Generates tests/data/rope/reference.json, the RoPE reference for tests/model/rope_test.cpp.

Every number in the output comes from Hugging Face transformers itself: each case builds the model's
own config class from a config.json-style dict (`<Config>.from_dict`, the path `from_pretrained` takes),
instantiates that model's `*RotaryEmbedding` module on the CPU and runs its forward pass over positions
0 .. seq_len-1, so the dynamic-NTK and LongRoPE updates happen exactly as during generation. The script
records the module's `inv_freq` buffer and `attention_scaling` after that forward, plus some cos/sin rows.

Needs torch and transformers (5.x is what the C++ code follows). Usage:
    python3 make_rope_reference.py > reference.json
    python3 make_rope_reference.py -o reference.json
"""

import argparse
import copy
import importlib
import json
import math
import sys
import traceback


def llama(head_dim, max_pos, heads=4, **rope):
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": head_dim * heads,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "vocab_size": 128,
        "max_position_embeddings": max_pos,
    }
    cfg.update(rope)
    return cfg


def qwen2(head_dim, max_pos, heads=16, **rope):
    cfg = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": head_dim * heads,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "vocab_size": 128,
        "max_position_embeddings": max_pos,
    }
    cfg.update(rope)
    return cfg


def phi3(head_dim, max_pos, original, heads=32, **rope):
    cfg = {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "hidden_size": head_dim * heads,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "vocab_size": 32064,
        "max_position_embeddings": max_pos,
        "original_max_position_embeddings": original,
    }
    cfg.update(rope)
    return cfg


def phi(head_dim, max_pos, heads=32, **rope):
    cfg = {
        "model_type": "phi",
        "architectures": ["PhiForCausalLM"],
        "hidden_size": head_dim * heads,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "vocab_size": 128,
        "max_position_embeddings": max_pos,
    }
    cfg.update(rope)
    return cfg


# Synthetic LongRoPE rescale factors (any positive numbers do; these are exact in decimal).
SHORT32 = [round(1.0 + 0.03125 * i, 5) for i in range(32)]
LONG32 = [round(1.25 + 0.75 * i, 5) for i in range(32)]

# The Phi-3 fixture model of this repository (tests/data/rope/phi3_config*.json), rope fields only.
PHI3_SHORT8 = [3.2729, 1.8379, 2.2092, 3.2041, 1.0878, 3.3996, 2.1914, 3.2631]
PHI3_LONG8 = [2.8441, 2.143, 2.9113, 2.4234, 3.1408, 2.8571, 2.3276, 1.2873]


def phi3_fixture_v5():
    return phi3(16, 1024, 64, heads=4, rope_parameters={
        "long_factor": PHI3_LONG8,
        "original_max_position_embeddings": 64,
        "partial_rotary_factor": 1.0,
        "rope_theta": 10000.0,
        "rope_type": "longrope",
        "short_factor": PHI3_SHORT8,
        "type": "longrope",
    })


def phi3_fixture_v4():
    return phi3(16, 1024, 64, heads=4, rope_theta=10000.0, rope_scaling={
        "type": "longrope",
        "short_factor": PHI3_SHORT8,
        "long_factor": PHI3_LONG8,
    })


LLAMA31_V5 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}

DYN_V4 = {"type": "dynamic", "factor": 2.0}

CASES = [
    # --- default ---
    ("default_v5_llama_hd128", llama(128, 8192, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), 37),
    ("default_v4_qwen2_hd64_scaling_null", qwen2(64, 32768, rope_theta=1000000.0, rope_scaling=None), 100),
    ("default_v4_phi_partial05_hd64", phi(64, 2048, rope_theta=10000.0, partial_rotary_factor=0.5), 50),
    # --- linear ---
    ("linear_v4_llama_hd64", llama(64, 4096, rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0}), 10),
    ("linear_v5_llama_partial05_hd128", llama(128, 4096, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}), 20),
    # --- dynamic NTK ---
    ("dynamic_v4_llama_hd64_below", llama(64, 2048, rope_theta=10000.0, rope_scaling=DYN_V4), 1500),
    ("dynamic_v4_llama_hd64_above", llama(64, 2048, rope_theta=10000.0, rope_scaling=DYN_V4), 5000),
    ("dynamic_v5_qwen2_hd128_above_with_original", qwen2(128, 4096, rope_parameters={
        "rope_type": "dynamic", "factor": 4.0, "rope_theta": 1000000.0,
        "original_max_position_embeddings": 1024}), 6000),
    ("dynamic_v5_qwen2_hd128_between_original_and_max", qwen2(128, 4096, rope_parameters={
        "rope_type": "dynamic", "factor": 4.0, "rope_theta": 1000000.0,
        "original_max_position_embeddings": 1024}), 2000),
    ("dynamic_v5_llama_hd16_at_max", llama(16, 64, rope_parameters={
        "rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0}), 64),
    ("dynamic_v5_llama_hd16_max_plus_1", llama(16, 64, rope_parameters={
        "rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0}), 65),
    # --- llama3 ---
    ("llama3_v5_llama31_hd128", llama(128, 131072, rope_parameters=dict(LLAMA31_V5)), 100),
    ("llama3_v4_llama31_hd64", llama(64, 131072, heads=8, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}), 100),
    ("llama3_v5_fixture_hd16", llama(16, 512, rope_parameters={
        "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64, "rope_theta": 10000.0, "rope_type": "llama3"}), 20),
    # --- yarn ---
    ("yarn_v4_qwen2_hd64", qwen2(64, 131072, rope_theta=1000000.0, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}), 100),
    ("yarn_v5_llama_mscale_hd128", llama(128, 163840, rope_parameters={
        "rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 32,
        "beta_slow": 1, "original_max_position_embeddings": 4096, "rope_theta": 10000.0}), 100),
    ("yarn_v5_llama_attention_factor_no_truncate_hd16", llama(16, 640, rope_parameters={
        "rope_type": "yarn", "factor": 2.5, "attention_factor": 0.8, "beta_fast": 16.0, "beta_slow": 2.0,
        "truncate": False, "original_max_position_embeddings": 256, "rope_theta": 10000.0}), 30),
    ("yarn_v4_llama_partial05_hd64", llama(64, 8192, rope_theta=10000.0, partial_rotary_factor=0.5, rope_scaling={
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}), 40),
    # --- longrope ---
    ("longrope_v5_phi3_fixture_short", phi3_fixture_v5(), 32),
    ("longrope_v5_phi3_fixture_long", phi3_fixture_v5(), 100),
    ("longrope_v4_phi3_fixture_legacy_short", phi3_fixture_v4(), 64),
    ("longrope_v4_phi3_fixture_legacy_long", phi3_fixture_v4(), 65),
    ("longrope_v4_su_phi3_hd64_long", phi3(64, 131072, 4096, rope_theta=10000.0, rope_scaling={
        "type": "su", "short_factor": SHORT32, "long_factor": LONG32}), 5000),
    ("longrope_v5_phi3_attention_factor_hd64_short", phi3(64, 16384, 4096, rope_parameters={
        "rope_type": "longrope", "short_factor": SHORT32, "long_factor": LONG32, "attention_factor": 1.2,
        "rope_theta": 10000.0}), 4096),
]


def clean(x):
    """JSON-safe copy (NaN/inf become null; tensors become lists)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:
        import torch
        if isinstance(x, torch.Tensor):
            return clean(x.tolist())
    except Exception:
        pass
    return repr(x)


def rotary_class(model_type):
    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    names = sorted((n for n in dir(mod) if n.endswith("RotaryEmbedding") and isinstance(getattr(mod, n), type)),
                   key=len)
    if not names:
        raise RuntimeError(f"no RotaryEmbedding class in {mod.__name__}")
    return getattr(mod, names[0])


def to_v4_format(hf):
    """Only used if the installed transformers predates `rope_parameters` (4.x)."""
    hf = copy.deepcopy(hf)
    rp = hf.pop("rope_parameters", None)
    if rp:
        rp = dict(rp)
        if "rope_theta" in rp:
            hf["rope_theta"] = rp.pop("rope_theta")
        if "partial_rotary_factor" in rp:
            hf["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
        if rp.get("rope_type", rp.get("type", "default")) != "default":
            hf["rope_scaling"] = rp
    return hf


def build_config(hf, legacy):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    d = to_v4_format(hf) if legacy else copy.deepcopy(hf)
    cls = CONFIG_MAPPING[d["model_type"]]
    return cls.from_dict(d)


def forward(rot, torch, seq_len):
    x = torch.zeros(1, seq_len, 4, dtype=torch.float32)
    position_ids = torch.arange(seq_len, dtype=torch.long)[None, :]
    cos, sin = rot(x, position_ids)
    return cos, sin


def run_case(name, hf, seq_len, torch, legacy):
    out = {"name": name, "hf_config": hf, "seq_len": seq_len}
    hd = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    out["head_dim"] = hd
    config = build_config(hf, legacy)
    rp = getattr(config, "rope_parameters", None)
    if rp is None:
        rp = getattr(config, "rope_scaling", None)
    out["hf_rope_parameters_resolved"] = clean(copy.deepcopy(rp))
    cls = rotary_class(hf["model_type"])
    out["hf_rotary_class"] = cls.__name__
    rot = cls(config=config, device=torch.device("cpu"))
    out["init_inv_freq"] = clean(rot.inv_freq.detach().float().cpu())
    out["init_attention_scaling"] = float(rot.attention_scaling)
    with torch.no_grad():
        cos, sin = forward(rot, torch, seq_len)
    inv = rot.inv_freq.detach().float().cpu()
    n = inv.shape[0]
    out["inv_freq"] = clean(inv)
    out["attention_scaling"] = float(rot.attention_scaling)
    positions = sorted({0, 1, seq_len // 2, seq_len - 1})
    out["cos_sin_rows"] = [
        {"position": p, "cos": clean(cos[0, p, :n].float()), "sin": clean(sin[0, p, :n].float())}
        for p in positions
    ]
    # The init function called directly with an integer seq_len (not the tensor a forward passes).
    try:
        rope_type = (rp or {}).get("rope_type", (rp or {}).get("type", "default"))
        if rope_type == "default":
            fn = rot.compute_default_rope_parameters
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
            fn = ROPE_INIT_FUNCTIONS[rope_type]
        inv2, scale2 = fn(config, torch.device("cpu"), seq_len=seq_len)
        out["init_fn_int_seq_len_inv_freq"] = clean(inv2.float())
        out["init_fn_int_seq_len_attention_scaling"] = float(scale2)
    except Exception as e:  # informative only
        out["init_fn_error"] = f"{type(e).__name__}: {e}"
    # Dynamic NTK keeps state between forwards; record what a sequence of forwards leaves behind.
    if "dynamic" in str((rp or {}).get("rope_type", (rp or {}).get("type", ""))):
        mp = hf["max_position_embeddings"]
        rot2 = cls(config=build_config(hf, legacy), device=torch.device("cpu"))
        seq = []
        for s in [mp * 2, mp + mp // 2, mp // 2, mp, mp + 1]:
            with torch.no_grad():
                forward(rot2, torch, s)
            seq.append({"seq_len": s, "inv_freq": clean(rot2.inv_freq.detach().float().cpu())})
        out["forward_sequence"] = seq
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_default_dtype(torch.float32)
    legacy = int(transformers.__version__.split(".")[0]) < 5
    results = []
    for name, hf, seq_len in CASES:
        try:
            entry = run_case(name, hf, seq_len, torch, legacy)
        except Exception:
            entry = {"name": name, "hf_config": hf, "seq_len": seq_len, "error": traceback.format_exc()}
            print(f"case {name} failed:\n{entry['error']}", file=sys.stderr)
        entry["transformers_version"] = transformers.__version__
        entry["torch_version"] = torch.__version__
        if legacy:
            entry["note"] = "transformers < 5: rope_parameters were converted to rope_scaling + rope_theta"
        results.append(entry)
    text = json.dumps(clean(results), indent=1)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: "
          f"{sum('error' not in r for r in results)}/{len(results)} cases ok", file=sys.stderr)


if __name__ == "__main__":
    main()
