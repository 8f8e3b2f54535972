"""Guided generation through the official `openai` package: every output is
checked by an independent validator (the `jsonschema` package for schemas,
Python's `re` for regular expressions), never by the guide that produced it.
"""
import json
import pathlib
import re

import jsonschema
import openai
import pytest

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
CORPUS = json.loads((DATA / "json-schemas/corpus.json").read_text())["schemas"]
# Real-world configuration-file schemas (tests/data/json-schemas/real-world/README.md).
REAL_WORLD = sorted((DATA / "json-schemas/real-world").glob("*.json"))
UNSUPPORTED = {"unique_items_unsupported": "uniqueItems", "not_unsupported": "not"}
# Of the real-world schemas, at least this many are served (measured: see
# docs/performance.md, "Guided generation").
MIN_REAL_WORLD_SERVED = 5


def ask(client, content, max_tokens=96, **kwargs):
    return client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        **kwargs,
    )


def test_every_output_for_every_supported_schema_is_valid(client):
    supported, finished = 0, 0
    for name, schema in CORPUS.items():
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        if name in UNSUPPORTED:
            with pytest.raises(openai.BadRequestError) as e:
                ask(client, f"Give me {name}", response_format=fmt)
            assert UNSUPPORTED[name] in e.value.message
            assert e.value.body["param"] == "response_format.json_schema.schema"
            continue
        supported += 1
        r = ask(client, f"Give me an example {name.replace('_', ' ')} as JSON.", max_tokens=160, response_format=fmt)
        choice = r.choices[0]
        if choice.finish_reason == "length":
            # Cut off by max_tokens: a prefix of a valid document, like any
            # truncated completion.
            continue
        assert choice.finish_reason == "stop", name
        finished += 1
        jsonschema.validate(json.loads(choice.message.content), schema)
    print(f"{supported}/{len(CORPUS)} schemas supported; {finished}/{supported} finished within 160 tokens, all valid")
    assert supported == len(CORPUS) - len(UNSUPPORTED)
    assert finished >= supported * 3 // 4


def test_real_world_schemas_are_served_validly_or_refused_clearly(client):
    served, finished, refused = [], [], {}
    for path in REAL_WORLD:
        schema = json.loads(path.read_text())
        fmt = {"type": "json_schema", "json_schema": {"name": path.stem, "schema": schema}}
        try:
            # Greedy with penalties: the small model otherwise repeats an
            # array item or a string until max_tokens.
            r = ask(client, f"Write a minimal {path.stem} configuration as JSON.", max_tokens=400, response_format=fmt,
                    frequency_penalty=1.0, extra_body={"repetition_penalty": 1.2})
        except openai.BadRequestError as e:
            assert e.body["param"] == "response_format.json_schema.schema", (path.stem, e.message)
            refused[path.stem] = e.message
            continue
        served.append(path.stem)
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "stop", path.stem
        finished.append(path.stem)
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = [e.message for e in validator.iter_errors(json.loads(choice.message.content))]
        assert not errors, (path.stem, choice.message.content, errors)
    print(f"{len(served)}/{len(REAL_WORLD)} real-world schemas served, {len(finished)} finished within 400 tokens, all valid; refused: {refused}")
    assert len(served) >= MIN_REAL_WORLD_SERVED, refused
    assert len(finished) >= len(served) // 2, (served, finished)


def test_json_object_mode_gives_a_json_object(client):
    r = ask(client, "Describe a cat in JSON with at most three keys.", max_tokens=120, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_regex_and_grammar_outputs_match(client):
    r = ask(client, "What is today's date?", extra_body={"weft": {"regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"}})
    assert r.choices[0].finish_reason == "stop"
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", r.choices[0].message.content)
    grammar = 'start: answer " because " reason\nanswer: "yes" | "no"\nreason: /[a-z ]{1,30}/'
    r = ask(client, "Is the sky blue? Answer and say why.", extra_body={"weft": {"lark": grammar}})
    assert re.fullmatch(r"(yes|no) because [a-z ]{1,30}", r.choices[0].message.content), r.choices[0].message.content


def test_streamed_guided_output_equals_the_whole_one(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": CORPUS["person"]}}
    whole = ask(client, "Invent a person.", response_format=fmt)
    stream = ask(client, "Invent a person.", response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), CORPUS["person"])


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"weft": {"regex": "foo**"}}, "weft.regex"),
        ({"weft": {"regex": "(unclosed"}}, "weft.regex"),
        ({"weft": {"lark": "start: undefined_rule"}}, "weft.lark"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}, "response_format.json_schema.schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_object"}, "weft": {"regex": "a"}}, "weft.regex"),
    ],
)
def test_hostile_or_invalid_constraints_are_a_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body=extra, timeout=10
        )
    assert e.value.status_code == 400
    assert e.value.body["param"] == param


def test_a_huge_enum_and_a_huge_grammar_are_refused_or_served_quickly(client):
    big_enum = {"type": "string", "enum": [f"value{i}" for i in range(100_000)]}
    try:
        r = ask(client, "Pick one.", max_tokens=8, timeout=30, response_format={"type": "json_schema", "json_schema": {"name": "e", "schema": big_enum}})
        assert r.choices[0].finish_reason in ("stop", "length")
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format.json_schema.schema"
    rules = "\n".join(f'r{i}: "tok{i}"' for i in range(200_000))
    grammar = "start: " + " | ".join(f"r{i}" for i in range(200_000)) + "\n" + rules
    assert len(grammar) > 5_000_000 - 3_000_000  # megabytes of grammar
    with pytest.raises((openai.BadRequestError, openai.APIStatusError)) as e:
        ask(client, "Go.", max_tokens=8, timeout=30, extra_body={"weft": {"lark": grammar}})
    assert e.value.status_code in (400, 413)
    # The server still serves everyone else.
    assert ask(client, "Say hi.", max_tokens=4).choices[0].finish_reason in ("stop", "length")
