#!/usr/bin/env python3
"""What guided generation costs, against a `weft serve` this script starts:

    python3 tests/bench/guided.py [--weft target/release/weft] [--rounds 5]

1. Throughput: `weft bench --url` rounds alternate between plain requests
   and requests constrained by tests/bench/guided-format.json (an array of
   at least 60 `{"word", "n"}` objects, so every output token is generated
   under a live mask), 32 requests, 16 in flight, 128 tokens each. Reports
   output tokens/s per round and the guided / plain ratio of the medians
   (the first round of each, cold prefix cache, left out).
2. Masks against the forward pass: the server's `/metrics` histograms
   `weft_step_forward_seconds`, `weft_step_guide_masks_seconds` (per
   guided step, from handing its guides out to its last answer) and
   `weft_step_guide_wait_seconds` (how long the step waited after its
   forward pass for them: 0 when hidden), read over the guided rounds: p50
   and p99 of each (bucket upper bounds), and the steps any guided sequence
   sat out (`weft_guide_stalls`).
"""
import argparse
import json
import pathlib
import re
import statistics
import subprocess
import threading
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORMAT = ROOT / "tests/bench/guided-format.json"


class Server:
    def __init__(self, binary, threads):
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--no-grpc", "--threads", str(threads)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in self.proc.stdout:
            m = re.search(r"serving .* on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def metrics(self):
        with urllib.request.urlopen(f"{self.url}/metrics") as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def histogram(text, name):
    """Cumulative bucket counts {upper bound: count} of histogram `name`."""
    buckets = {}
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\d+)$', text, re.M):
        buckets[float(m.group(1))] = int(m.group(2))
    return buckets


def gauge(text, name):
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def quantile(before, after, q):
    """The upper bound of the bucket holding quantile `q` of what was
    observed between two scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0)) for le in after)
    total = counts[-1][1]
    if total == 0:
        return None
    for le, n in counts:
        if n >= q * total:
            return le
    return counts[-1][0]


def bench(binary, url, guided):
    command = [binary, "bench", "--url", url, "--requests", "32", "--concurrency", "16", "--max-tokens", "128", "--json"]
    if guided:
        command += ["--response-format", str(FORMAT)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["output_tokens_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weft", default=str(ROOT / "target/release/weft"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    server = Server(args.weft, args.threads)
    try:
        plain, guided = [], []
        forward = ("weft_step_forward_seconds", {}, {})
        masks = ("weft_step_guide_masks_seconds", {}, {})
        wait = ("weft_step_guide_wait_seconds", {}, {})
        stalls = 0
        for r in range(args.rounds):
            plain.append(bench(args.weft, server.url, False))
            before = server.metrics()
            guided.append(bench(args.weft, server.url, True))
            after = server.metrics()
            stalls += gauge(after, "weft_guide_stalls") - gauge(before, "weft_guide_stalls")
            for name, b, a in (forward, masks, wait):
                for le, n in histogram(before, name).items():
                    b[le] = b.get(le, 0) + n
                for le, n in histogram(after, name).items():
                    a[le] = a.get(le, 0) + n
            print(f"round {r + 1}: plain {plain[-1]:.1f} tok/s, guided {guided[-1]:.1f} tok/s", flush=True)
        kept = slice(1, None) if args.rounds > 1 else slice(None)
        ratio = statistics.median(guided[kept]) / statistics.median(plain[kept])
        print(f"guided / plain output tokens/s (medians of rounds {'2' if args.rounds > 1 else '1'}-{args.rounds}): {ratio:.2f}")
        for name, b, a in (forward, masks, wait):
            p50, p99 = quantile(b, a, 0.5), quantile(b, a, 0.99)
            print(f"{name} over the guided rounds: p50 <= {p50 * 1e3:.2f} ms, p99 <= {p99 * 1e3:.2f} ms")
        print(f"steps a guided sequence sat out for a late guide: {stalls}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
