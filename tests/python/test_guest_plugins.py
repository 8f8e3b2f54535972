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

import openai
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


def build_python_example(tmp_path_factory, example, world, wasm, files=("weft-plugin.toml",)):
    """A folder with examples/plugins/EXAMPLE built from source by componentize-py, and its `files`."""
    src = ROOT / "examples/plugins" / example
    out = tmp_path_factory.mktemp(example)
    command = [str(pathlib.Path(sys.executable).parent / "componentize-py"), "-d", str(ROOT / "wit"), "-w", world,
               "componentize", "-p", str(src), "app", "-o", str(out / wasm)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    for name in files:
        shutil.copy(src / name, out / name)
    return out


@pytest.fixture(scope="module")
def python_tool_parser(tmp_path_factory):
    return build_python_example(tmp_path_factory, "python-tool-parser", "tool-parser-plugin", "python_tool_parser.wasm",
                                ("weft-plugin.toml", "corpus.json"))


def test_the_python_tool_parser_passes_its_conformance_corpus(python_tool_parser):
    check = [BINARY, "conformance", "--manifest", str(python_tool_parser / "weft-plugin.toml"), "--corpus", str(python_tool_parser / "corpus.json")]
    out = subprocess.run(check, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "10 of 10 cases pass" in out.stdout, out.stdout
    # The kit fails a parser that does not read the corpus's format.
    other = [BINARY, "conformance", "builtin", "--corpus", str(python_tool_parser / "corpus.json")]
    out = subprocess.run(other, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "FAIL one_call" in out.stdout, out.stdout + out.stderr


def test_a_deployed_python_tool_parser_forces_and_parses_calls(python_tool_parser):
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "--manifest", str(python_tool_parser / "weft-plugin.toml"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["kind"] == "tool-parser"
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        tool = {"type": "function", "function": {"name": "get_time", "description": "The local time in a time zone.", "parameters": {
            "type": "object", "properties": {"zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
            "required": ["zone"], "additionalProperties": False}}}
        args = dict(model="default", messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=[tool],
                    tool_choice="required", parallel_tool_calls=False, max_tokens=48, temperature=0,
                    extra_body={"weft": {"tool_parser": "python-tool-parser"}})
        whole = client.chat.completions.create(**args).choices[0]
        assert whole.finish_reason == "tool_calls", whole
        (call,) = whole.message.tool_calls
        assert call.function.name == "get_time"
        zone = json.loads(call.function.arguments)["zone"]
        assert "/" in zone and zone[0].isupper(), zone
        streamed = {}
        for chunk in client.chat.completions.create(stream=True, **args):
            for d in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                entry = streamed.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
        assert streamed == {0: {"name": "get_time", "arguments": call.function.arguments}}
        info = json.loads(plugin(server, "info", "python-tool-parser").stdout)
        assert info["health"][0]["faults"] == 0 and info["health"][0]["calls"] > 0
    finally:
        server.stop()


@pytest.fixture(scope="module")
def python_choice_guide(tmp_path_factory):
    return build_python_example(tmp_path_factory, "python-choice-guide", "guide-plugin", "python_choice_guide.wasm")


def test_a_deployed_python_guide_keeps_answers_to_its_choices(python_choice_guide):
    server = Server("--admin-token", "t0ken")
    try:
        out = plugin(server, "deploy", "--manifest", str(python_choice_guide / "weft-plugin.toml"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["kind"] == "guide"
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        cities = ["Paris", "London", "Berlin", "Bern"]
        prompts = ["What is the capital of France?", "Name a city in England.", "Say something nice.", "Which city has the Brandenburg Gate?"]
        answers = set()
        for seed, prompt in enumerate(prompts):
            r = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=1.0, seed=seed,
                extra_body={"weft": {"guide": "python-choice-guide", "regex": "|".join(cities)}},
            )
            assert r.choices[0].message.content in cities, r.choices[0]
            assert r.choices[0].finish_reason == "stop", r.choices[0]
            answers.add(r.choices[0].message.content)
        # What the guide does not understand is a 400 naming the field.
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           extra_body={"weft": {"guide": "python-choice-guide", "regex": "Par.s"}})
        assert e.value.body["param"] == "weft.regex" and "literal alternatives" in e.value.body["message"]
        # The manifest's configuration reaches the guide: max-choices = 16.
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           extra_body={"weft": {"guide": "python-choice-guide", "regex": "|".join(f"c{i}" for i in range(17))}})
        assert "give 1 to 16" in e.value.body["message"], e.value.body
        info = json.loads(plugin(server, "info", "python-choice-guide").stdout)
        assert info["health"][0]["faults"] == 0 and info["health"][0]["calls"] > 0
    finally:
        server.stop()
