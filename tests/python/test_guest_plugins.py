"""Sampler plugins written in Python (examples/plugins/python-sampler, built
with componentize-py) and JavaScript (examples/plugins/js-sampler, built
with componentize-js), compiled from source by this test, deployed into a
real server with their manifests, and checked token for token against the
builtin (Rust) sampler."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from openai import OpenAI

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WEFT_BIN", str(ROOT / "target/release/weft"))
# componentize-js, installed by scripts/test.sh (npm, into target/jsenv).
COMPONENTIZE_JS = ROOT / "target/jsenv/node_modules/.bin/componentize-js"

GUESTS = {
    "python": (
        "python-sampler",
        "python_sampler.wasm",
        lambda src, out: [str(pathlib.Path(sys.executable).parent / "componentize-py"), "-d", str(ROOT / "wit"), "-w", "sampler-plugin",
                          "componentize", "-p", str(src), "app", "-o", str(out)],
    ),
    "javascript": (
        "js-sampler",
        "js_sampler.wasm",
        lambda src, out: [str(COMPONENTIZE_JS), str(src / "sampler.js"), "--wit", str(ROOT / "wit"), "--world-name", "sampler-plugin",
                          "--disable", "http", "fetch-event", "-o", str(out)],
    ),
}


@pytest.fixture(scope="module", params=sorted(GUESTS))
def guest(request, tmp_path_factory):
    """(plugin name, folder with its manifest and the component built from its source)."""
    name, wasm, build = GUESTS[request.param]
    src = ROOT / "examples/plugins" / name
    out = tmp_path_factory.mktemp(name)
    built = subprocess.run(build(src, out / wasm), capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    shutil.copy(src / "weft-plugin.toml", out / "weft-plugin.toml")
    return name, out, wasm


def plugin(server, *command):
    return subprocess.run([BINARY, "plugin", "--server", server.url, "--token", "t0ken", *command], capture_output=True, text=True, timeout=300)


def test_the_guest_sampler_chooses_the_builtin_samplers_tokens(guest):
    name, folder, _ = guest
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "--manifest", str(folder / "weft-plugin.toml"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["active_version"] == "0.1.0"
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        cases = [
            dict(temperature=0),
            dict(temperature=0.9, top_p=0.9, seed=7),
            dict(temperature=1.2, seed=3, presence_penalty=0.4, frequency_penalty=0.3, n=2),
            dict(temperature=0.7, seed=11, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2}),
            dict(temperature=1.0, seed=5, logit_bias={"13": -100}, extra_body={"ignore_eos": True}),
        ]
        for case in cases:
            extra = dict(case.pop("extra_body", {}))
            args = dict(model="default", prompt="Once upon a time", max_tokens=20, **case)
            builtin = [c.text for c in client.completions.create(**args, extra_body=extra).choices]
            theirs = [c.text for c in client.completions.create(**args, extra_body={**extra, "weft": {"sampler": name}}).choices]
            assert theirs == builtin, case
        info = json.loads(plugin(server, "info", name).stdout)
        assert info["health"][0]["faults"] == 0 and info["health"][0]["calls"] > 0
    finally:
        server.stop()


def test_without_its_grant_the_guest_component_is_refused(guest):
    name, folder, wasm = guest
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", name, "0.1.0", str(folder / wasm))
        assert out.returncode != 0
        assert "plugin_rejected" in out.stderr and ("wasi:filesystem" in out.stderr or "wasi:sockets" in out.stderr), out.stderr
    finally:
        server.stop()
