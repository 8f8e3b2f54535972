"""Fixtures for the client tests: a real `weft serve` on a free loopback port.

The binary is `target/release/weft` (built by scripts/test.sh) unless
WEFT_BIN names another; it serves the default model pulled by `weft pull`.
"""
import os
import pathlib
import re
import subprocess
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def start_server(*extra_args):
    binary = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"weft serve did not start: {line!r} {proc.stderr.read()}")
    # Keep draining stdout so the server never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, match.group(1)


@pytest.fixture(scope="session")
def server():
    proc, url = start_server()
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
