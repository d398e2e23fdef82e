#!/usr/bin/env bash
# Builds Kiln and runs every test: the GoogleTest suite (unit, golden, CLI) through ctest, then the
# parsers of untrusted files again under AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)")

# Untrusted-input parsers under sanitizers (separate build dir, only the test binary).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_ASAN=ON -DKILN_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target kiln_tests
ASAN_OPTIONS=detect_leaks=1 build-asan/kiln_tests \
  --gtest_filter='Safetensors*:HfCheckpoint*:MappedFile*:EngineFile*:Convert*:ModelConfig*:Rope*'
