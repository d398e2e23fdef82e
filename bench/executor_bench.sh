#!/usr/bin/env bash
# Executor benchmark of issue "executor": output tokens/s for 1, 4, 16 and 64 concurrent requests
# (128 tokens in, 128 out, EOS ignored) on a random-weight SmolLM2-135M-shaped bf16 engine on the CPU,
# with the ratio to the single-request rate measured in the same run.
#   bash bench/executor_bench.sh       (results: stdout; paste into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/executor_bench ] || bash scripts/setup.sh
source bench/smollm2_engine.sh
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(git rev-parse --short HEAD)"
build/executor_bench "$ENGINE" --input 128 --output 128 --concurrency "${CONCURRENCY:-1,4,16,64}"
