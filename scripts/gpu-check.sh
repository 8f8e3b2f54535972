#!/usr/bin/env bash
# GPU validation for Weft, run on the GPU machine. It builds nothing: the
# executables are built and packed on a development machine by
# scripts/gpu-pack.sh (read its header for the two device calls that carry
# them and the default model over).
#
# Usage: bash scripts/gpu-check.sh     (logs and summary.md go to $OUT, else .gpu/logs)
#        STEPS="kernels backend bench peer" picks steps (default: all four).
#
# Steps:
#   kernels  every CUDA kernel test against its f64 reference, each in its
#            own process (a kernel fault cannot take the others down), then
#            the GEMV timing harness (copy bandwidth, 8B shapes);
#   backend  the CUDA backend: tiny Hugging Face Llamas against transformers
#            run on this GPU (scripts/gpu/hf_references.py), the default model
#            against the CPU backend (argmax agreement, perplexity; f16 and FP8
#            KV caches), continuous batching on the GPU, and tokens chosen
#            on the GPU against the host's choice over the same rows;
#   bench    `weft bench --device cuda`: the default model, and random-BF16
#            models of the default model's and Llama-3-8B's shapes, decode at
#            batch 1/16/64/256 and prefill 512;
#   peer     transformers' generate on the same GPU (scripts/gpu/hf_bench.py):
#            the default model (written by `weft export --hf`, run in BF16)
#            and the same random-weight shapes; then the table of ratios with
#            the batch-1 roofline (weight bytes per step / measured copy
#            bandwidth).
#
# WEFT_REQUIRE_GPU=1 is set: a test that finds no GPU fails instead of skipping.
set -uo pipefail

cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-.gpu/logs}
STEPS=${STEPS-kernels backend bench peer}
mkdir -p "$LOG_DIR"
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export WEFT_REQUIRE_GPU=1
# One store and one compiled-kernel cache for every process of the run: the
# kernels compile once, not once per test process.
export WEFT_HOME=/root/weft-gpu/home
export WEFT_CUDA_CACHE=$WEFT_HOME/cuda-cache
# libnvrtc and libcublas from the image's Python CUDA wheels, after the
# system's own.
for d in $(python3 -c 'import glob, site; print(" ".join(d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib")))' 2>/dev/null); do
    LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
done
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

BIN=.gpu/bin
if [[ -f .gpu/bin.tar.xz ]]; then
    tar -C .gpu -xJf .gpu/bin.tar.xz
fi
for exe in weft kernels backend; do
    if [[ ! -x $BIN/$exe ]]; then
        echo "gpu-check: $BIN/$exe not found; run scripts/gpu-pack.sh on a development machine and carry .gpu/bin.tar.xz" >&2
        exit 2
    fi
done

# The default model: two parts joined (see scripts/gpu-pack.sh), or $WEFT_TEST_MODEL.
MODEL=${WEFT_TEST_MODEL:-}
if [[ -z $MODEL && -f /root/weft-gpu/model.part-0 && -f .gpu/model.part-1 ]]; then
    MODEL=/root/weft-gpu/smollm2-135m-instruct-q4_1.gguf
    cat /root/weft-gpu/model.part-0 .gpu/model.part-1 > "$MODEL"
    if [[ $(sha256sum "$MODEL" | awk '{ print $1 }') != $(cat .gpu/model.sha256) ]]; then
        echo "gpu-check: the joined model's sha256 differs from .gpu/model.sha256; skipping the default model" >&2
        MODEL=
    fi
fi
export WEFT_TEST_MODEL=$MODEL

{
    echo "date: $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    echo "default model: ${MODEL:-(not carried: its steps are skipped)}"
} 2>&1 | tee "$LOG_DIR/device.txt"

fail=0
: > "$LOG_DIR/test-status.txt"
# Run each test of executable $1 (filtered by $2) in its own process. The
# `emulated` tests run the kernel sources on CPU threads; CI runs them, and
# here they would only spend the GPU's time.
run_tests() {
    local exe=$1 filter=$2 log=$3
    for t in $("$exe" --list 2>/dev/null | sed -n 's/: test$//p' | grep -v -e '^bench::' -e '^emulated::' | grep -E "$filter"); do
        local start rc secs status
        start=$(date +%s.%N)
        "$exe" --exact "$t" --nocapture --test-threads=1 >> "$log" 2>&1
        rc=$?
        secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        if [[ $rc -eq 0 ]]; then status=pass; else status=FAIL; fail=1; fi
        echo "$(basename "$exe")::$t $status ${secs}s" | tee -a "$LOG_DIR/test-status.txt"
    done
}

bench_rc=0
if has_step kernels; then
    : > "$LOG_DIR/kernel-tests.log"
    run_tests $BIN/kernels . "$LOG_DIR/kernel-tests.log"
    $BIN/kernels --ignored --exact bench::gemv_bandwidth_at_8b_shapes --nocapture --test-threads=1 \
        > "$LOG_DIR/gemv-bench.log" 2>&1
    bench_rc=$?
fi

if has_step backend; then
    : > "$LOG_DIR/backend-tests.log"
    if python3 scripts/gpu/hf_references.py "$LOG_DIR/hf-references" >> "$LOG_DIR/backend-tests.log" 2>&1; then
        export WEFT_HF_REFERENCES=$LOG_DIR/hf-references
    else
        echo "gpu-check: transformers on the GPU failed (see backend-tests.log); comparing with the committed CPU references" | tee -a "$LOG_DIR/backend-tests.log"
    fi
    if [[ -n $MODEL ]]; then
        run_tests $BIN/backend . "$LOG_DIR/backend-tests.log"
    else
        run_tests $BIN/backend '^transformers::' "$LOG_DIR/backend-tests.log"
    fi
