#!/usr/bin/env python3
"""Decoder adapters written by `bidora train`, loaded by HF PEFT: the fixtures that show PEFT
reads our CAUSAL_LM adapters and computes our logits with them.

    cargo build --release -p bidora-cli
    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/our_adapters.py BIDORA_EXE

Trains, with the given `bidora` executable, on a small made-up `prompts` task ("wA wB wC" ->
"w7 w8"), the random-weight tiny-gpt2 and tiny-llama of tiny_models.py (each given a WordPiece
vocabulary of the five BERT specials and w0 ... w94, as the CLI tests do):

  ours-gpt2-bidora/   BiDoRA on GPT-2's fused c_attn (saved as DoRA, fan_in_fan_out = true)
  ours-llama-lora/    LoRA on q_proj and v_proj

and writes under crates/bidora-models/tests/fixtures/ each adapter folder (adapter_config.json,
adapter_model.safetensors; base_model_name_or_path set to the fixture's name) and
ours-*.safetensors with, on the tiny batch of tiny-gpt2.safetensors, `logits`: what PEFT's
PeftModel.from_pretrained computes with the adapter, and `merged_logits`: what transformers
computes with the plain folder `bidora merge` writes.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel, LlamaForCausalLM
from peft import PeftModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-models", "tests", "fixtures")
RUNS = [
    ("ours-gpt2-bidora", "tiny-gpt2", GPT2LMHeadModel, "bidora"),
    ("ours-llama-lora", "tiny-llama", LlamaForCausalLM, "lora"),
]


def copy_task(folder):
    os.makedirs(folder)
    for name, n, offset in [("train", 48, 0), ("dev", 6, 3)]:
        with open(os.path.join(folder, name + ".jsonl"), "w") as fh:
            for i in range(n):
                a, b, c = (i * 7 + offset) % 40, (i * 3 + 1) % 40, (i * 5 + 2) % 40
                fh.write(json.dumps({"prompt": f"w{a} w{b} w{c}", "completion": "w7 w8"}) + "\n")


def model_folder(tmp, name):
    folder = os.path.join(tmp, name)
    os.makedirs(folder)
    for f in ["config.json", "model.safetensors"]:
        shutil.copy(os.path.join(OUT, name, f), folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(words) + "\n")
    return folder


def main():
    exe = sys.argv[1]
    batch = load_file(os.path.join(OUT, "tiny-gpt2.safetensors"))
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "copy")
        copy_task(data)
        for fixture, base, cls, method in RUNS:
            model = model_folder(tmp, base)
            run = os.path.join(tmp, fixture)
            subprocess.run([exe, "train", "--task", "prompts", "--model", model, "--data", data,
                            "--method", method, "--iterations", "24", "--batch-size", "8",
                            "--max-length", "16", "--max-new-tokens", "3", "--lower-lr", "2e-2",
                            "--upper-lr", "2e-2", "--rank", "4", "--out", run], check=True)
            folder = os.path.join(OUT, fixture)
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            for f in ["adapter_config.json", "adapter_model.safetensors"]:
                shutil.copy(os.path.join(run, "adapter", f), folder)
            cfg_path = os.path.join(folder, "adapter_config.json")
            with open(cfg_path) as fh:
                cfg = json.load(fh)
            cfg["base_model_name_or_path"] = base
            with open(cfg_path, "w") as fh:
                json.dump(cfg, fh, indent=2)
            pm = PeftModel.from_pretrained(cls.from_pretrained(model).eval(), folder).eval()
            with torch.no_grad():
                logits = pm(input_ids=ids, attention_mask=mask).logits
            # `bidora merge`'s plain folder, loaded by transformers alone.
            merged = os.path.join(tmp, fixture + "-merged")
            subprocess.run([exe, "merge", "--model", model, "--adapter", folder, "--out", merged],
                           check=True)
            plain = cls.from_pretrained(merged).eval()
            with torch.no_grad():
                merged_logits = plain(input_ids=ids, attention_mask=mask).logits
            save_file({"logits": logits.contiguous(), "merged_logits": merged_logits.contiguous()},
                      os.path.join(OUT, fixture + ".safetensors"))
            print("wrote", folder, "and its PEFT and merged logits")


if __name__ == "__main__":
    main()
