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


class Server:
    """A running `weft serve`: its HTTP base URL and gRPC target."""

    def __init__(self, *extra_args):
        binary = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--grpc-port", "0", *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        http = self.proc.stdout.readline()
        grpc = self.proc.stdout.readline()
        http_match = re.search(r"on (https?://\S+)", http)
        grpc_match = re.search(r"on (\S+:\d+)", grpc)
        if not (http_match and grpc_match):
            self.proc.kill()
            raise RuntimeError(f"weft serve did not start: {http!r} {grpc!r} {self.proc.stderr.read()}")
        self.url = http_match.group(1)
        self.grpc = grpc_match.group(1)
        # Keep draining both pipes so the server never blocks on a full one.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def weft():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def server(weft):
    return weft.url


@pytest.fixture()
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


PROTO = ROOT / "host/server/proto"


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The gRPC stubs (message module, service module), generated from our .proto."""
    import sys

    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(["protoc", f"-I{PROTO}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO / "weft/v1/generation.proto")])
    assert rc == 0
    sys.path.insert(0, str(out))
    from weft.v1 import generation_pb2, generation_pb2_grpc

    return generation_pb2, generation_pb2_grpc
