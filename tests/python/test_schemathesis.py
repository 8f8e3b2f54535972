"""OpenAPI-driven fuzzing: schemathesis generates requests from our own
/openapi.json (property-based, seeded, bounded) against a real server and
fails on any 5xx or crash.

The server runs with `--max-output-tokens 4` and `--max-running 4` so that
every valid request the fuzzer makes stays cheap (a sampler call never holds
more than four rows, far inside the plugin deadline); validation itself is
unchanged.
"""
import pathlib
import subprocess
import sys

from conftest import Server

# Installed beside this interpreter (tests/python/requirements.txt).
SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"


def test_fuzzing_the_openapi_document_finds_no_server_errors():
    server = Server("--max-output-tokens", "4", "--max-running", "4")
    try:
        out = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "100", "--seed", "1", "--generation-database", "none", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=900,
        )
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        # The server is still healthy afterwards.
        assert server.proc.poll() is None
    finally:
        server.stop()
