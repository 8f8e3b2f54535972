"""Tool calling through the official `openai` package: `required`, a named
function, parallel calls, streamed deltas reassembled equal to the whole
answer, `finish_reason`, and a tool result fed back. Arguments are checked
against each tool's schema with the `jsonschema` package.
"""
import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_calls(calls):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_parser", ["hermes", "llama3_json", "mistral"])
def test_required_always_gives_a_valid_call_in_every_format(client, tool_parser):
    r = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=96,
        temperature=0,
        extra_body={"weft": {"tool_parser": tool_parser}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    check_calls(choice.message.tool_calls)


def test_a_named_function_is_the_one_called(client):
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=64,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    check_calls(calls)
    assert r.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_call_deltas_reassemble_to_the_whole_answer(client):
    args = dict(model="default", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96, temperature=0)
    whole = client.chat.completions.create(**args).choices[0]
    calls, finish, content = {}, None, ""
    for chunk in client.chat.completions.create(stream=True, **args):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert finish == whole.finish_reason == "tool_calls"
    assert content == ""
    assert [calls[i] for i in sorted(calls)] == [
        {"name": c.function.name, "arguments": c.function.arguments} for c in whole.message.tool_calls
    ]


def test_streamed_calls_start_with_their_id_and_name_then_carry_arguments(client):
    # As OpenAI streams them: a call's first delta has `id`, `type` and
    # `function.name`; later deltas for the same index only more arguments.
    args = dict(model="default", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96, temperature=0)
    seen = {}
    for chunk in client.chat.completions.create(stream=True, **args):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                if d.index not in seen:
                    assert d.id.startswith("call_") and d.type == "function" and d.function.name, d
                    seen[d.index] = d.id
                else:
                    assert d.id is None and d.function.name is None and d.function.arguments, d
    assert seen


def test_the_tool_parser_header_chooses_the_parser(client):
    args = dict(model="default", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=96, temperature=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.with_options(default_headers={"x-weft-tool-parser": "xml"}).chat.completions.create(**args)
    assert e.value.body["code"] == "unknown_plugin" and e.value.body["param"] == "weft.tool_parser"
    assert "hermes" in e.value.body["message"], e.value.body
    r = client.with_options(default_headers={"x-weft-tool-parser": "mistral"}).chat.completions.create(**args)
    assert r.choices[0].finish_reason == "tool_calls"
    check_calls(r.choices[0].message.tool_calls)


def test_auto_and_none_answer_text_when_the_model_does_not_call(client):
    for choice in ("auto", "none"):
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Say hello."}], tools=TOOLS, tool_choice=choice, max_tokens=12, temperature=0
        )
        message = r.choices[0].message
        if message.tool_calls:
            assert choice == "auto"
            check_calls(message.tool_calls)
        else:
            assert message.content and r.choices[0].finish_reason in ("stop", "length")


def test_a_tool_result_goes_back_to_the_model(client):
    first = client.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    followup = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    r = client.chat.completions.create(model="default", messages=followup, tools=TOOLS, tool_choice="none", max_tokens=24, temperature=0)
    assert r.choices[0].message.content
    alone = client.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1)
    # The call and its result are in the prompt.
    assert r.usage.prompt_tokens > alone.usage.prompt_tokens + 20


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
        (dict(tools=[WEATHER, WEATHER]), "tools[1].function.name"),
        (dict(tools=[{"type": "retrieval"}]), "tools[0].type"),
        (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "response_format"),
        (dict(tools=TOOLS, extra_body={"weft": {"tool_parser": "xml"}}), "weft.tool_parser"),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="default", messages=ASK, max_tokens=8, **kwargs)
    assert e.value.body["param"] == param
