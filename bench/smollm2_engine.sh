# Sourced by the benchmark scripts: makes (once, cached in $WORK) the random-weight SmolLM2-135M-shaped bf16
# checkpoint and its engine (max_batch_size 64, 128 tokens in / 128 out, 2048 tokens per iteration), and sets
# ENGINE to its folder.
WORK=${KILN_BENCH_DIR:-/tmp/kiln-bench}
mkdir -p "$WORK"
CKPT="$WORK/smollm2-bfloat16-ckpt"
ENGINE="$WORK/smollm2-bfloat16-b64-engine"
if [ ! -f "$CKPT/config.json" ]; then
  build/kiln convert --random_weights --config bench/shapes/smollm2-135m.shape.json --dtype bfloat16 --output_dir "$CKPT" >/dev/null
fi
if [ ! -f "$ENGINE/rank0.engine" ]; then
  build/kiln build --checkpoint_dir "$CKPT" --output_dir "$ENGINE" --max_batch_size 64 --max_input_len 128 \
    --max_output_len 128 --max_num_tokens 2048 >/dev/null
fi
