"""The client examples under examples/clients/ run against a real server."""
import json
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples/clients"


def test_openai_example_streams_an_answer(server):
    out = subprocess.run([sys.executable, EXAMPLES / "openai_chat.py", server], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_curl_example_gets_a_completion_and_a_stream(server):
    out = subprocess.run(["bash", EXAMPLES / "curl.sh", server], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"object":"chat.completion"' in out.stdout
    assert out.stdout.rstrip().endswith("data: [DONE]")


def test_grpc_example_streams_an_answer(weft):
    out = subprocess.run([sys.executable, EXAMPLES / "grpc_chat.py", weft.grpc], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_structured_output_example_prints_a_person_and_a_call(server):
    out = subprocess.run([sys.executable, EXAMPLES / "structured_output.py", server], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    person, call = map(json.loads, out.stdout.strip().splitlines())
    # Sampled without a seed, so the values vary; their shape may not.
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and 0 <= person["age"] <= 120
    assert call["name"] == "get_weather"
    assert set(call["arguments"]) == {"city"} and isinstance(call["arguments"]["city"], str)
