// A sampler plugin in JavaScript: the builtin sampler's policy (greedy,
// temperature with top-k / top-p / min-p, logit bias, repetition, presence
// and frequency penalties, EOS suppression), one call per engine step for
// the whole batch. The O(vocabulary) work stays in the host behind the
// `batch` resource, and so does the loop over rows: a host call from
// SpiderMonkey inside Wasm costs microseconds, so every row goes to
// `sampleByParams` in one call. It chooses exactly the builtin sampler's
// tokens. A policy of its own changes some rows first through the per-row
// calls (`params`, `history`, `adjust`, `penalize`, `ban`).
//
// Build: componentize-js sampler.js --wit ../../../wit --world-name sampler-plugin \
//          --disable http fetch-event -o js_sampler.wasm

export const sampler = {
  init(_config) {},
  choose(batch) {
    // A typed array crosses into the host as one copy; a plain Array built
    // with a callback costs the interpreter several microseconds a row.
    const n = batch.size();
    const rows = new Uint32Array(n);
    for (let row = 0; row < n; row++) rows[row] = row;
    return batch.sampleByParams(rows);
  },
};
