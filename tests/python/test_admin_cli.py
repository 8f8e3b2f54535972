"""`weft admin` and `weft plugin`, the admin API from the command line,
against a real server."""
import json
import os
import pathlib
import subprocess

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))


def admin(server, token, *command):
    return subprocess.run([BINARY, "admin", "--server", server.url, "--token", token, *command], capture_output=True, text=True, timeout=60)


def plugin(server, *command):
    return subprocess.run([BINARY, "plugin", "--server", server.url, "--token", "t0ken", *command], capture_output=True, text=True, timeout=60)


def sampler_component():
    """The builtin sampler component, as the build left it."""
    return sorted(ROOT.glob("target/release/build/weft-plugin-artifacts-*/out/guests/wasm32-wasip2/plugin/weft_plugin_sampler.wasm"))[-1]


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


def test_plugin_cli_deploys_a_sampler_that_requests_can_choose():
    component = sampler_component()
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "mine", "1.0.0", str(component))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["active_version"] == "1.0.0"
        from openai import OpenAI

        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        args = dict(model="default", prompt="The capital of France is", max_tokens=6, temperature=0)
        mine = client.completions.create(**args, extra_body={"weft": {"sampler": "mine"}})
        assert mine.choices[0].text == client.completions.create(**args).choices[0].text
        listed = json.loads(plugin(server, "list").stdout)
        assert {p["name"] for p in listed if p["kind"] == "sampler"} == {"default", "native", "mine"}
        assert {p["name"] for p in listed if p["kind"] == "tool-parser"} == {"hermes", "llama3_json", "mistral"}

        # A canary, its health, promotion and removal.
        out = plugin(server, "deploy", "mine", "1.1.0", str(component), "--canary", "0.5")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["canary"] == {"version": "1.1.0", "share": 0.5}
        for _ in range(4):
            client.completions.create(**args, extra_body={"weft": {"sampler": "mine"}})
        info = json.loads(plugin(server, "info", "mine").stdout)
        assert [h["requests"] for h in info["health"]] == [3, 2], info
        assert all(h["faults"] == 0 and h["breaker"] == "closed" for h in info["health"])
        promoted = json.loads(plugin(server, "promote", "mine").stdout)
        assert promoted["active_version"] == "1.1.0" and promoted["canary"] is None
        assert plugin(server, "remove", "mine").returncode == 0
        gone = plugin(server, "info", "mine")
        assert gone.returncode != 0 and "plugin_not_found" in gone.stderr
    finally:
        server.stop()


def test_a_state_directory_keeps_deploys_across_restarts(tmp_path):
    component = sampler_component()
    server = Server("--admin-token", "t0ken", "--state-dir", str(tmp_path))
    try:
        assert plugin(server, "deploy", "kept", "1.0.0", str(component)).returncode == 0
    finally:
        server.stop()
    server = Server("--admin-token", "t0ken", "--state-dir", str(tmp_path))
    try:
        listed = {p["name"]: p for p in json.loads(plugin(server, "list").stdout)}
        assert listed["kept"]["active_version"] == "1.0.0"
    finally:
        server.stop()


def test_plugin_cli_deploys_from_a_manifest(tmp_path):
    (tmp_path / "sampler.wasm").write_bytes(sampler_component().read_bytes())
    manifest = tmp_path / "weft-plugin.toml"
    manifest.write_text('name = "declared"\nversion = "2.1.0"\nkind = "sampler"\ncomponent = "sampler.wasm"\n'
                        '[config]\nlevel = 3\n[limits]\nmemory-mib = 32\ncall-deadline-ms = 80\n')
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "--manifest", str(manifest))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["active_version"] == "2.1.0"
        bad = tmp_path / "bad.toml"
        bad.write_text('name = "declared"\nversion = "2.2.0"\ncomponent = "sampler.wasm"\n[limits]\nmemory-mib = 9999\n')
        out = plugin(server, "deploy", "--manifest", str(bad))
        assert out.returncode != 0 and "limits.memory-mib" in out.stderr
    finally:
        server.stop()
