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
