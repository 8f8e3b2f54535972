"""lm-evaluation-harness (`lm-eval[api]` from PyPI, no torch) scores a small
local multiple-choice task through Weft's `/v1/completions` with its
`local-completions` model: the log-likelihood path (`echo` with prompt
logprobs) and the remote tokenizer (`/tokenize`, `/detokenize`,
`/tokenizer_info`). Every log-likelihood lm-eval reports must equal the one
computed here from the same endpoints, and so must its accuracy."""
import json
import os
import pathlib
import subprocess
import sys
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/lm-eval/capitals.jsonl"
LM_EVAL = pathlib.Path(sys.executable).parent / "lm_eval"

TASK = """task: weft_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: What is the capital of {{{{country}}}}?\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def post(url, path, body):
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def loglikelihood(url, context, continuation):
    """The continuation's log-likelihood after the context, the way lm-eval asks for it."""
    context_tokens = post(url, "/tokenize", {"prompt": context})["tokens"]
    whole = post(url, "/tokenize", {"prompt": context + continuation})["tokens"]
    r = post(url, "/v1/completions", {"prompt": whole, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True})
    return sum(r["choices"][0]["logprobs"]["token_logprobs"][len(context_tokens):len(whole)])


def test_lm_eval_scores_a_local_task_through_the_completions_api(server, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "weft_capitals.yaml").write_text(TASK.format(data=DATA))
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [str(LM_EVAL), "--model", "local-completions", "--model_args",
         f"model=default,base_url={server}/v1/completions,num_concurrent=1,max_retries=1,tokenizer_backend=remote",
         "--tasks", "weft_capitals", "--include_path", str(tasks), "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    acc = results["results"]["weft_capitals"]["acc,none"]
    samples = [json.loads(line) for line in next(out.rglob("samples_weft_capitals_*.jsonl")).read_text().splitlines()]
    assert len(samples) == 16
    correct = 0
    for s in samples:
        doc = s["doc"]
        context = f"Question: What is the capital of {doc['country']}?\nAnswer:"
        ours = [loglikelihood(server, context, " " + choice) for choice in doc["choices"]]
        theirs = [float(r[0][0]) for r in s["resps"]]  # the sample log keeps them as text
        assert theirs == pytest.approx(ours, abs=1e-4), doc
        correct += max(range(4), key=lambda i: ours[i]) == doc["answer"]
    assert acc == pytest.approx(correct / 16)
    # The default model knows most capitals: the task measures something.
    assert acc >= 0.5, acc
