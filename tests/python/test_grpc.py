"""The gRPC API from Python stubs generated from our .proto (grpcio-tools):
unary, streaming, cancellation, status codes, health checking, reflection."""
import json
import re
import time
import urllib.request

import grpc
import pytest


@pytest.fixture()
def stub(weft, pb):
    channel = grpc.insecure_channel(weft.grpc)
    yield pb[1].GenerationStub(channel)
    channel.close()


CONSTRAINTS = ("json_object", "json_schema", "regex", "lark")


def chat(pb, text, **sampling):
    m = pb[0]
    constraint = {k: sampling.pop(k) for k in CONSTRAINTS if k in sampling}
    return m.GenerateRequest(
        model="default",
        chat=m.Messages(messages=[m.ChatMessage(role="user", content=text)]),
        sampling=m.SamplingParameters(**sampling),
        **constraint,
    )


def test_unary_generate_equals_the_http_answer(client, stub, pb):
    r = stub.Generate(chat(pb, "Name three colours.", max_tokens=16, temperature=0))
    http = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=16, temperature=0)
    assert r.choices[0].text == http.choices[0].message.content
    assert r.usage.completion_tokens == http.usage.completion_tokens == len(r.choices[0].tokens)
    assert r.usage.prompt_tokens == http.usage.prompt_tokens
    assert r.choices[0].finish_reason in (pb[0].FINISH_REASON_STOP, pb[0].FINISH_REASON_LENGTH)


def test_streamed_chunks_add_up_to_the_unary_answer(stub, pb):
    whole = stub.Generate(chat(pb, "Say hello.", max_tokens=12, temperature=0))
    chunks = list(stub.GenerateStream(chat(pb, "Say hello.", max_tokens=12, temperature=0)))
    assert "".join(c.text for c in chunks) == whole.choices[0].text
    assert [t for c in chunks for t in c.tokens] == list(whole.choices[0].tokens)
    assert chunks[-1].HasField("usage") and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def running_and_free(server):
    metrics = urllib.request.urlopen(f"{server}/metrics").read().decode()
    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values["weft_engine_running_sequences"], values["weft_kv_blocks_free"], values["weft_kv_blocks"]


def test_cancelling_a_stream_frees_its_kv_blocks(server, stub, pb):
    call = stub.GenerateStream(chat(pb, "Write a long essay.", max_tokens=2000, ignore_eos=True))
    for _, _ in zip(range(3), call):
        pass
    call.cancel()
    deadline = time.time() + 10
    while time.time() < deadline:
        running, free, total = running_and_free(server)
        if running == 0 and free == total:
            break
        time.sleep(0.05)
    assert (running, free) == (0, total)


def test_errors_map_to_grpc_status_codes(stub, pb):
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(chat(pb, "hi", max_tokens=-1))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())["weft-error-code"] == "invalid_value"
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(pb[0].GenerateRequest(model="gpt-4", prompt="hi"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(pb[0].GenerateRequest(model="default"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tokenize_and_list_models(stub, pb):
    m = pb[0]
    tokens = stub.Tokenize(m.TokenizeRequest(prompt="Hello, world!")).tokens
    assert len(tokens) > 0
    ids = [x.id for x in stub.ListModels(m.ListModelsRequest()).models]
    assert "default" in ids


def test_health_checking_reports_serving(weft):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(weft.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "weft.v1.Generation"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_generation_service(weft):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(weft.grpc) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name for r in replies for s in r.list_services_response.service]
    assert "weft.v1.Generation" in names


def test_guided_generation_over_grpc(stub, pb):
    import json

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = stub.Generate(chat(pb, "Is water wet? Answer in JSON.", max_tokens=32, temperature=0, json_schema=json.dumps(schema)))
    assert r.choices[0].finish_reason == pb[0].FINISH_REASON_STOP
    assert isinstance(json.loads(r.choices[0].text)["ok"], bool)
    r = stub.Generate(chat(pb, "Pick a number.", max_tokens=8, temperature=0, regex="[0-9]{2}"))
    assert len(r.choices[0].text) == 2 and r.choices[0].text.isdigit()
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(chat(pb, "hi", max_tokens=8, regex="foo**"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "repetition" in e.value.details()


TIME_TOOL = dict(
    name="get_time",
    description="The local time in a time zone.",
    parameters='{"type": "object", "properties": {"zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}}, '
    '"required": ["zone"], "additionalProperties": false}',
)


def tool_request(pb, **extra):
    m = pb[0]
    return m.GenerateRequest(
        model="default",
        chat=m.Messages(messages=[m.ChatMessage(role="user", content="What time is it in Tokyo?")]),
        sampling=m.SamplingParameters(max_tokens=64, temperature=0),
        tools=[m.Tool(**TIME_TOOL)],
        parallel_tool_calls=False,
        **extra,
    )


def test_tool_calls_over_grpc_whole_and_streamed(stub, pb):
    m = pb[0]
    whole = stub.Generate(tool_request(pb, tool_choice=m.TOOL_CHOICE_REQUIRED)).choices[0]
    assert whole.finish_reason == m.FINISH_REASON_TOOL_CALLS, whole
    (call,) = whole.tool_calls
    assert call.id.startswith("call_") and call.name == "get_time"
    zone = json.loads(call.arguments)["zone"]
    assert re.fullmatch("[A-Z][a-z]+/[A-Z][a-z]+", zone), zone
    assert whole.text == ""
    # Streamed: the call's first piece has its id and name, and the pieces
    # add up to the whole answer's call.
    chunks = list(stub.GenerateStream(tool_request(pb, tool_choice=m.TOOL_CHOICE_REQUIRED)))
    pieces = [t for c in chunks for t in c.tool_calls]
    assert pieces[0].id.startswith("call_") and pieces[0].name == "get_time"
    assert all(p.index == 0 and not p.name for p in pieces[1:])
    assert "".join(p.arguments for p in pieces) == call.arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == [m.FINISH_REASON_TOOL_CALLS]
    # A named function and another parser work the same way.
    named = stub.Generate(tool_request(pb, tool_function="get_time", tool_parser="mistral")).choices[0]
    assert named.finish_reason == m.FINISH_REASON_TOOL_CALLS and named.tool_calls[0].name == "get_time"


def test_a_tool_result_goes_back_to_the_model_over_grpc(stub, pb):
    m = pb[0]
    call = m.ToolCall(id="call_1", name="get_time", arguments='{"zone": "Asia/Tokyo"}')
    history = [
        m.ChatMessage(role="user", content="What time is it in Tokyo?"),
        m.ChatMessage(role="assistant", tool_calls=[call]),
        m.ChatMessage(role="tool", tool_call_id="call_1", content='{"time": "09:30"}'),
    ]
    request = m.GenerateRequest(
        model="default", chat=m.Messages(messages=history), sampling=m.SamplingParameters(max_tokens=1), tools=[m.Tool(**TIME_TOOL)]
    )
    alone = m.GenerateRequest(model="default", chat=m.Messages(messages=history[:1]), sampling=m.SamplingParameters(max_tokens=1))
    assert stub.Generate(request).usage.prompt_tokens > stub.Generate(alone).usage.prompt_tokens + 20


@pytest.mark.parametrize(
    "extra, code",
    [
        (dict(tool_function="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(tool_parser="xml"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_tool_requests_over_grpc(stub, pb, extra, code):
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(tool_request(pb, **extra))
    assert e.value.code() == code, e.value.details()
    bad = pb[0].Tool(name="f", parameters="{not json")
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(pb[0].GenerateRequest(model="default", prompt="Hi", tools=[bad]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parameters" in e.value.details()
