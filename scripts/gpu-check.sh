#!/usr/bin/env bash
# GPU validation for Weft, run on the GPU machine. It builds nothing: the
# executables are built on a development machine and carried over in .gpu/:
#
#   cargo test -p weft-kernels-cuda --release --no-run   # prints the path of
#   cp target/release/deps/kernels-<hash> .gpu/kernels   # the test executable
#
# Usage: bash scripts/gpu-check.sh            (logs go to $OUT, else .gpu/logs)
#
# Steps:
#   1. CUDA kernel tests, each in its own process (a kernel fault cannot
#      take the others down), with WEFT_REQUIRE_GPU=1 so that a missing GPU
#      is a failure, not a skip;
#   2. the GEMV timing harness (8B shapes, GB/s vs device-to-device copy);
#   3. a summary table (printed last, also written to summary.md).
#
# Not yet here (placeholders for later work by others; nothing is faked):
#   - model-level parity: CUDA backend vs the CPU backend (teacher-forced
#     argmax agreement, perplexity) and vs PyTorch/transformers;
#   - the engine benchmark (`weft bench`: decode tokens/s at batch 1/16/64/256,
#     prefill, HF transformers peer, roofline ratio).
set -uo pipefail

cd "$(dirname "$0")/.."
BIN_DIR=.gpu
LOG_DIR=${OUT:-$BIN_DIR/logs}
mkdir -p "$LOG_DIR"
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export WEFT_REQUIRE_GPU=1

TESTS="$BIN_DIR/kernels"
if [[ ! -x "$TESTS" ]]; then
    echo "gpu-check: $TESTS not found; build it on a dev machine (see the header of this script)" >&2
    exit 2
fi

{
    echo "date: $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} 2>&1 | tee "$LOG_DIR/device.txt"

# 1. Kernel tests, one process per test.
: > "$LOG_DIR/kernel-tests.log"
: > "$LOG_DIR/test-status.txt"
fail=0
for t in $("$TESTS" --list 2>/dev/null | sed -n 's/: test$//p' | grep -v '^bench::'); do
    start=$(date +%s.%N)
    "$TESTS" --exact "$t" --nocapture --test-threads=1 >> "$LOG_DIR/kernel-tests.log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [[ $rc -eq 0 ]]; then status=pass; else status=FAIL; fail=1; fi
    echo "$t $status ${secs}s" | tee -a "$LOG_DIR/test-status.txt"
done

# 2. Timing harness.
"$TESTS" --ignored --exact bench::gemv_bandwidth_at_8b_shapes --nocapture --test-threads=1 \
    > "$LOG_DIR/gemv-bench.log" 2>&1
bench_rc=$?

# 3. Summary.
{
    echo "## CUDA kernel tests ($(sed -n 3p "$LOG_DIR/device.txt"))"
    echo
    echo "| test | status | time |"
    echo "|---|---|---|"
    awk '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$LOG_DIR/test-status.txt"
    echo
    echo "| kernel | case | rel. error | bound |"
    echo "|---|---|---|---|"
    grep '^RESULT ' "$LOG_DIR/kernel-tests.log" | sed -E \
        's/^RESULT kernel=(.*) case=(.*) rel_err=([^ ]*) tol=([^ ]*) .*/| \1 | \2 | \3 | \4 |/'
    echo
    echo "## GEMV timing (kernel time from CUDA events; weights rotate past L2)"
    echo
    grep '^BENCH copy' "$LOG_DIR/gemv-bench.log" || echo "(no copy measurement: harness exit $bench_rc)"
    echo
    grep '^|' "$LOG_DIR/gemv-bench.log" || echo "(no GEMV rows: harness exit $bench_rc)"
} > "$LOG_DIR/summary.md"
cat "$LOG_DIR/summary.md"

if [[ $fail -ne 0 || $bench_rc -ne 0 ]]; then
    echo "gpu-check: FAILED (tests: $([[ $fail -eq 0 ]] && echo ok || echo failed), bench exit $bench_rc); logs in $LOG_DIR"
    exit 1
fi
echo "gpu-check: all passed; logs in $LOG_DIR"
