"""A tool-parser plugin in Python for the `<function=NAME>{...}</function>`
format (Llama 3.1's custom-tool calls), which the builtin parser does not
know: it declares the tools to the model, writes earlier calls back into
the conversation, gives the grammar that forces a call, and parses the
model's text into calls (the `Parser` resource, in `tool_parser.py`, where
componentize-py looks for an exported interface's resources).

Build: componentize-py -d ../../../wit -w tool-parser-plugin componentize app -o python_tool_parser.wasm
Check: weft conformance --manifest weft-plugin.toml --corpus corpus.json
"""
import json

from wit_world import exports
from wit_world.exports import tool_parser
from wit_world.imports import types

from tool_parser import CLOSE, OPEN, Parser  # noqa: F401  (the resource componentize-py exports)

# Calls written compactly, so a forced call reads like the examples.
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ToolParser(exports.ToolParser):
    def init(self, config: list[types.ConfigEntry]) -> None:
        pass

    def render_tools(self, tools: list[tool_parser.Tool]) -> str:
        lines = ["You have access to these functions:"]
        for t in tools:
            signature = {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)}
            lines.append(json.dumps(signature))
        lines.append("To call a function, reply with only this, the arguments as a JSON object:")
        lines.append(f'{OPEN}function_name>{{"argument": "value"}}{CLOSE}')
        return "\n".join(lines)

    def render_calls(self, calls: list[tool_parser.Call]) -> str:
        return "\n".join(f"{OPEN}{c.name}>{c.arguments}{CLOSE}" for c in calls)

    def render_result(self, content: str) -> str:
        return content

    def call_grammar(self, tools: list[tool_parser.Tool], parallel: bool) -> str | None:
        rules, calls = [], []
        for i, t in enumerate(tools):
            schema = {**json.loads(t.parameters), "x-guidance": COMPACT}
            rules.append(f"args{i}: %json {json.dumps(schema)}")
            calls.append(f'"{OPEN}{t.name}>" args{i} "{CLOSE}"')
        start = 'start: call ("\\n" call)*' if parallel else "start: call"
        return "\n".join([start, "call: " + " | ".join(calls), *rules]) + "\n"
