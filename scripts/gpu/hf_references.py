"""Transformers' float32 logits for the tiny Llamas of tests/data/hf-tiny, on a GPU.

The committed references were computed on a CPU; this recomputes them with
the same inputs on CUDA (TF32 off, float32 weights from exactly the stored
values), so the backend's `transformers` tests can compare against
transformers on the same GPU:

    python3 scripts/gpu/hf_references.py OUT_DIR
    WEFT_HF_REFERENCES=OUT_DIR .gpu/bin/backend transformers

Each OUT_DIR/NAME.reference.safetensors holds `input_ids` (copied from the
committed reference) and `logits` (f32 [T, vocab]).
"""

import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

HF_TINY = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "hf-tiny")
NAMES = ["gqa-f32", "gqa-llama3-rope-bf16", "mha-linear-rope-f16"]


def main(out_dir):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(out_dir, exist_ok=True)
    for name in NAMES:
        # transformers 5 names the argument `dtype` (4.x: `torch_dtype`).
        dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        model = LlamaForCausalLM.from_pretrained(os.path.join(HF_TINY, name), **{dtype_arg: torch.float32})
        model = model.to("cuda").eval()
        ids = load_file(os.path.join(HF_TINY, name + ".reference.safetensors"))["input_ids"]
        with torch.no_grad():
            logits = model(ids[None, :].to("cuda")).logits[0].float().cpu().contiguous()
        save_file({"input_ids": ids, "logits": logits}, os.path.join(out_dir, name + ".reference.safetensors"))
        print(f"{name}: logits on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main(sys.argv[1])
