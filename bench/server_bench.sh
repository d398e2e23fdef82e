#!/usr/bin/env bash
# Server benchmark of issue "Triton-compatible server": the same 64-concurrent workload (128 tokens in, 128 out,
# end id off) in process and through gRPC streaming, on the random-weight SmolLM2-135M-shaped bf16 engine of
# bench/executor_bench.sh, plus the idle per-request round trip of each.
#   bash bench/server_bench.sh       (results: stdout; paste into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/server_bench ] || bash scripts/setup.sh
WORK=${KILN_BENCH_DIR:-/tmp/kiln-bench}
mkdir -p "$WORK"
CKPT="$WORK/smollm2-bfloat16-ckpt"
ENGINE="$WORK/smollm2-bfloat16-b64-engine"
if [ ! -f "$CKPT/config.json" ]; then
  build/kiln convert --random_weights --config bench/smollm2-135m.shape.json --dtype bfloat16 --output_dir "$CKPT" >/dev/null
fi
if [ ! -f "$ENGINE/rank0.engine" ]; then
  build/kiln build --checkpoint_dir "$CKPT" --output_dir "$ENGINE" --max_batch_size 64 --max_input_len 128 \
    --max_output_len 128 --max_num_tokens 2048 >/dev/null
fi
REPO="$WORK/server-bench-repo"
rm -rf "$REPO"
build/kiln repo init --engine_dir "$ENGINE" --output "$REPO" --decoupled >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(git rev-parse --short HEAD)"
build/server_bench "$REPO" --input 128 --output 128 --concurrency "${CONCURRENCY:-64}" --reps "${REPS:-3}" 2>&1 \
  | grep -v "^kiln serve: "
