#!/usr/bin/env python3
"""What the step token budget trades: Weft's server at several
`--max-batch-tokens`, under the same load, in alternating rounds.

    python3 tests/bench/step_budget.py [--budgets 512,256,128] [--rounds 2]

Each round starts `weft serve` once per budget and drives it with the load
generator of serving_side_by_side.py (streaming chat completions, ~220-token
prompts, 128 output tokens each); the script prints each figure's median
over rounds per budget, and its ratio to the first budget's.
docs/performance.md records the latest run. Weft must be built first
(`cargo build --release -p weft`) and the model pulled (`weft pull`).
"""

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from serving_side_by_side import FIGURES, add_load_args, free_port, measure  # noqa: E402
from side_by_side import default_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="512,256,128", help="comma-separated --max-batch-tokens values")
    add_load_args(ap, rounds=2)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model = args.model or default_model()
    weft = REPO / "target/release/weft"
    runs = {b: [] for b in budgets}
    for r in range(args.rounds):
        for b in budgets:
            port = free_port()
            runs[b].append(measure([str(weft), "serve", "--model", str(model), "--threads", str(args.threads),
                                    "--port", str(port), "--no-grpc", "--max-running", str(args.concurrency),
                                    "--max-batch-tokens", str(b)], port, args))
            print(f"round {r + 1}, budget {b}: {runs[b][-1]['output_tokens_per_s']:.1f} tok/s, "
                  f"inter-token p99 {runs[b][-1]['itl_ms_p99']:.0f} ms", file=sys.stderr)
    print("| figure | " + " | ".join(f"{b} tokens" for b in budgets) + " |")
    print("| --- |" + " ---: |" * len(budgets))
    for f in FIGURES:
        medians = [statistics.median(x[f] for x in runs[b]) for b in budgets]
        cells = [f"{m:.1f}" if i == 0 else f"{m:.1f} ({m / medians[0]:.2f}×)" for i, m in enumerate(medians)]
        print(f"| {f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
