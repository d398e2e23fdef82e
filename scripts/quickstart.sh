#!/usr/bin/env bash
# The main job end to end on the Phi-3-architecture fixture model shipped in tests/data:
# Hugging Face folder -> kiln convert -> kiln build -> kiln run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORK=${KILN_WORK_DIR:-/tmp/kiln-quickstart}
MODEL=tests/data/models/phi3
rm -rf "$WORK"
set -x
build/kiln convert --model_dir "$MODEL" --output_dir "$WORK/phi3-ckpt" --dtype bfloat16
build/kiln build --checkpoint_dir "$WORK/phi3-ckpt" --output_dir "$WORK/phi3-engine" \
  --max_batch_size 1 --max_input_len 256 --max_output_len 64 --gemm_plugin bfloat16
build/kiln run --engine_dir "$WORK/phi3-engine" --input_ids 1119,2740,9247,22184,679 --max_output_len 24
