"""Shared fixtures for the server's client tests: a phi3-fixture engine, repositories written by
`kiln repo init`, and `kiln serve` processes on free ports.

The binary is $KILN_BIN (default build/kiln). Each server fixture is session-scoped: starting one costs a
model load, and the tests are written so that they do not depend on each other's requests.
"""
import gzip
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "kiln"))

# The phi3 fixture model: 32064-token vocabulary (Phi-3's tokenizer), EOS 32000, context 1024.
MAX_INPUT_LEN = 256
MAX_SEQ_LEN = 512
MAX_BATCH_SIZE = 8


def run_kiln(*args, **kw):
    return subprocess.run([KILN, *args], check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="kiln_pytest_")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_phi3_tokenizer(parent):
    """Phi-3's tokenizer folder under `parent` (tokenizer.json is stored gzipped in the repository)."""
    tok = os.path.join(parent, "phi3-tokenizer")
    os.makedirs(tok)
    with gzip.open(os.path.join(DATA, "tokenizers", "phi3", "tokenizer.json.gz"), "rb") as src, \
            open(os.path.join(tok, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(DATA, "tokenizers", "phi3", "tokenizer_config.json"), tok)
    return tok


@pytest.fixture(scope="session")
def tokenizer_dir(workdir):
    return write_phi3_tokenizer(workdir)


@pytest.fixture(scope="session")
def engine_dir(workdir):
    ckpt = os.path.join(workdir, "ckpt")
    engine = os.path.join(workdir, "engine")
    run_kiln("convert", "--model_dir", os.path.join(DATA, "models", "phi3"), "--output_dir", ckpt,
             "--dtype", "float32")
    run_kiln("build", "--checkpoint_dir", ckpt, "--output_dir", engine, "--max_batch_size", str(MAX_BATCH_SIZE),
             "--max_input_len", str(MAX_INPUT_LEN), "--max_seq_len", str(MAX_SEQ_LEN), "--max_beam_width", "4")
    return engine


class Server:
    """A running `kiln serve`: its ports, its log so far, and a way to stop it."""

    def __init__(self, repo, extra_args=()):
        self.repo = repo
        self.proc = subprocess.Popen([KILN, "serve", "--model-repository", repo, "--http-port", "0",
                                      "--grpc-port", "0", "--metrics-port", "0", *extra_args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.ports = {}
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.match(r"kiln serve: (gRPC|HTTP|metrics) on [^:]+:(\d+)", line)
                if m:
                    self.ports[m.group(1)] = int(m.group(2))
                if line.startswith("kiln serve: ready") or line.startswith("kiln serve: started"):
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        if not ready.wait(120) or self.proc.poll() is not None:
            raise RuntimeError("kiln serve did not start:\n" + "".join(self.lines))
        self.grpc_url = "localhost:%d" % self.ports["gRPC"]
        self.http_url = "localhost:%d" % self.ports["HTTP"]
        self.metrics_url = "localhost:%d" % self.ports["metrics"]

    def log(self):
        return "".join(self.lines)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def make_repo(path, engine_dir, tokenizer_dir, decoupled, extra=()):
    args = ["repo", "init", "--engine_dir", engine_dir, "--tokenizer_dir", tokenizer_dir, "--output", path,
            *extra]
    if decoupled:
        args.append("--decoupled")
    run_kiln(*args)
    return path


@pytest.fixture(scope="session")
def server(workdir, engine_dir, tokenizer_dir):
    """Models answer once per request: tensorrt_llm, preprocessing, postprocessing, ensemble, tensorrt_llm_bls."""
    repo = make_repo(os.path.join(workdir, "repo"), engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo)
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="session")
def stream_server(workdir, engine_dir, tokenizer_dir):
    """The same repository written with --decoupled: tensorrt_llm and tensorrt_llm_bls stream."""
    repo = make_repo(os.path.join(workdir, "repo_decoupled"), engine_dir, tokenizer_dir, decoupled=True,
                     extra=("--enable_kv_cache_reuse",))
    s = Server(repo)
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    """The reference tokenizer (Hugging Face transformers), to check text against ids."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def kiln_run_ids(engine_dir, input_ids, max_output_len, *extra):
    """Greedy output ids of `kiln run` for one prompt (the in-process reference the server must match)."""
    import json
    out = run_kiln("run", "--engine_dir", engine_dir, "--input_ids", ",".join(map(str, input_ids)),
                   "--max_output_len", str(max_output_len), "--json", *extra).stdout
    return json.loads(out.splitlines()[0])["output_ids"]


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
