"""`weft admin`, the admin API from the command line, against a real server."""
import json
import os
import pathlib
import subprocess

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))


def admin(server, token, *command):
    return subprocess.run([BINARY, "admin", "--server", server.url, "--token", token, *command], capture_output=True, text=True, timeout=60)


def test_admin_cli_reads_the_model_and_drains():
    server = Server("--admin-token", "t0ken")
    try:
        out = admin(server, "t0ken", "model")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["draining"] is False
        wrong = admin(server, "nope", "model")
        assert wrong.returncode != 0 and "401" in wrong.stderr
        out = admin(server, "t0ken", "drain")
        assert out.returncode == 0 and json.loads(out.stdout)["draining"] is True
    finally:
        server.stop()
