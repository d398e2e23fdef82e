#!/usr/bin/env bash
# Installs what Kiln needs on a fresh Debian/Ubuntu machine and builds build/kiln.
# Idempotent: packages already present are not reinstalled; the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

# gRPC, protobuf and Boost.Beast (headers) are for the server (kiln serve); CMake builds it when they are
# present (KILN_SERVER=AUTO), so a machine without them still builds and tests the engine.
PACKAGES=(build-essential cmake ninja-build pkg-config nlohmann-json3-dev libxxhash-dev
          libpcre2-dev libutf8proc-dev zlib1g-dev
          libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libboost-dev
          libgtest-dev googletest python3 python3-venv)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python venv for test-only clients and reference scripts (the engine itself needs no Python).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi

BUILD_DIR=${KILN_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${KILN_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built $BUILD_DIR/kiln"
