"""`weft bench --url`, the serving-level load generator, against a real server."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_load_generator_counts_every_requested_token(server):
    binary = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))
    out = subprocess.run(
        [binary, "bench", "--url", server, "--concurrency", "2", "--requests", "3", "--max-tokens", "5", "--prompt-tokens", "40", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["requests"] == 3
    assert summary["output_tokens"] == 15, "ignore_eos makes every request produce max_tokens tokens"
    assert summary["ttft_ms_p50"] <= summary["e2e_ms_p50"]
    assert summary["output_tokens_per_s"] > 0
