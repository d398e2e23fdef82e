#!/usr/bin/env bash
# Builds the GPU bundle here (nvcc, no GPU needed) for the device machine, which has CUDA but not Kiln's
# other libraries: dist/{kiln,kiln_tests} plus the shared libraries they need that a bare CUDA image lacks.
# Then, with the device tool: run(command="bash bench/cuda_device.sh", carry=["dist"]).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_SERVER=OFF -DKILN_CUDA=ON -DKILN_BUILD_BENCH=ON >/dev/null
cmake --build build-cuda -j"$(nproc)" --target kiln kiln_tests cuda_linear_bench
rm -rf dist && mkdir -p dist/lib
cp build-cuda/kiln build-cuda/kiln_tests build-cuda/cuda_linear_bench dist/
for lib in libxxhash.so.0 libpcre2-8.so.0 libutf8proc.so.2; do
  cp -L "$(ldd build-cuda/kiln_tests | awk -v l="$lib" '$1 == l {print $3}')" dist/lib/
done
strip dist/kiln dist/kiln_tests dist/cuda_linear_bench
du -sh dist
