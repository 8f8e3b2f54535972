"""A sampler plugin written in Python (examples/plugins/python-sampler),
built with componentize-py by this test, deployed into a real server with
its manifest, and checked token for token against the builtin sampler."""
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
EXAMPLE = ROOT / "examples/plugins/python-sampler"
COMPONENTIZE = pathlib.Path(sys.executable).parent / "componentize-py"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The example's manifest and the component built from its source."""
    out = tmp_path_factory.mktemp("python-sampler")
    built = subprocess.run(
        [str(COMPONENTIZE), "-d", str(ROOT / "wit"), "-w", "sampler-plugin", "componentize", "-p", str(EXAMPLE), "app",
         "-o", str(out / "python_sampler.wasm")],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    shutil.copy(EXAMPLE / "weft-plugin.toml", out / "weft-plugin.toml")
    return out


def plugin(server, *command):
    return subprocess.run([BINARY, "plugin", "--server", server.url, "--token", "t0ken", *command], capture_output=True, text=True, timeout=300)


def test_the_python_sampler_chooses_the_builtin_samplers_tokens(plugin_dir):
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "--manifest", str(plugin_dir / "weft-plugin.toml"))
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
            python = [c.text for c in client.completions.create(**args, extra_body={**extra, "weft": {"sampler": "python-sampler"}}).choices]
            assert python == builtin, case
        info = json.loads(plugin(server, "info", "python-sampler").stdout)
        assert info["health"][0]["faults"] == 0 and info["health"][0]["calls"] > 0
    finally:
        server.stop()


def test_without_its_grant_the_python_component_is_refused(plugin_dir):
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "python-sampler", "0.1.0", str(plugin_dir / "python_sampler.wasm"))
        assert out.returncode != 0
        assert "plugin_rejected" in out.stderr and ("wasi:filesystem" in out.stderr or "wasi:sockets" in out.stderr), out.stderr
    finally:
        server.stop()
