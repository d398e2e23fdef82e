#!/usr/bin/env bash
# On the GPU device machine, from the repo root with dist/ carried (bench/cuda_bundle.sh made it):
#   bash bench/cuda_device.sh [tests|linear|phi3|llama|profile|hf|tp|all] ...   (several run in turn)
# tests: the CUDA backend's tests (op parity with the CPU backend, every fixture's Hugging Face goldens on
#        the GPU); phi3: Phi-3-mini shape fp16 (random weights) batch-1 decode and 1024-token TTFT;
# llama: Llama-3-8B shape fp16 offline throughput at TensorRT-LLM's published lengths;
# linear: cuBLASLt vs gemv.cu on the linear layers of both shapes; hf: transformers on the same shapes;
# profile: per-kernel GPU times (ncu) of a Phi-3-mini 1024-token prefill and its decode steps;
# splits: the decode attention's split cost model swept (kernel times and Phi-3-mini decode);
# tp: Llama-3-8B shape at tp=2 on two GPUs against one (needs a machine with two GPUs, e.g. nvidia-h200-x2).
# Logs and JSON go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
D=${DIST:-dist}   # the bundle's folder (carried)
export LD_LIBRARY_PATH=$PWD/$D/lib:${LD_LIBRARY_PATH:-}
export KILN_TEST_DATA_DIR=$PWD/tests/data
OUT=${OUT:-/tmp/kiln-out}
mkdir -p "$OUT"
WORK=${KILN_DEVICE_WORK:-/tmp/kiln-device}
mkdir -p "$WORK"
what=${1:-all}
if [[ $# -gt 1 ]]; then for w in "$@"; do bash "$0" "$w"; done; exit 0; fi
K=$D/kiln

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"

if [[ $what == tests || $what == all ]]; then
  $D/kiln_tests --gtest_filter='Cuda*:*/Cuda*' >"$OUT/tests.log" 2>&1
  echo "tests exit $?"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|^\[ *OK|Failure|error|kernel time|GB/s|TFLOP|rope" "$OUT/tests.log" | tail -60
fi

if [[ $what == linear || $what == all ]]; then
  for m in phi3 llama3; do $D/cuda_linear_bench $m | tee "$OUT/linear_$m.txt"; done
fi

# Random-weight engine of a shape (fp16), built for the GPU.
engine() {  # name shape.json max_batch max_input max_seq [max_num_tokens] [tp_size]
  local name=$1 shape=$2
  if [[ ! -f $WORK/$name-engine/config.json ]]; then
    $K convert --random_weights --config "$shape" --dtype float16 --output_dir "$WORK/$name-ckpt" \
      --tp_size "${7:-1}" >/dev/null || return 1
    $K build --checkpoint_dir "$WORK/$name-ckpt" --output_dir "$WORK/$name-engine" --backend cuda \
      --max_batch_size "$3" --max_input_len "$4" --max_seq_len "$5" --max_num_tokens "${6:-8192}" >"$OUT/build_$name.log" 2>&1 \
      || { tail -5 "$OUT/build_$name.log"; return 1; }
    grep "kiln tune" "$OUT/build_$name.log" | tail -1
    rm -rf "$WORK/$name-ckpt"
  fi
}

if [[ $what == phi3 || $what == all ]]; then
  t0=$(date +%s)
  engine phi3 bench/shapes/phi-3-mini-128k-instruct.shape.json 64 2048 4096 || echo "phi3 engine failed"
  echo "phi3 engine ready in $(( $(date +%s) - t0 )) s"
  KILN_CUDA_TIMING=1 $K bench --engine_dir "$WORK/phi3-engine" --input_len 128 --output_len 256 --num_requests 3 \
    --concurrency 1 --warmup 1 --json >"$OUT/phi3_decode_b1.json" 2>"$OUT/phi3_decode_b1.err"
  grep "timing" "$OUT/phi3_decode_b1.err"
  KILN_CUDA_GRAPHS=0 $K bench --engine_dir "$WORK/phi3-engine" --input_len 128 --output_len 256 --num_requests 3 \
    --concurrency 1 --warmup 1 --json >"$OUT/phi3_decode_b1_nographs.json" 2>"$OUT/phi3_decode_b1_nographs.err"
  KILN_OVERLAP=0 KILN_CUDA_TIMING=1 $K bench --engine_dir "$WORK/phi3-engine" --input_len 128 --output_len 256 \
    --num_requests 3 --concurrency 1 --warmup 1 --json >"$OUT/phi3_decode_b1_nooverlap.json" 2>"$OUT/phi3_decode_b1_nooverlap.err"
  for off in PDL FUSION ROPE_FUSION; do  # each feature switched off in turn, for comparison
    name=phi3_decode_b1_no$(echo $off | tr A-Z a-z | tr -d _)
    env KILN_CUDA_$off=0 KILN_CUDA_TIMING=1 $K bench --engine_dir "$WORK/phi3-engine" --input_len 128 --output_len 256 --num_requests 3 \
      --concurrency 1 --warmup 1 --json >"$OUT/$name.json" 2>"$OUT/$name.err"
  done
  KILN_CUDA_TIMING=1 $K bench --engine_dir "$WORK/phi3-engine" --input_len 1024 --output_len 1 --num_requests 6 --concurrency 1 \
    --warmup 1 --json >"$OUT/phi3_ttft_1024.json" 2>"$OUT/phi3_ttft_1024.err"; tail -3 "$OUT/phi3_ttft_1024.err"
  python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
with open(os.path.join(out, "phi3.jsonl"), "w") as all_:
    for f in ("phi3_decode_b1.json", "phi3_decode_b1_nooverlap.json", "phi3_decode_b1_nographs.json", "phi3_decode_b1_nopdl.json",
              "phi3_decode_b1_nofusion.json", "phi3_decode_b1_noropefusion.json", "phi3_ttft_1024.json"):
        try:
            j = json.loads(open(os.path.join(out, f)).read().strip().splitlines()[-1])
        except Exception as e:
            print(f, "no result:", e); continue
        j["run"] = f[:-5]
        all_.write(json.dumps(j) + "\n")
        os.remove(os.path.join(out, f))
        print(f"{f}: out tok/s {j['output_tokens_per_s']:.1f}  ttft p50 {j['ttft_ms']['p50']:.2f} ms  "
              f"itl p50 {j['itl_ms']['p50']:.3f} ms  decode tok/s/req p50 {j['decode_tokens_per_s_per_request']['p50']:.1f}")
PY
  cat "$OUT"/phi3_*.err > "$OUT/phi3.log"; rm -f "$OUT"/phi3_*.err
fi

# A quick look: Phi-3-mini batch-1 decode with and without the host/GPU overlap, and the 1024-token TTFT.
if [[ $what == phi3quick ]]; then
  engine phi3 bench/shapes/phi-3-mini-128k-instruct.shape.json 64 2048 4096 || echo "phi3 engine failed"
  for ov in 1 0 1; do
    KILN_OVERLAP=$ov KILN_CUDA_TIMING=${TIMING:-0} $K bench --engine_dir "$WORK/phi3-engine" --input_len 128 --output_len 256 \
      --num_requests 3 --concurrency 1 --warmup 1 --json 2>"$OUT/phi3quick.err" | tail -1 | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('phi3 b1 overlap=$ov: decode %.1f tok/s, itl p50 %.3f ms' % (j['decode_tokens_per_s_per_request']['p50'], j['itl_ms']['p50']))"
    grep timing "$OUT/phi3quick.err"
  done
  $K bench --engine_dir "$WORK/phi3-engine" --input_len 1024 --output_len 1 --num_requests 6 --concurrency 1 --warmup 1 \
    --json 2>/dev/null | tail -1 | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('phi3 ttft(1024) p50 %.2f ms' % j['ttft_ms']['p50'])"
fi

if [[ $what == llama || $what == all ]]; then
  t0=$(date +%s)
  # MAX_NUM_TOKENS: tokens per forward of the engine (default 8192; another value builds its own engine).
  MNT=${MAX_NUM_TOKENS:-8192}
  L=llama3; [[ $MNT != 8192 ]] && L=llama3-mnt$MNT
  engine $L bench/shapes/llama-3-8b.shape.json 512 2048 4096 "$MNT" || echo "llama3 engine failed"
  echo "llama3 engine ready in $(( $(date +%s) - t0 )) s"
  # TensorRT-LLM v0.14's published H100 FP16 lengths; in-flight batching at up to 512 sequences. Specs are
  # "input output requests concurrency", ';'-separated (LLAMA_SPECS picks some). 2048/128 takes 2048 requests:
  # with 512 the last wave's decode-only tail (~128 steps) is ~6% of the run.
  IFS=';' read -ra specs <<<"${LLAMA_SPECS:-128 128 2048 512;128 2048 512 512;2048 128 2048 256}"
  for spec in "${specs[@]}"; do
    set -- $spec
    KILN_CUDA_TIMING=1 $K bench --engine_dir "$WORK/$L-engine" --input_len "$1" --output_len "$2" \
      --num_requests "$3" --concurrency "$4" --warmup 16 --json >"$OUT/${L}_$1_$2.json" 2>"$OUT/${L}_$1_$2.err"
    grep "timing\|KV cache" "$OUT/${L}_$1_$2.err"
    python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(sys.argv[2], 'requests', j['num_requests'], 'concurrency', j['concurrency'], 'out tok/s %.0f' % j['output_tokens_per_s'], 'ttft p50 %.1f ms' % j['ttft_ms']['p50'], 'itl p50 %.2f ms' % j['itl_ms']['p50'])" "$OUT/${L}_$1_$2.json" "$L $1/$2" || tail -3 "$OUT/${L}_$1_$2.err"
  done
fi

# Tensor parallelism on two GPUs (the parallelism issue): Llama-3-8B shape fp16, batch-1 decode at tp=2 against
# one GPU (target >= 1.7x) and offline 128/128 at tp=2. NCCL_NVLS_ENABLE=0 is set by kiln itself.
if [[ $what == tp ]]; then
  n=$(nvidia-smi -L | wc -l)
  if (( n < 2 )); then
    echo "tp: needs 2 GPUs, this machine has $n"
  else
    engine llama3 bench/shapes/llama-3-8b.shape.json 512 2048 4096 || echo "llama3 engine failed"
    engine llama3-tp2 bench/shapes/llama-3-8b.shape.json 512 2048 4096 8192 2 || echo "llama3 tp2 engine failed"
    for L in llama3 llama3-tp2; do
      for graphs in 0 1; do  # NCCL inside decode graphs is off unless KILN_NCCL_GRAPHS=1
        KILN_NCCL_GRAPHS=$graphs $K bench --engine_dir "$WORK/$L-engine" --input_len 128 --output_len 256 \
          --num_requests 3 --concurrency 1 --warmup 1 --json 2>"$OUT/${L}_b1_g$graphs.err" | tail -1 \
          | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('$L b1 nccl_graphs=$graphs: decode %.1f tok/s, itl p50 %.3f ms' % (j['decode_tokens_per_s_per_request']['p50'], j['itl_ms']['p50']))" \
          || tail -3 "$OUT/${L}_b1_g$graphs.err"
      done
    done
    $K bench --engine_dir "$WORK/llama3-tp2-engine" --input_len 128 --output_len 128 --num_requests 2048 \
      --concurrency 512 --warmup 16 --json 2>"$OUT/llama3-tp2_128_128.err" | tail -1 \
      | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('llama3-tp2 128/128: out tok/s %.0f' % j['output_tokens_per_s'])" \
      || tail -3 "$OUT/llama3-tp2_128_128.err"
  fi
fi

# The decode attention's split cost model (KILN_ATTN_SPLIT_COSTS="cta,combine" in keys): kernel times of the
# decode cases and Phi-3-mini batch-1 decode end to end for a few settings.
if [[ $what == splits ]]; then
  engine phi3 bench/shapes/phi-3-mini-128k-instruct.shape.json 64 2048 4096 || echo "phi3 engine failed"
  for costs in 64,128 128,256 256,512 512,1024; do
    echo "== split costs $costs"
    KILN_ATTN_SPLIT_COSTS=$costs KILN_ATTN_TIMING=decode $D/kiln_tests --gtest_filter='CudaAttention.Timing' 2>&1 | grep "\[timing\]"
    for in_len in 128 1024; do
      KILN_ATTN_SPLIT_COSTS=$costs $K bench --engine_dir "$WORK/phi3-engine" --input_len $in_len --output_len 256 \
        --num_requests 3 --concurrency 1 --warmup 1 --json 2>/dev/null | tail -1 | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('phi3 b1 input $in_len: decode %.1f tok/s, itl p50 %.3f ms' % (j['decode_tokens_per_s_per_request']['p50'], j['itl_ms']['p50']))"
    done
  done 2>&1 | tee "$OUT/splits.txt"
fi

# Per-kernel GPU times of a 1024-token prefill and 3 decode steps of Phi-3-mini (ncu, graphs off; ncu runs
# kernels one at a time, so the sums have no overlap or launch gaps).
if [[ $what == profile ]]; then
  engine phi3 bench/shapes/phi-3-mini-128k-instruct.shape.json 64 2048 4096 || echo "phi3 engine failed"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  KILN_CUDA_GRAPHS=0 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
    --log-file "$OUT/ncu_phi3.csv" $K bench --engine_dir "$WORK/phi3-engine" --input_len 1024 --output_len 4 \
    --num_requests 1 --concurrency 1 --warmup 0 >/dev/null 2>"$OUT/ncu_phi3.err" || tail -5 "$OUT/ncu_phi3.err"
  python3 bench/ncu_summary.py "$OUT/ncu_phi3.csv" | tee "$OUT/ncu_phi3_summary.txt"
  gzip -f "$OUT/ncu_phi3.csv"
fi

if [[ $what == hf || $what == all ]]; then
  python3 bench/hf_baseline.py --shape bench/shapes/phi-3-mini-128k-instruct.shape.json --batch 1 --input_len 128 \
    --output_len 128 --modes eager,compile 2>"$OUT/hf_phi3.err" | tee "$OUT/hf_phi3.json"
  python3 bench/hf_baseline.py --shape bench/shapes/llama-3-8b.shape.json --batch 64 --input_len 128 \
    --output_len 128 --modes eager 2>"$OUT/hf_llama3.err" | tee "$OUT/hf_llama3.json"
  python3 bench/hf_baseline.py --shape bench/shapes/llama-3-8b.shape.json --batch 1 --input_len 128 \
    --output_len 128 --modes eager,compile 2>"$OUT/hf_llama3_b1.err" | tee "$OUT/hf_llama3_b1.json"
  tail -n 2 "$OUT/hf_phi3.err" "$OUT/hf_llama3.err" "$OUT/hf_llama3_b1.err"
fi
