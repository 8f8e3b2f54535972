"""A sampler plugin in Python: the builtin sampler's policy (greedy,
temperature with top-k / top-p / min-p, logit bias, repetition, presence
and frequency penalties, EOS suppression), one call per engine step for the
whole batch.

The O(vocabulary) work stays in the host behind the `batch` resource: the
guest asks for the row's parameters, its recent tokens, and the host's
argmax or nucleus draw, so a Python call moves a few short lists and never
a row of 49,152 floats. It chooses exactly the tokens the builtin (Rust)
sampler and the host's native sampler choose.

Build: componentize-py -d ../../../wit -w sampler-plugin componentize app -o python_sampler.wasm
"""
import struct
from collections import Counter

from wit_world import exports
from wit_world.imports import sampling, types


class Sampler(exports.Sampler):
    def init(self, config: list[types.ConfigEntry]) -> None:
        pass

    def choose(self, batch: sampling.Batch) -> list[int]:
        return [choose_row(batch, row) for row in range(batch.size())]


def choose_row(batch: sampling.Batch, row: int) -> int:
    p = batch.params(row)
    if p.ignore_eos:
        batch.ban(row, batch.eos_tokens())
    if p.logit_bias:
        batch.adjust(row, p.logit_bias)
    if p.repetition_penalty != 1.0:
        seen = sorted(set(batch.history(row, 0xFFFFFFFF, False)))
        batch.penalize(row, seen, p.repetition_penalty)
    if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
        counts = Counter(batch.history(row, 0xFFFFFFFF, True))
        deltas = [(t, -f32(p.presence_penalty + f32(p.frequency_penalty * n))) for t, n in sorted(counts.items())]
        batch.adjust(row, deltas)
    if p.temperature == 0.0 or p.top_k == 1:
        return batch.top_k(row, 1)[0].token
    return batch.sample(row, p.temperature, p.top_k, p.top_p, p.min_p)


def f32(x: float) -> float:
    """`x` rounded to single precision, as the host's arithmetic is."""
    return struct.unpack("f", struct.pack("f", x))[0]
