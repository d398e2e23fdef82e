#!/usr/bin/env bash
# Server benchmark of issue "Triton-compatible server": the same 64-concurrent workload (128 tokens in, 128 out,
# end id off) in process and through gRPC streaming, on the random-weight SmolLM2-135M-shaped bf16 engine of
# bench/executor_bench.sh, plus the idle per-request round trip of each.
#   bash bench/server_bench.sh       (results: stdout; paste into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/server_bench ] || bash scripts/setup.sh
source bench/smollm2_engine.sh
REPO="$WORK/server-bench-repo"
rm -rf "$REPO"
build/kiln repo init --engine_dir "$ENGINE" --output "$REPO" --decoupled >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(git rev-parse --short HEAD)"
build/server_bench "$REPO" --input 128 --output 128 --concurrency "${CONCURRENCY:-64}" --reps "${REPS:-3}" 2>&1 \
  | grep -v "^kiln serve: "
