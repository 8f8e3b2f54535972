"""A sampler plugin in Python: the builtin sampler's policy (greedy,
temperature with top-k / top-p / min-p, logit bias, repetition, presence
and frequency penalties, EOS suppression), one call per engine step for the
whole batch.

The O(vocabulary) work stays in the host behind the `batch` resource, and
so does the loop over rows: a host call from CPython inside Wasm costs
microseconds, so the policy hands every row to `sample-by-params` in one
call, whatever the batch size. It chooses exactly the tokens the builtin
(Rust) sampler and the host's native sampler choose. A policy of its own
changes some rows first through the per-row calls (`params`, `history`,
`adjust`, `penalize`, `ban`) or draws them itself (`nucleus`, `sample`).

Build: componentize-py -d ../../../wit -w sampler-plugin componentize app -o python_sampler.wasm
"""
from wit_world import exports
from wit_world.imports import sampling, types


class Sampler(exports.Sampler):
    def init(self, config: list[types.ConfigEntry]) -> None:
        pass

    def choose(self, batch: sampling.Batch) -> list[int]:
        return batch.sample_by_params(list(range(batch.size())))
