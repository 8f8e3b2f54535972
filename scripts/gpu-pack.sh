#!/usr/bin/env bash
# Build, on a development machine, everything scripts/gpu-check.sh runs on
# the GPU machine (which has no Rust toolchain and no network), and pack it
# under .gpu/ (git-ignored) in pieces that fit the device tool's 64 MiB
# transfer limit:
#
#   .gpu/bin.tar.xz      weft (--features cuda) and the two GPU test
#                        executables (kernels, backend), stripped (~15 MB)
#   .gpu/model.part-0    the default model's first 56 MiB
#   .gpu/model.part-1    the rest (~38 MiB), and .gpu/model.sha256
#
# The model (98 MB) cannot travel in one call, so a GPU session uses two
# calls on the same warm machine (it is kept ~30 s after a call):
#
#   1. carry [".gpu/model.part-0"], command:
#        mkdir -p /root/weft-gpu && cp .gpu/model.part-0 /root/weft-gpu/
#   2. at once, carry [".gpu/model.part-1", ".gpu/model.sha256", ".gpu/bin.tar.xz"],
#      command: bash scripts/gpu-check.sh
#
# gpu-check.sh joins the parts (checking the sha256); without part 0 it
# runs everything that does not need the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
rm -rf .gpu/stage && mkdir -p .gpu/stage/bin

cargo build --release --features cuda -p weft
strip -o .gpu/stage/bin/weft target/release/weft
cargo test --release -p weft-kernels-cuda -p weft-backend-cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("kernels", "backend"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    strip -o ".gpu/stage/bin/$name" "$exe"
done
for exe in weft kernels backend; do
    [[ -x .gpu/stage/bin/$exe ]] || { echo "gpu-pack: $exe was not built" >&2; exit 1; }
done
tar -C .gpu/stage -cJf .gpu/bin.tar.xz bin
rm -rf .gpu/stage

model=$(./target/release/weft pull)
head -c $((56 << 20)) "$model" > .gpu/model.part-0
tail -c +$(((56 << 20) + 1)) "$model" > .gpu/model.part-1
(cd "$(dirname "$model")" && sha256sum "$(basename "$model")") | awk '{ print $1 }' > .gpu/model.sha256
ls -l .gpu/bin.tar.xz .gpu/model.part-0 .gpu/model.part-1
echo "gpu-pack: done; see the header of this script for the two device calls"
