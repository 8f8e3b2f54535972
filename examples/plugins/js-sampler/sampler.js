// A sampler plugin in JavaScript: the builtin sampler's policy (greedy,
// temperature with top-k / top-p / min-p, logit bias, repetition, presence
// and frequency penalties, EOS suppression), one call per engine step for
// the whole batch. The O(vocabulary) work stays in the host behind the
// `batch` resource; it chooses exactly the builtin sampler's tokens.
//
// Build: componentize-js sampler.js --wit ../../../wit --world-name sampler-plugin \
//          --disable http fetch-event -o js_sampler.wasm

const f32 = Math.fround;

function chooseRow(batch, row) {
  const p = batch.params(row);
  if (p.ignoreEos) batch.ban(row, batch.eosTokens());
  if (p.logitBias.length > 0) batch.adjust(row, p.logitBias);
  if (p.repetitionPenalty !== 1) {
    const seen = [...new Set(batch.history(row, 0xffffffff, false))].sort((a, b) => a - b);
    batch.penalize(row, seen, p.repetitionPenalty);
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    const counts = new Map();
    for (const t of batch.history(row, 0xffffffff, true)) counts.set(t, (counts.get(t) ?? 0) + 1);
    const deltas = [...counts.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([t, n]) => [t, -f32(p.presencePenalty + f32(p.frequencyPenalty * n))]);
    batch.adjust(row, deltas);
  }
  if (p.temperature === 0 || p.topK === 1) return batch.topK(row, 1)[0].token;
  return batch.sample(row, p.temperature, p.topK, p.topP, p.minP);
}

export const sampler = {
  init(_config) {},
  choose(batch) {
    const size = batch.size();
    const tokens = new Array(size);
    for (let row = 0; row < size; row++) tokens[row] = chooseRow(batch, row);
    return tokens;
  },
};
