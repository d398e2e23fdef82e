"""What test_endpoints_grpc.py and test_endpoints_http.py share: the repository's configs as protobuf, reference
outputs (`kiln run` for ids, the Hugging Face tokenizer for text), request builders that work with either
tritonclient module, and a Prometheus text parser.

The builders take the client module (tritonclient.grpc or tritonclient.http) so that both protocols send the
same tensors: shapes with the batch dimension, as the seed's client does (input_ids [1, len] INT32).
"""
import json
import os
import re

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import conftest

MODELS = ("ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls")

# Prompts: the first generated token of PROMPT starts with a SentencePiece space on the phi3 fixture; whatever
# they give, the tests compare against the references below, never against fixed strings.
PROMPT = "The capital of France is"
PROMPT_2 = "Once upon a time"
PROMPT_3 = "def main():"
MAX_TOKENS = 8


# ---- the repository ------------------------------------------------------------------------------------------

def load_config(repo, model):
    """The model's config.pbtxt as Triton's ModelConfig message."""
    with open(os.path.join(repo, model, "config.pbtxt"), encoding="utf-8") as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def config_param(config, key, default=None):
    return config.parameters[key].string_value if key in config.parameters else default


def config_bool(config, key, default):
    v = config_param(config, key)
    if v is None:
        return default
    return v.strip().lower() in ("true", "1", "yes", "y", "t")


def kserve_type(data_type):
    """A config's TYPE_xxx as the datatype model metadata reports (TYPE_STRING is BYTES)."""
    name = model_config_pb2.DataType.Name(data_type)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def metadata_shape(config, dims):
    return ([-1] if config.max_batch_size > 0 else []) + list(dims)


def expected_metadata(config):
    """(inputs, outputs): lists of (name, datatype, shape) as model metadata must report them."""
    def tensors(ts):
        return [(t.name, kserve_type(t.data_type), metadata_shape(config, t.dims)) for t in ts]
    return tensors(config.input), tensors(config.output)


def echoes_prompt(repo):
    """Whether the repository's tensorrt_llm model puts the prompt in front of output_ids."""
    return not config_bool(load_config(repo, "tensorrt_llm"), "exclude_input_in_output", False)


def encode_prompt(tokenizer, repo, text):
    """The prompt's ids as the repository's preprocessing model encodes it (its add_special_tokens)."""
    add = config_bool(load_config(repo, "preprocessing"), "add_special_tokens", False)
    return tokenizer.encode(text, add_special_tokens=add)


# ---- references ----------------------------------------------------------------------------------------------

_ids_cache = {}
_run_cache = {}


def reference_ids(engine_dir, input_ids, max_output_len):
    """The greedy output ids of `kiln run` for one prompt (conftest.kiln_run_ids, cached)."""
    key = (engine_dir, tuple(input_ids), max_output_len)
    if key not in _ids_cache:
        _ids_cache[key] = conftest.kiln_run_ids(engine_dir, list(input_ids), max_output_len)
    return _ids_cache[key]


def reference_run(engine_dir, input_ids, max_output_len):
    """`kiln run`'s whole JSON result for one prompt (output_ids, log_probs, finish_reason; cached)."""
    key = (engine_dir, tuple(input_ids), max_output_len)
    if key not in _run_cache:
        out = conftest.run_kiln("run", "--engine_dir", engine_dir, "--input_ids", ",".join(map(str, input_ids)),
                                "--max_output_len", str(max_output_len), "--json").stdout
        _run_cache[key] = json.loads(out.splitlines()[0])
    return _run_cache[key]


def expected_text(tokenizer, prompt_ids, generated_ids, skip_special_tokens=True):
    """The text models' text_output for `generated_ids`: the Hugging Face decode of the generated ids, except
    that a SentencePiece leading space of the first generated token is kept (kiln decodes with the prompt in
    front as context, src/tokenizer/detokenizer.h), so that prompt + text_output reads right. Computed here as
    decode(prompt + generated) minus decode(prompt), which is exactly that for SentencePiece tokenizers."""
    prompt_ids, generated_ids = list(prompt_ids), list(generated_ids)
    before = tokenizer.decode(prompt_ids, skip_special_tokens=skip_special_tokens)
    full = tokenizer.decode(prompt_ids + generated_ids, skip_special_tokens=skip_special_tokens)
    assert full.startswith(before), (before, full)
    text = full[len(before):]
    # Only the leading space may differ from the plain decode of the generated ids.
    plain = tokenizer.decode(generated_ids, skip_special_tokens=skip_special_tokens)
    assert text.lstrip(" ") == plain.lstrip(" "), (text, plain)
    return text


def reference_text(engine_dir, tokenizer, repo, prompt, max_tokens):
    """(prompt ids, generated ids, text_output) that the text models must produce for `prompt`."""
    ids = encode_prompt(tokenizer, repo, prompt)
    gen = reference_ids(engine_dir, ids, max_tokens)
    return ids, gen, expected_text(tokenizer, ids, gen)


# ---- requests --------------------------------------------------------------------------------------------------

def _input(client_mod, name, array, datatype, binary):
    t = client_mod.InferInput(name, list(array.shape), datatype)
    if binary is None:
        t.set_data_from_numpy(array)
    else:
        t.set_data_from_numpy(array, binary_data=binary)
    return t


