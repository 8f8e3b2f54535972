"""The peer for `weft bench`: Hugging Face transformers' `generate` on the
same GPU, either on the shapes of `weft bench --synthetic SHAPE` with random
BF16 weights, or on a model directory (`--model-dir`, e.g. the default model
written by `weft export --hf DIR`, run in BF16).

Figures match weft bench's: prefill N = one prompt of N tokens, timed
forward; decode batch B = B prompts of 32 random tokens generating
NEW tokens each (end-of-sequence off), prefill and the first token excluded
(the time of a 1-token generate is subtracted). Median of ROUNDS.
Prints one JSON object.

    python3 scripts/gpu/hf_bench.py llama3-8b --batch 1,16,64,256 --prefill 512
    python3 scripts/gpu/hf_bench.py --model-dir DIR --name "SmolLM2 135M Instruct"
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

# The shapes of weft_engine::model::synthetic::Shape.
SHAPES = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                      theta=500000.0),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         theta=100000.0),
}


def load(model_dir):
    # transformers 5 names the argument `dtype` (4.x: `torch_dtype`).
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = LlamaForCausalLM.from_pretrained(model_dir, **{dtype_arg: torch.bfloat16}).to("cuda").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, model.config.vocab_size


def build(shape):
    kw = dict(SHAPES[shape])
    theta = kw.pop("theta")
    kw.update(max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    if int(transformers.__version__.split(".")[0]) >= 5:
        config = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, **kw)
    else:
        config = LlamaConfig(rope_theta=theta, **kw)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, config.vocab_size


def timed(f):
    torch.cuda.synchronize()
    start = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def prefill_tps(model, vocab, n):
    ids = torch.randint(0, vocab, (1, n), device="cuda")
    model(ids, use_cache=False)
    return n / timed(lambda: model(ids, use_cache=False))


@torch.no_grad()
def decode_tps(model, vocab, batch, new):
    ids = torch.randint(0, vocab, (batch, 32), device="cuda")
    mask = torch.ones_like(ids)

    def gen(n):
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    gen(2)
    first = timed(lambda: gen(1))
    total = timed(lambda: gen(new))
    return batch * (new - 1) / (total - first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    ap.add_argument("--model-dir", help="a Hugging Face model directory instead of a random shape")
    ap.add_argument("--name", help="the model name to report (weft bench's, to pair the rows)")
    ap.add_argument("--batch", default="1,16,64,256")
    ap.add_argument("--prefill", default="512")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if (a.shape is None) == (a.model_dir is None):
        ap.error("give a shape or --model-dir")
    model, vocab = load(a.model_dir) if a.model_dir else build(a.shape)
    name = a.name or (f"random {a.shape} (BF16)" if a.shape else a.model_dir)
    figures = {}
    for n in [int(x) for x in a.prefill.split(",") if x]:
        figures[f"prefill {n}"] = statistics.median(prefill_tps(model, vocab, n) for _ in range(a.rounds))
    for b in [int(x) for x in a.batch.split(",") if x]:
        figures[f"decode batch {b}"] = statistics.median(
            decode_tps(model, vocab, b, a.decode_tokens) for _ in range(a.rounds))
    print(json.dumps({"model": name, "device": torch.cuda.get_device_name(),
                      "peer": f"transformers {transformers.__version__}, torch {torch.__version__}",
                      "tokens_per_second": figures}))


if __name__ == "__main__":
    main()
