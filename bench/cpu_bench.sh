#!/usr/bin/env bash
# CPU benchmark of issue "engine core": a random-weight SmolLM2-135M-shaped model (hidden 576, 30 layers,
# 9 heads, 3 KV heads, intermediate 1536, vocab 49152, tied) in fp32 and bf16: batch-1 decode tokens/s and
# 512-token prompt processing, next to the memory-bandwidth floor measured in the same run.
#   bash bench/cpu_bench.sh            (results: stdout; paste into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/cpu_model_bench ] || bash scripts/setup.sh
WORK=${KILN_BENCH_DIR:-/tmp/kiln-bench}
mkdir -p "$WORK"
for dtype in float32 bfloat16; do
  if [ ! -f "$WORK/smollm2-$dtype-engine/rank0.engine" ]; then
    build/kiln convert --random_weights --config bench/shapes/smollm2-135m.shape.json --dtype $dtype \
      --output_dir "$WORK/smollm2-$dtype-ckpt" >/dev/null
    build/kiln build --checkpoint_dir "$WORK/smollm2-$dtype-ckpt" --output_dir "$WORK/smollm2-$dtype-engine" \
      --max_batch_size 1 --max_input_len 512 --max_output_len 128 >/dev/null
  fi
done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(git rev-parse --short HEAD)"
build/cpu_model_bench "$WORK/smollm2-float32-engine" "$WORK/smollm2-bfloat16-engine" --prompt 512 --decode 128 --reps 3
