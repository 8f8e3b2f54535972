"""Structured output and tool calls from Weft with the official `openai`
package: a JSON-schema answer, then a required tool call.

    python3 examples/clients/structured_output.py [BASE_URL]
"""
import json
import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
client = OpenAI(base_url=f"{base}/v1", api_key="unused")

person = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
r = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Invent a person."}],
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person}},
    max_tokens=200,
)
print(json.dumps(json.loads(r.choices[0].message.content)))

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
r = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[weather],
    tool_choice="required",
    parallel_tool_calls=False,
    max_tokens=200,
)
call = r.choices[0].message.tool_calls[0]
print(json.dumps({"name": call.function.name, "arguments": json.loads(call.function.arguments)}))
