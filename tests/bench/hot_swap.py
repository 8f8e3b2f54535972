#!/usr/bin/env python3
"""Plugins swapped and misbehaving under load, against a `weft serve` this
script starts: the plugin platform's two promises measured.

    python3 tests/bench/hot_swap.py [--weft target/release/weft] [--seconds 20]

1. Hot swap: `--clients` threads send completions naming the sampler `swap`
   back to back while a new version of it is deployed every `--every`
   seconds. Every answer must be a 200, and the version that served it (the
   `x-weft-sampler` response header) must be one that was active at some
   moment of the request: deployed (its deploy call begun) before the
   request ended, and not yet replaced (its successor's deploy call not yet
   answered) when the request began. Reports failures, mis-versioned
   answers, and the swap time the server logs for each deploy.
2. A looping plugin: streams with the builtin sampler run while, every
   `--loop-every` seconds, a request chooses a sampler that never returns
   (the faulty fixture, `fault=loop`). Reports the inter-token latency p50
   and p99 of the well-behaved streams with and without the looping
   requests, against the bound: the plugin deadline plus one epoch tick
   plus a normal step.

The sampler components are the ones the build made (the builtin sampler
and the faulty fixture, under target/).
"""
import argparse
import glob
import json
import pathlib
import re
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "bench-admin"
DEADLINE_MS, TICK_MS = 100, 10


def component(name):
    found = sorted(glob.glob(str(ROOT / f"target/release/build/weft-plugin-artifacts-*/out/guests/wasm32-wasip2/plugin/{name}.wasm")))
    if not found:
        raise SystemExit(f"{name}.wasm not found under target/: build first (cargo build --release -p weft)")
    return pathlib.Path(found[-1]).read_bytes()


class Server:
    def __init__(self, binary):
        self.log = []
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--no-grpc", "--admin-token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in self.proc.stdout:
            m = re.search(r"serving .* on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def deploy(self, name, version, wasm, **config):
        query = "&".join(f"{k}={v}" for k, v in config.items())
        req = urllib.request.Request(
            f"{self.url}/admin/v1/plugins/{name}/{version}?{query}", data=wasm, method="POST",
            headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/wasm"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post(url, body, timeout=120):
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    # The response stays open for the caller to read (a stream line by line).
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
        return r.status, r.headers.get("x-weft-sampler"), r
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-weft-sampler"), e


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def hot_swap(server, args):
    wasm = component("weft_plugin_sampler")
    server.deploy("swap", "1.0.0", wasm)
    answers, deploys, stop = [], [("1.0.0", 0.0, 0.0)], threading.Event()

    def client(k):
        body = {"prompt": f"Tell me about the number {k}.", "max_tokens": 8, "temperature": 0.8, "seed": k, "weft": {"sampler": "swap"}}
        while not stop.is_set():
            t0 = time.monotonic()
            status, version, r = post(server.url, body)
            with r:
                r.read()
            answers.append((t0, time.monotonic(), status, version))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    end = time.monotonic() + args.seconds
    n = 1
    while time.monotonic() < end:
        time.sleep(args.every)
        version = f"1.0.{n}"
        began = time.monotonic()
        server.deploy("swap", version, wasm)
        deploys.append((version, began, time.monotonic()))
        n += 1
    stop.set()
    for t in threads:
        t.join()
    # Version v was active from some moment of its deploy call to some
    # moment of its successor's.
    window = {}
    for i, (v, began, _) in enumerate(deploys):
        replaced = deploys[i + 1][2] if i + 1 < len(deploys) else float("inf")
        window[f"swap@{v}"] = (began, replaced)
    failed = [a for a in answers if a[2] != 200]
    misversioned = [a for a in answers if a[2] == 200 and not (a[3] in window and window[a[3]][0] <= a[1] and window[a[3]][1] >= a[0])]
    swaps = [int(m.group(1)) for line in server.log if (m := re.search(r"deployed swap@\S+ .* swapped in (\d+) us", line))]
    return {
        "requests": len(answers),
        "deploys": len(deploys) - 1,
        "versions_seen": len({a[3] for a in answers}),
        "failed": len(failed),
        "misversioned": len(misversioned),
        "swap_us_p50": percentile(swaps, 0.5),
        "swap_us_max": max(swaps, default=float("nan")),
    }


def stream_gaps(url, body, stop, gaps):
    body = {**body, "stream": True}
    while not stop.is_set():
        status, _, r = post(url, body)
        last = None
        with r:
            for line in r:
                if line.startswith(b"data: {"):
                    now = time.monotonic()
                    if last is not None:
                        gaps.append((now - last) * 1000)
                    last = now


def looping(server, args):
    loop = component("weft_test_faulty_sampler")
    server.deploy("loop", "1.0.0", loop, fault="loop")
    versions = 0
    results = {}
    for phase in ("without", "with"):
        gaps, stop = [], threading.Event()
        body = {"prompt": "Write a long story about a lighthouse.", "max_tokens": 64, "ignore_eos": True, "temperature": 0}
        threads = [threading.Thread(target=stream_gaps, args=(server.url, body, stop, gaps)) for _ in range(args.clients)]
        for t in threads:
            t.start()
        end, looped = time.monotonic() + args.seconds, 0
        while time.monotonic() < end:
            time.sleep(args.loop_every)
            if phase == "with":
                status, _, r = post(server.url, {"prompt": "Hi", "max_tokens": 4, "weft": {"sampler": "loop"}})
                with r:
                    r.read()
                if status == 503:
                    # Its circuit breaker opened, as it should: a new
                    # version lets the next looping request run again.
                    versions += 1
                    server.deploy("loop", f"1.0.{versions}", loop, fault="loop")
                else:
                    assert status == 500, status
                    looped += 1
        stop.set()
        for t in threads:
            t.join()
        results[phase] = {"itl_p50_ms": round(percentile(gaps, 0.5), 1), "itl_p99_ms": round(percentile(gaps, 0.99), 1), "looping_requests": looped}
    results["bound_ms"] = round(DEADLINE_MS + TICK_MS + results["without"]["itl_p50_ms"], 1)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", default=str(ROOT / "target/release/weft"))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between deploys")
    ap.add_argument("--loop-every", type=float, default=1.0, help="seconds between looping requests")
    args = ap.parse_args()
    server = Server(args.weft)
    try:
        report = {"hot_swap": hot_swap(server, args), "looping_plugin": looping(server, args)}
    finally:
        server.stop()
    print(json.dumps(report, indent=2))
    s, l = report["hot_swap"], report["looping_plugin"]
    print(f"\nhot swap: {s['requests']} requests over {s['deploys']} deploys ({s['versions_seen']} versions served): "
          f"{s['failed']} failed, {s['misversioned']} mis-versioned; swap p50 {s['swap_us_p50']} us, max {s['swap_us_max']} us")
    print(f"looping plugin: ITL p99 {l['without']['itl_p99_ms']} ms without, {l['with']['itl_p99_ms']} ms with "
          f"{l['with']['looping_requests']} looping requests (bound {l['bound_ms']} ms)")


if __name__ == "__main__":
    main()