def token_inputs(client_mod, input_ids, max_tokens, binary=None, streaming=None, return_log_probs=None,
                 drop=()):
    """The tensorrt_llm model's inputs for one prompt (batch 1). binary: tritonclient.http's binary_data flag
    (None for gRPC). Inputs named in `drop` are left out (to provoke errors)."""
    arrays = [("input_ids", np.array([input_ids], dtype=np.int32), "INT32"),
              ("input_lengths", np.array([[len(input_ids)]], dtype=np.int32), "INT32"),
              ("request_output_len", np.array([[max_tokens]], dtype=np.int32), "INT32")]
    if streaming is not None:
        arrays.append(("streaming", np.array([[streaming]], dtype=bool), "BOOL"))
    if return_log_probs is not None:
        arrays.append(("return_log_probs", np.array([[return_log_probs]], dtype=bool), "BOOL"))
    return [_input(client_mod, n, a, dt, binary) for n, a, dt in arrays if n not in drop]


def text_inputs(client_mod, prompts, max_tokens, binary=None, stream=None, stop_words=None):
    """ensemble / tensorrt_llm_bls inputs: one batch row per prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    arrays = [("text_input", np.array([[p.encode("utf-8")] for p in prompts], dtype=object), "BYTES"),
              ("max_tokens", np.array([[max_tokens]] * len(prompts), dtype=np.int32), "INT32")]
    if stream is not None:
        arrays.append(("stream", np.array([[stream]] * len(prompts), dtype=bool), "BOOL"))
    if stop_words is not None:
        arrays.append(("stop_words", np.array([[w.encode() for w in stop_words]] * len(prompts), dtype=object),
                       "BYTES"))
    return [_input(client_mod, n, a, dt, binary) for n, a, dt in arrays]


def preprocessing_inputs(client_mod, prompts, output_len, stop_words=None, binary=None):
    if isinstance(prompts, str):
        prompts = [prompts]
    arrays = [("QUERY", np.array([[p.encode("utf-8")] for p in prompts], dtype=object), "BYTES"),
              ("REQUEST_OUTPUT_LEN", np.array([[output_len]] * len(prompts), dtype=np.int32), "INT32")]
    if stop_words is not None:
        arrays.append(("STOP_WORDS_DICT", np.array([[w.encode() for w in stop_words]] * len(prompts), dtype=object),
                       "BYTES"))
    return [_input(client_mod, n, a, dt, binary) for n, a, dt in arrays]


def postprocessing_inputs(client_mod, rows, seq_lens=None, binary=None):
    """rows: one list of ids per batch row (one beam each)."""
    width = max(len(r) for r in rows)
    tokens = np.array([[r + [0] * (width - len(r))] for r in rows], dtype=np.int32)  # [batch, 1 beam, width]
    arrays = [("TOKENS_BATCH", tokens, "INT32")]
    if seq_lens is not None:
        arrays.append(("SEQUENCE_LENGTH", np.array([[n] for n in seq_lens], dtype=np.int32), "INT32"))
    return [_input(client_mod, n, a, dt, binary) for n, a, dt in arrays]


def word_list(tokenizer, words):
    """The [2, N] stop/bad word list the preprocessing model makes: the concatenated ids of each word (encoded
    without special tokens), then the cumulative end offsets padded with -1."""
    ids, offsets = [], []
    for w in words:
        ids += tokenizer.encode(w, add_special_tokens=False)
        offsets.append(len(ids))
    n = max(len(ids), 1)
    return [ids + [0] * (n - len(ids)), offsets + [-1] * (n - len(offsets))]


# ---- metrics ---------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset of (label, value)): float}; checks every line parses."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        key = (m.group(1), labels)
        assert key not in samples, "sample given twice: %r" % line
        samples[key] = float(m.group(3))
    return samples


def metric(samples, name, **labels):
    want = frozenset(labels.items())
    return samples.get((name, want))


def metric_series(samples, name, **labels):
    """Every sample of `name` whose labels include `labels`: {labels dict as frozenset: value}."""
    want = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and want <= set(k[1])}


def check_histogram(samples, name, **labels):
    """A histogram's buckets are cumulative and end at +Inf == _count; returns (count, sum)."""
    buckets = {dict(k)["le"]: v for k, v in metric_series(samples, name + "_bucket", **labels).items()}
    assert buckets, "no %s_bucket series with %s" % (name, labels)
    assert "+Inf" in buckets
    finite = sorted((float(le), v) for le, v in buckets.items() if le != "+Inf")
    values = [v for _, v in finite] + [buckets["+Inf"]]
    assert values == sorted(values), "%s buckets are not cumulative: %s" % (name, finite)
    count = metric(samples, name + "_count", **labels)
    total = metric(samples, name + "_sum", **labels)
    assert count == buckets["+Inf"], (count, buckets["+Inf"])
    assert total is not None and total >= 0
    return count, total


def shared_memory_calls(client):
    """Every shared-memory call of a tritonclient (gRPC or HTTP), by name: each must be refused."""
    return {
        "system status": lambda: client.get_system_shared_memory_status(),
        "system register": lambda: client.register_system_shared_memory("region", "/kiln_shm_test", 64),
        "system unregister": lambda: client.unregister_system_shared_memory("region"),
        "cuda status": lambda: client.get_cuda_shared_memory_status(),
        "cuda register": lambda: client.register_cuda_shared_memory("region", b"\0" * 64, 0, 64),
        "cuda unregister": lambda: client.unregister_cuda_shared_memory("region"),
    }
