#!/usr/bin/env python3
"""Small random-weight models in HF layout, and their outputs, for crates/bidora-models.

    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/tiny_models.py

Writes crates/bidora-models/tests/fixtures/tiny-roberta/ (config.json + model.safetensors from
save_pretrained) and tiny-roberta.safetensors: a padded batch (pad id 1) and RobertaModel's
last_hidden_state for it. No real RoBERTa weights ship in any registry package, so the loader
is tested on these.
"""

import os

import torch
from safetensors.torch import save_file
from transformers import RobertaConfig, RobertaModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-models", "tests", "fixtures")


def main():
    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    model = RobertaModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    folder = os.path.join(OUT, "tiny-roberta")
    model.save_pretrained(folder, safe_serialization=True)
    ids = torch.tensor([[0, 5, 17, 33, 8, 2], [0, 44, 9, 2, 1, 1]])
    mask = (ids != 1).long()
    types = torch.zeros_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    save_file({"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
               "last_hidden_state": out.last_hidden_state.contiguous(),
               "pooler_output": out.pooler_output.contiguous()},
              os.path.join(OUT, "tiny-roberta.safetensors"))
    print("wrote", folder)


if __name__ == "__main__":
    main()
