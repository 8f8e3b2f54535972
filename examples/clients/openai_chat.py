"""Stream a chat answer from Weft with the official openai package.

    pip install openai
    python3 examples/clients/openai_chat.py [BASE_URL]

BASE_URL defaults to http://127.0.0.1:8080 (what `weft serve` listens on).
"""
import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
client = OpenAI(base_url=f"{base}/v1", api_key="unused")
stream = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Name three colours."}],
    max_tokens=32,
    stream=True,
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
