"""A guide plugin in Python: the answer is exactly one of a list of
choices, given as `weft.regex` literal alternatives (`Paris|London|Berlin`,
the one part of regular expressions it understands) — the "choice"
constraint classification and routing prompts need.

`init` indexes the vocabulary once per instance; each step's mask allows the
tokens that spell a next piece of some choice still possible (and the end
of generation once one is complete). The `Sequence` resource lives in
`guide.py`, where componentize-py looks for an exported interface's
resources.

Build: componentize-py -d ../../../wit -w guide-plugin componentize app -o python_choice_guide.wasm
"""
from wit_world import exports
from wit_world.imports import types

import guide
from guide import Sequence  # noqa: F401  (the resource componentize-py exports)


class Guide(exports.Guide):
    def init(self, config: list[types.ConfigEntry], vocab: list[bytes], eos: list[int]) -> None:
        guide.configure(config)
        guide.setup(vocab, eos)
