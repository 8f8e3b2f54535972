"""`weft serve --config FILE`: settings from a TOML file, flags winning over it."""
import json
import urllib.error
import urllib.request

import pytest
from conftest import Server


def post(url, body):
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_settings_come_from_the_config_file(tmp_path):
    config = tmp_path / "weft.toml"
    config.write_text('max-output-tokens = 4\nmax-queued = 8\n')
    server = Server("--config", str(config))
    try:
        status, body = post(server.url, {"prompt": "Hello", "max_tokens": 5})
        assert status == 400 and "[1, 4]" in body["error"]["message"], body
        status, body = post(server.url, {"prompt": "Hello", "max_tokens": 4})
        assert status == 200 and body["usage"]["completion_tokens"] <= 4
    finally:
        server.stop()


def test_an_unknown_key_stops_the_server_with_its_name(tmp_path):
    config = tmp_path / "weft.toml"
    config.write_text("max-qeued = 8\n")
    with pytest.raises(RuntimeError, match="max-qeued"):
        Server("--config", str(config))


def metric(url, name):
    metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return next(int(float(line.split()[-1])) for line in metrics.splitlines() if line.startswith(name))


def test_the_step_token_budget_chunks_a_long_prompt(tmp_path):
    # A prompt of over 512 tokens takes at least one step per 64 tokens at
    # the file's budget.
    config = tmp_path / "weft.toml"
    config.write_text("max-batch-tokens = 64\n")
    server = Server("--config", str(config), "--max-running", "8")
    try:
        prompt = " ".join(f"word{i}" for i in range(200))
        status, body = post(server.url, {"prompt": prompt, "max_tokens": 1})
        assert status == 200, body
        prompt_tokens = body["usage"]["prompt_tokens"]
        assert prompt_tokens > 512, prompt_tokens
        # The step histogram is written before the answer is delivered: every
        # step computed at most 64 tokens, and together the prompt.
        steps = metric(server.url, "weft_step_tokens_count")
        assert steps >= -(-prompt_tokens // 64), steps
        assert metric(server.url, 'weft_step_tokens_bucket{le="64.0"}') == steps
        assert metric(server.url, "weft_step_tokens_sum") == prompt_tokens
    finally:
        server.stop()


def test_a_step_budget_below_the_running_sequences_stops_the_server():
    with pytest.raises(RuntimeError, match=r"max-batch-tokens \(8\) must be at least max-running \(16\)"):
        Server("--max-batch-tokens", "8", "--max-running", "16")
