#!/usr/bin/env python3
"""Golden fixtures for crates/bidora-models, computed with HF transformers and PEFT.

    scripts/golden/setup.sh /opt/bidora-py
    cargo xtask assets minilm            # unpacks all-MiniLM-L6-v2 and prints its folder
    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/models.py MINILM_DIR

Writes crates/bidora-models/tests/fixtures/:
  minilm.safetensors   input_ids / attention_mask / token_type_ids of real sentences (a
                       padded batch, one pair) and BertModel's last_hidden_state and
                       pooler_output for them.
  minilm_dora/         a PEFT DoRA adapter (r=8, alpha=16, query+value, classifier in
                       modules_to_save) on BertForSequenceClassification(num_labels=3) with
                       non-zero lora_B and non-trivial magnitudes, saved by save_pretrained;
                       minilm_dora.safetensors holds its logits on the same batch.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertForSequenceClassification, BertModel, BertTokenizerFast
from peft import LoraConfig, get_peft_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-models", "tests", "fixtures")


def main():
    model_dir = sys.argv[1]
    torch.manual_seed(0)
    tok = BertTokenizerFast.from_pretrained(model_dir)
    first = ["The quick brown fox jumps over the lazy dog.", "BiDoRA trains magnitudes on validation data.", "Paris"]
    second = [None, "Directions are trained on the training split.", None]
    enc = tok([a for a in first], [b or "" for b in second], padding=True, return_tensors="pt")
    # Only the second example is a pair: re-encode the others alone.
    rows = [tok(a, b) if b else tok(a) for a, b in zip(first, second)]
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    types = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        mask[i, :k] = 1
        types[i, :k] = torch.tensor(r["token_type_ids"])
    model = BertModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    os.makedirs(OUT, exist_ok=True)
    batch = {"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64), "token_type_ids": types.to(torch.int64)}
    save_file({**batch, "last_hidden_state": out.last_hidden_state.contiguous(),
               "pooler_output": out.pooler_output.contiguous()}, os.path.join(OUT, "minilm.safetensors"))

    clf = BertForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                        modules_to_save=["classifier"], use_dora=True, task_type="SEQ_CLS")
    pm = get_peft_model(clf, config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.3 * torch.rand(p.shape, generator=gen))
            elif "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    pm.eval()
    with torch.no_grad():
        logits = pm(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    pm.save_pretrained(os.path.join(OUT, "minilm_dora"))
    cfg_path = os.path.join(OUT, "minilm_dora", "adapter_config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
    readme = os.path.join(OUT, "minilm_dora", "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    save_file({"logits": logits.contiguous()}, os.path.join(OUT, "minilm_dora.safetensors"))
    print("wrote", OUT, "logits", logits)


if __name__ == "__main__":
    main()
