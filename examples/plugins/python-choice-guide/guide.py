"""The `sequence` resource of the `guide` interface: one per constrained
sequence, holding what is left of each choice that is still possible."""
from componentize_py_types import Err
from wit_world.exports import guide as wit
from wit_world.imports import types

# Filled once per instance by `setup`.
VOCAB: list[bytes] = []
TOKEN_OF: dict[bytes, int] = {}
EOS: list[int] = []
LONGEST = 1

METACHARACTERS = set(".*+?()[]{}^$\\")
# Most choices one constraint may list: the manifest's `max-choices`.
MAX_CHOICES = 256


def configure(config: list[types.ConfigEntry]) -> None:
    global MAX_CHOICES
    for entry in config:
        if entry.key == "max-choices" and isinstance(entry.value, types.ConfigValue_Integer) and entry.value.value >= 1:
            MAX_CHOICES = entry.value.value
        else:
            raise Err(types.PluginError(code="bad-config", message=f"unknown setting or wrong value: `{entry.key}`"))


def setup(vocab: list[bytes], eos: list[int]) -> None:
    global LONGEST
    VOCAB[:] = [bytes(b) for b in vocab]
    TOKEN_OF.clear()
    for token, text in enumerate(VOCAB):
        # Special tokens arrive as 0xFF + their name: never text.
        if text and text[0] != 0xFF:
            TOKEN_OF.setdefault(text, token)
    LONGEST = max(map(len, TOKEN_OF), default=1)
    EOS[:] = eos


def refused(message: str) -> types.PluginError:
    return types.PluginError(code="unsupported-constraint", message=message)


class Sequence:
    def __init__(self, constraint: wit.Constraint) -> None:
        self.failure: types.PluginError | None = None
        self.remaining: list[bytes] = []
        choices = constraint.source.split("|")
        if constraint.kind != "regex":
            self.failure = refused(f"this guide takes `weft.regex` literal alternatives, not {constraint.kind}")
        elif len(choices) > MAX_CHOICES or not all(choices):
            self.failure = refused(f"give 1 to {MAX_CHOICES} non-empty choices separated by `|`")
        elif any(c in METACHARACTERS for c in constraint.source):
            self.failure = refused("only literal alternatives (`a|b|c`) are understood; no other regex syntax")
        else:
            self.remaining = [c.encode() for c in choices]

    def error(self) -> types.PluginError | None:
        return self.failure

    def next(self) -> wit.Step:
        if self.failure:
            raise Err(self.failure)
        pending = [rest for rest in self.remaining if rest]
        if not pending:
            return wit.Step_Stop()
        mask = [0] * ((len(VOCAB) + 31) // 32)
        for rest in pending:
            for length in range(1, min(len(rest), LONGEST) + 1):
                token = TOKEN_OF.get(rest[:length])
                if token is not None:
                    mask[token >> 5] |= 1 << (token & 31)
        if len(pending) < len(self.remaining):
            # A choice is complete and a longer one still possible: the
            # model may end here.
            for token in EOS:
                mask[token >> 5] |= 1 << (token & 31)
        return wit.Step_Mask(mask)

    def commit(self, token: int) -> None:
        if token in EOS:
            self.remaining = [b""]
            return
        text = VOCAB[token]
        self.remaining = [rest[len(text):] for rest in self.remaining if rest.startswith(text)]