fi

# Engine benchmarks: JSON lines, one per model.
if has_step bench; then
    : > "$LOG_DIR/bench.jsonl"
    bench() {
        $BIN/weft bench --device cuda --json --sampler native --rounds 2 --decode-tokens 64 "$@" \
            >> "$LOG_DIR/bench.jsonl" 2>> "$LOG_DIR/bench.log" || { echo "gpu-check: weft bench $* failed" | tee -a "$LOG_DIR/bench.log"; fail=1; }
    }
    [[ -n $MODEL ]] && bench --model "$MODEL" --batch 1,16,64,256 --prefill 512 --kv-cache-mib 2048
    bench --synthetic smollm2-135m --batch 1,16,64,256 --prefill 512 --kv-cache-mib 2048
    bench --synthetic llama3-8b --batch 1,16,64,256 --prefill 512 --kv-cache-mib 8192 --kv-cache-type f16
fi
if has_step peer; then
    : > "$LOG_DIR/peer.jsonl"
    # The default model itself, exported to a Hugging Face directory (F32,
    # run by transformers in BF16), under the name weft bench reported.
    if [[ -n $MODEL ]]; then
        name=$(head -1 "$LOG_DIR/bench.jsonl" 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["model"])' 2>/dev/null)
        if $BIN/weft export --model "$MODEL" --hf /root/weft-gpu/default-hf >> "$LOG_DIR/peer.log" 2>&1; then
            python3 scripts/gpu/hf_bench.py --model-dir /root/weft-gpu/default-hf --name "${name:-default}" \
                --batch 1,16,64,256 --prefill 512 --rounds 2 >> "$LOG_DIR/peer.jsonl" 2>> "$LOG_DIR/peer.log" \
                || { echo "gpu-check: hf_bench on the default model failed" | tee -a "$LOG_DIR/peer.log"; fail=1; }
        fi
    fi
    for shape in smollm2-135m llama3-8b; do
        python3 scripts/gpu/hf_bench.py "$shape" --batch 1,16,64,256 --prefill 512 --rounds 2 \
            >> "$LOG_DIR/peer.jsonl" 2>> "$LOG_DIR/peer.log" || { echo "gpu-check: hf_bench $shape failed" | tee -a "$LOG_DIR/peer.log"; fail=1; }
    done
fi

# Summary.
{
    echo "## Weft GPU check ($(sed -n 3p "$LOG_DIR/device.txt"))"
    echo
    echo "| test | status | time |"
    echo "|---|---|---|"
    awk '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$LOG_DIR/test-status.txt"
    echo
    echo "| kernel | case | rel. error | bound |"
    echo "|---|---|---|---|"
    cat "$LOG_DIR"/kernel-tests.log "$LOG_DIR"/backend-tests.log 2>/dev/null | grep '^RESULT kernel=' | sed -E \
        's/^RESULT kernel=(.*) case=(.*) rel_err=([^ ]*) tol=([^ ]*).*/| \1 | \2 | \3 | \4 |/'
    echo
    echo "### Model parity and batching"
    echo
    grep -h '^RESULT \(parity\|engine\|device sampling\)' "$LOG_DIR"/backend-tests.log 2>/dev/null | sed 's/^RESULT /- /'
    echo
    echo "### GEMV timing (kernel time from CUDA events; weights rotate past L2)"
    echo
    grep -h '^BENCH copy' "$LOG_DIR/gemv-bench.log" 2>/dev/null || echo "(no copy measurement)"
    echo
    grep -h '^|' "$LOG_DIR/gemv-bench.log" 2>/dev/null
    echo
    echo "### Engine throughput against transformers, and the batch-1 roofline"
    echo
    python3 - "$LOG_DIR" <<'PY'
import json, os, re, sys
d = sys.argv[1]
def lines(name):
    p = os.path.join(d, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
weft, peer = lines("bench.jsonl"), {p["model"]: p for p in lines("peer.jsonl")}
copy = None
p = os.path.join(d, "gemv-bench.log")
if os.path.exists(p):
    m = re.search(r"^BENCH copy .* GB/s=([0-9.]+)", open(p).read(), re.M)
    copy = float(m.group(1)) if m else None
print("| model | figure | weft tok/s | transformers tok/s | weft ÷ transformers | % of roofline |")
print("|---|---|---|---|---|---|")
for w in weft:
    hf = peer.get(w["model"], {}).get("tokens_per_second", {})
    for fig, tps in w["tokens_per_second"].items():
        ratio = f"{tps / hf[fig]:.2f}" if fig in hf else "—"
        roof = "—"
        if fig == "decode batch 1" and copy:
            # Every weight matrix is read once per step (KV traffic at these
            # lengths is below 0.1% of it); copy GB/s counts read + write.
            roof = f"{100 * tps / (copy * 1e9 / w['weight_bytes']):.1f}%"
        hf_tps = f"{hf[fig]:.1f}" if fig in hf else "—"
        print(f"| {w['model']} | {fig} | {tps:.1f} | {hf_tps} | {ratio} | {roof} |")
PY
} > "$LOG_DIR/summary.md"
cat "$LOG_DIR/summary.md"

if [[ $fail -ne 0 || $bench_rc -ne 0 ]]; then
    echo "gpu-check: FAILED (tests or benchmarks: $([[ $fail -eq 0 ]] && echo ok || echo failed), GEMV harness exit $bench_rc); logs in $LOG_DIR"
    exit 1
fi
echo "gpu-check: all passed; logs in $LOG_DIR"
