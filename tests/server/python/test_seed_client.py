"""The seed tutorial's own client against `kiln serve`.

Section 4.5 of the seed (../shared/seed/000_0e4f6b03ed3d4422.txt) is extracted at test time and run
unchanged except for the tokenizer name (pointed at the phi3 fixture tokenizer), against a repository
whose tensorrt_llm/config.pbtxt is the seed's own section 4.4, with the phi3 fixture engine. Its printed
tokens and text must equal what `kiln run` produces for the same prompt. Without ../shared beside the
repository, the committed copies in tests/data/server/ are used instead.

Run by pytest (scripts/test.sh; the binary is $KILN_BIN, default build/kiln), or by hand:
python test_seed_client.py KILN_BINARY
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from conftest import write_phi3_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
SEED = os.path.join(ROOT, "..", "shared", "seed", "000_0e4f6b03ed3d4422.txt")


def seed_section(title_prefix, lang):
    """The first ```lang block after the heading that starts with title_prefix."""
    text = open(SEED, encoding="utf-8").read()
    start = text.index(title_prefix)
    fence = text.index("```" + lang, start)
    body_start = text.index("\n", fence) + 1
    return text[body_start:text.index("```", body_start)]


def wait_ready(port, proc, timeout=120):
    import tritonclient.grpc as grpcclient
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("kiln serve exited early with code %s" % proc.returncode)
        try:
            client = grpcclient.InferenceServerClient(url="localhost:%d" % port)
            if client.is_server_ready() and client.is_model_ready("tensorrt_llm"):
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError("kiln serve did not become ready")


def run_seed_client(kiln):
    tmp = tempfile.mkdtemp(prefix="kiln_seed_")
    try:
        # The seed's tokenizer is Phi-3's: the fixture copy.
        tok = write_phi3_tokenizer(tmp)

        have_seed = os.path.exists(SEED)
        if have_seed:
            config = seed_section("#### 4.4.", "python")
            client = seed_section("#### 4.5.", "python")
        else:
            config = open(os.path.join(DATA, "server", "seed_tensorrt_llm_config.pbtxt"), encoding="utf-8").read()
            client = open(os.path.join(DATA, "server", "seed_client.py"), encoding="utf-8").read()
        assert "microsoft/Phi-3-mini-128k-instruct" in client
        client = client.replace("microsoft/Phi-3-mini-128k-instruct", tok)

        # The repository: the seed's config as written; the phi3 fixture engine in tensorrt_llm/1.
        repo = os.path.join(tmp, "repo")
        model_dir = os.path.join(repo, "tensorrt_llm")
        os.makedirs(model_dir)
        with open(os.path.join(model_dir, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(config)
        ckpt = os.path.join(tmp, "ckpt")
        engine = os.path.join(model_dir, "1")
        subprocess.run([kiln, "convert", "--model_dir", os.path.join(DATA, "models", "phi3"), "--output_dir", ckpt,
                        "--dtype", "float32"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([kiln, "build", "--checkpoint_dir", ckpt, "--output_dir", engine, "--max_batch_size", "4",
                        "--max_input_len", "512", "--max_seq_len", "1024"], check=True, stdout=subprocess.DEVNULL)

        server = subprocess.Popen([kiln, "serve", "--model-repository", repo], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            wait_ready(8001, server)
            # Bytes, not text mode: a generated "\r" must not turn into "\n" on the way.
            seed_run = subprocess.run([sys.executable, "-c", client], capture_output=True, timeout=600,
                                      env=dict(os.environ, PYTHONIOENCODING="utf-8"))
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=60)
        seed_stdout = seed_run.stdout.decode("utf-8", errors="replace")
        if seed_run.returncode != 0:
            print(seed_stdout, seed_run.stderr.decode("utf-8", errors="replace"))
            print(out)
            raise AssertionError("the seed's client failed")
        if server.returncode != 0:
            print(out)
            raise AssertionError("kiln serve did not exit 0 on SIGTERM (exit %s)" % server.returncode)
        assert "SIGTERM" in out, out

        # The same prompt through `kiln run`.
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tok)
        prompt = re.search(r'prompt = """(.*?)"""', client, re.S).group(1)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        run = subprocess.run([kiln, "run", "--engine_dir", engine, "--input_ids", ",".join(map(str, ids)),
                              "--max_output_len", str(1024 - len(ids)), "--end_id", "32007", "--json"],
                             capture_output=True, text=True, check=True)
        import json
        expected = json.loads(run.stdout.splitlines()[0])["output_ids"]
        sep = "-" * 100
        parts = seed_stdout.split(sep + "\n")
        # The client prints: sep, the token array, sep, the decoded text, sep.
        printed_tokens, printed_text = parts[1], parts[2]
        want_tokens = str(np.array(expected, dtype=np.int32)) + "\n"
        want_text = tokenizer.decode(expected) + "\n"
        assert printed_tokens == want_tokens, (printed_tokens[:300], want_tokens[:300])
        if printed_text != want_text:
            i = next((k for k in range(min(len(printed_text), len(want_text))) if printed_text[k] != want_text[k]),
                     min(len(printed_text), len(want_text)))
            raise AssertionError("text differs at %d of %d/%d: %r vs %r" % (
                i, len(printed_text), len(want_text), printed_text[i - 20:i + 40], want_text[i - 20:i + 40]))
        print("seed client: %d tokens, text equal to kiln run (%s)" %
              (len(expected), "seed file" if have_seed else "committed copy"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_seed_client():
    run_seed_client(os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "kiln")))


if __name__ == "__main__":
    run_seed_client(sys.argv[1])
