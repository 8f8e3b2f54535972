"""The `parser` resource of the `tool-parser` interface: one per answer,
fed its text delta by delta.

Text that may still become a call (from `<function=` on, and whitespace
before it) is held back until the call closes or the answer ends, so an
answer parsed whole gives exactly the events its deltas give. A call of an
undeclared tool, or whose arguments are not a JSON object, stays text; so
does a call the answer cut off.
"""
import json

from wit_world.exports import tool_parser as wit

OPEN = "<function="
CLOSE = "</function>"


def partial_marker(text: str) -> int:
    """Length of the longest end of `text` that begins OPEN."""
    return next((k for k in range(min(len(OPEN) - 1, len(text)), 0, -1) if text.endswith(OPEN[:k])), 0)


class Parser:
    def __init__(self, tools: list[wit.Tool]) -> None:
        self.names = {t.name for t in tools}
        self.held = ""
        self.calls = 0
        # A call just ended: whitespace after it is dropped until text
        # arrives, however the deltas split it.
        self.after_call = False

    def push(self, text: str) -> list[wit.Event]:
        self.held += text
        return self.drain(final=False)

    def finish(self) -> list[wit.Event]:
        return self.drain(final=True)

    def drain(self, final: bool) -> list[wit.Event]:
        events: list[wit.Event] = []

        def content(text: str) -> None:
            if text:
                events.append(wit.Event_Content(text))

        while self.held:
            if self.after_call:
                self.held = self.held.lstrip()
                self.after_call = not self.held
                continue
            start = self.held.find(OPEN)
            end = self.held.find(CLOSE, start) if start >= 0 else -1
            if final and end < 0:
                content(self.held)
                self.held = ""
            elif start < 0:
                keep = len(self.held[: len(self.held) - partial_marker(self.held)].rstrip())
                content(self.held[:keep])
                self.held = self.held[keep:]
                break
            elif end < 0:
                keep = len(self.held[:start].rstrip())
                content(self.held[:keep])
                self.held = self.held[keep:]
                break
            else:
                call = self.call(self.held[start + len(OPEN) : end])
                if call is None:
                    content(self.held[: end + len(CLOSE)])
                    self.held = self.held[end + len(CLOSE) :]
                    continue
                content(self.held[:start].rstrip())
                name, arguments = call
                events.append(wit.Event_CallStart((self.calls, name)))
                events.append(wit.Event_CallArguments((self.calls, arguments)))
                self.calls += 1
                self.held = self.held[end + len(CLOSE) :]
                self.after_call = True
        return events

    def call(self, inside: str) -> tuple[str, str] | None:
        """`NAME>{...}` as (name, arguments JSON), if it is a valid call."""
        name, _, body = inside.partition(">")
        if name not in self.names:
            return None
        try:
            arguments = json.loads(body)
        except ValueError:
            return None
        if not isinstance(arguments, dict):
            return None
        return name, json.dumps(arguments, ensure_ascii=False)
