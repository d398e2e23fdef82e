"""Writes GGUF versions of the tiny fixture models (tests/data/models), the way llama.cpp's converter lays
them out, for the GGUF import golden tests (tests/model/gguf_import_test.cpp):

  mistral_llama_f32.gguf   Mistral weights as a `llama`-architecture file: q/k rows permuted for llama.cpp's
                           interleaved RoPE, sliding window in the metadata, every tensor F32
  mistral_llama_q8_0.gguf  the same with Q8_0 matrices where the row length allows (others stay F32)
  qwen2_f32.gguf           `qwen2` (q/k/v biases, tied embedding; no permutation), F32
  qwen3_q4_1.gguf          `qwen3` (q/k norms), Q4_1 matrices where possible

Their expected outputs are the fixtures' Hugging Face goldens (same weights; the quantized files within a
tolerance). Needs the PyPI packages `gguf` and `numpy`:  python make_fixture_ggufs.py
"""
import json
import os
import struct

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        if e["dtype"] == "F32":
            t = np.frombuffer(data[a:b], dtype=np.float32)
        elif e["dtype"] == "BF16":  # widened exactly
            t = (np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{name}: dtype {e['dtype']}")
        out[name] = t.reshape(e["shape"])
    return out


def permute_for_llama_cpp(w, heads):
    # Hugging Face row (head, half, i) goes to row (head, i, half): rotate-half pairs become adjacent.
    rows = w.shape[0]
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(model, out_name, arch, qtype, permute, extra_kv):
    cfg = json.load(open(os.path.join(MODELS, model, "config.json")))
    w = read_safetensors(os.path.join(MODELS, model, "model.safetensors"))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta") or 10000.0
    path = os.path.join(HERE, out_name)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"kiln fixture {model}")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    for key, value in extra_kv.items():
        writer.add_uint32(f"{arch}.{key}", value)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, t in w.items():
        if name in names:
            gname = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            stem, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{parts[stem]}.{kind}"
        if permute and (".attn_q." in gname or ".attn_k." in gname):
            t = permute_for_llama_cpp(t, heads if ".attn_q." in gname else kv_heads)
        t = np.ascontiguousarray(t, dtype=np.float32)
        if qtype is not None and t.ndim == 2 and t.shape[1] % 32 == 0:
            writer.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gname, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(out_name, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    Q = gguf.GGMLQuantizationType
    write("mistral", "mistral_llama_f32.gguf", "llama", None, True, {"attention.sliding_window": 24})
    write("mistral", "mistral_llama_q8_0.gguf", "llama", Q.Q8_0, True, {"attention.sliding_window": 24})
    write("qwen2", "qwen2_f32.gguf", "qwen2", None, False, {})
    write("qwen3", "qwen3_q4_1.gguf", "qwen3", Q.Q4_1, False, {})
