#!/usr/bin/env bash
# Tokenizer encode throughput, Kiln against Hugging Face `tokenizers`, both
# single-threaded, one encode(add_special_tokens=False) call per corpus line,
# over tests/data/tokenizers/corpus.jsonl.gz repeated to at least 10 MiB.
#
#   bench/tokenizer_bench.sh [BUILD_DIR]
#
# BUILD_DIR (default build-bench) is configured as a Release build if needed.
# The Python side runs in a virtual environment outside the repository
# ($TOKVENV, default /tmp/tokvenv), created with tokenizers==0.23.2 if missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-bench}
VENV=${TOKVENV:-/tmp/tokvenv}
DATA=$ROOT/tests/data/tokenizers
CORPUS=$DATA/corpus.jsonl.gz
NAMES=(llama2 llama3 phi3 qwen3)

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" --target tokenizer_bench >/dev/null

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import tokenizers" 2>/dev/null; then
  "$VENV/bin/pip" install -q "tokenizers==0.23.2"
fi

DIRS=()
for n in "${NAMES[@]}"; do DIRS+=("$DATA/$n"); done

echo "Kiln:" >&2
OURS=$("$BUILD/tokenizer_bench" "${DIRS[@]}" "$CORPUS" | tee /dev/stderr)

echo "Hugging Face tokenizers:" >&2
THEIRS=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/python" - "$CORPUS" "${DIRS[@]}" <<'PY' | tee /dev/stderr
import gzip, json, os, sys, time
import tokenizers

corpus_path, dirs = sys.argv[1], sys.argv[2:]
with gzip.open(corpus_path, "rt", encoding="utf-8") as f:
    lines = [json.loads(l) for l in f if l.strip()]
corpus_bytes = sum(len(s.encode("utf-8")) for s in lines)
repeats = -(-(10 << 20) // corpus_bytes)
print(f"# tokenizers {tokenizers.__version__}, {repeats} repeats")
for d in dirs:
    path = os.path.join(d, "tokenizer.json")
    if os.path.exists(path):
        tok = tokenizers.Tokenizer.from_file(path)
    else:
        with gzip.open(path + ".gz", "rt", encoding="utf-8") as f:
            tok = tokenizers.Tokenizer.from_str(f.read())
    encode = tok.encode
    t0 = time.perf_counter()
    for _ in range(repeats):
        for s in lines:
            encode(s, add_special_tokens=False)
    secs = time.perf_counter() - t0
    print(f"encode {os.path.basename(d)} {corpus_bytes * repeats / 1e6 / secs:.2f} MB/s")
PY
)

echo
echo "| tokenizer | Kiln MB/s | HF tokenizers MB/s | Kiln / HF |"
echo "|---|---:|---:|---:|"
for n in "${NAMES[@]}"; do
  ours=$(echo "$OURS" | awk -v n="$n" '$1 == "encode" && $2 == n { print $3 }')
  theirs=$(echo "$THEIRS" | awk -v n="$n" '$1 == "encode" && $2 == n { print $3 }')
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }')
  echo "| $n | $ours | $theirs | $ratio |"
done
