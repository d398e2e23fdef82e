#!/usr/bin/env bash
# Issue "a real model out of the box": Kiln next to llama.cpp on the same GGUF (SmolLM2-135M-Instruct Q4_1)
# and the same 2 cores, batch 1: prompt processing of 512 tokens and generation of 128 tokens (tokens/s),
# alternating the two programs, best of $REPS each.
#   LLAMACPP_PYTHON=/path/to/venv/bin/python bash bench/smollm2_vs_llamacpp.sh
# LLAMACPP_PYTHON: a Python with llama-cpp-python built from source (pip install llama-cpp-python with
# CMAKE_ARGS="-DGGML_NATIVE=ON"; not committed, CI never builds it). Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/kiln ] || bash scripts/setup.sh
PY=${LLAMACPP_PYTHON:-/work/llamacpp-venv/bin/python}
REPS=${REPS:-3}
GGUF=$(bash scripts/smollm2_gguf.sh)
WORK=${KILN_BENCH_DIR:-/tmp/kiln-bench}/smollm2-q4_1
if [ ! -f "$WORK/engine/rank0.engine" ]; then
  rm -rf "$WORK" && mkdir -p "$WORK"
  build/kiln convert --gguf "$GGUF" --output_dir "$WORK/ckpt" >/dev/null
  build/kiln build --checkpoint_dir "$WORK/ckpt" --output_dir "$WORK/engine" --max_batch_size 1 \
    --max_input_len 512 --max_output_len 256 >/dev/null
fi
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), kiln $(git rev-parse --short HEAD), $($PY -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)')"
best() { sort -g | tail -1; }
kpp=(); ktg=(); lpp=(); ltg=()
for r in $(seq 1 "$REPS"); do
  kpp+=("$(build/kiln bench --engine_dir "$WORK/engine" --input_len 512 --output_len 1 --num_requests 3 --concurrency 1 --json |
    $PY -c 'import json,sys; print(json.load(sys.stdin)["prefill_tokens_per_s_per_request"]["p50"])')")
  ktg+=("$(build/kiln bench --engine_dir "$WORK/engine" --input_len 1 --output_len 129 --num_requests 3 --concurrency 1 --json |
    $PY -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s_per_request"]["p50"])')")
  out=$($PY bench/llamacpp_bench.py "$GGUF" --threads "$(nproc)" --prompt 512 --gen 128 --reps 3 | head -1)
  lpp+=("$(echo "$out" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["pp"]["tok_per_s"])')")
  ltg+=("$(echo "$out" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["tg"]["tok_per_s"])')")
done
KPP=$(printf '%s\n' "${kpp[@]}" | best); KTG=$(printf '%s\n' "${ktg[@]}" | best)
LPP=$(printf '%s\n' "${lpp[@]}" | best); LTG=$(printf '%s\n' "${ltg[@]}" | best)
printf '%-28s %12s %12s %8s\n' "batch 1, $(nproc) threads" "kiln" "llama.cpp" "ratio"
printf '%-28s %12.1f %12.1f %7.2fx\n' "prompt 512 tokens (tok/s)" "$KPP" "$LPP" "$(echo "$KPP / $LPP" | bc -l)"
printf '%-28s %12.1f %12.1f %7.2fx\n' "generate 128 tokens (tok/s)" "$KTG" "$LTG" "$(echo "$KTG / $LTG" | bc -l)"
echo "per rep: kiln pp ${kpp[*]} tg ${ktg[*]}; llama.cpp pp ${lpp[*]} tg ${ltg[*]}; load after $(cut -d' ' -f1 /proc/loadavg)"
