#!/usr/bin/env bash
# Builds the GPU bundle here (nvcc, no GPU needed) for the device machine, which has CUDA but not Kiln's
# other libraries: dist/{kiln,kiln_tests} plus the shared libraries they need that a bare CUDA image lacks.
# Then, with the device tool: run(command="bash bench/cuda_device.sh", carry=["dist"]).
set -euo pipefail
cd "$(dirname "$0")/.."
# BUILD_DIR / DIST name other folders (several builds side by side; both must be git-ignored: build*/ dist*/).
B=${BUILD_DIR:-build-cuda}
D=${DIST:-dist}
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_SERVER=OFF -DKILN_CUDA=ON -DKILN_BUILD_BENCH=ON >/dev/null
cmake --build "$B" -j"$(nproc)" --target kiln kiln_tests cuda_linear_bench
rm -rf "$D" && mkdir -p "$D/lib"
cp "$B/kiln" "$B/kiln_tests" "$B/cuda_linear_bench" "$D/"
for lib in libxxhash.so.0 libpcre2-8.so.0 libutf8proc.so.2; do
  cp -L "$(ldd "$B/kiln_tests" | awk -v l="$lib" '$1 == l {print $3}')" "$D/lib/"
done
strip "$D/kiln" "$D/kiln_tests" "$D/cuda_linear_bench"
du -sh "$D"
