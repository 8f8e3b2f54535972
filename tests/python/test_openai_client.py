"""The official `openai` Python package against a real Weft server.

Everything here goes through the SDK exactly as an application would:
typed responses, streaming iterators, and the exception classes the SDK
raises for each status code.
"""
import urllib.request

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_chat_completion_returns_a_typed_answer(client):
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=16, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_streaming_chunks_add_up_to_the_whole_answer(client):
    whole = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_with_n_and_stop(client):
    r = client.completions.create(model="default", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"])
    assert r.choices[0].finish_reason == "stop"
    assert " 7" not in r.choices[0].text and "5" in r.choices[0].text
    r = client.completions.create(model="default", prompt="Once upon a time", max_tokens=8, n=2, seed=3, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]


def test_a_seed_reproduces_a_sampled_answer(client):
    args = dict(model="default", messages=MESSAGES, max_tokens=20, temperature=1.0, seed=77)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = client.chat.completions.create(**args).choices[0].message.content
    assert a == b


def test_logprobs_come_back_typed(client):
    r = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)


def test_models_are_listed(client):
    ids = [m.id for m in client.models.list()]
    assert "default" in ids
    assert client.models.retrieve("default").id == "default"


@pytest.mark.parametrize(
    "kwargs, exception, code",
    [
        (dict(max_tokens=-1), openai.BadRequestError, "invalid_value"),
        (dict(top_logprobs=21, logprobs=True), openai.BadRequestError, "invalid_value"),
        (dict(model="gpt-4"), openai.NotFoundError, "model_not_found"),
        (dict(functions=[{"name": "f"}]), openai.BadRequestError, "unsupported_parameter"),
        (dict(max_tokens=100_000), openai.BadRequestError, "invalid_value"),
    ],
)
def test_errors_raise_the_sdks_exception_classes(client, kwargs, exception, code):
    args = dict(model="default", messages=MESSAGES, max_tokens=4)
    args.update(kwargs)
    with pytest.raises(exception) as e:
        client.chat.completions.create(**args)
    assert e.value.code == code
    assert e.value.body["message"]


def requests_counted(server, status):
    metrics = urllib.request.urlopen(f"{server}/metrics").read().decode()
    prefix = f'weft_http_requests_total{{route="/v1/chat/completions",status="{status}"}} '
    return sum(int(float(line[len(prefix):])) for line in metrics.splitlines() if line.startswith(prefix))


def test_deterministic_failures_are_not_retried(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=3)
    before = requests_counted(server, 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[], max_tokens=4)
    assert requests_counted(server, 400) == before + 1
