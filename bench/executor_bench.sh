#!/usr/bin/env bash
# Executor benchmark of issue "executor": output tokens/s for 1, 4, 16 and 64 concurrent requests
# (128 tokens in, 128 out, EOS ignored) on a random-weight SmolLM2-135M-shaped bf16 engine on the CPU,
# with the ratio to the single-request rate measured in the same run.
#   bash bench/executor_bench.sh       (results: stdout; paste into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/executor_bench ] || bash scripts/setup.sh
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
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(git rev-parse --short HEAD)"
build/executor_bench "$ENGINE" --input 128 --output 128 --concurrency "${CONCURRENCY:-1,4,16,64}"
