#!/usr/bin/env python3
"""Small random-weight models in HF layout, and their outputs, for crates/bidora-models.

    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/tiny_models.py

No real RoBERTa, GPT-2 or random-size Llama weights ship in a registry package, so the loaders
are tested on these (the real MiniLM, MPNet and SmolLM2 weights are tested by models.py).
Writes, under crates/bidora-models/tests/fixtures/:

  tiny-roberta/        RobertaModel (save_pretrained); tiny-roberta.safetensors: a padded batch
                       (pad id 1), last_hidden_state and pooler_output.
  tiny-roberta-cls/    RobertaForSequenceClassification (3 labels); tiny-roberta-cls.safetensors:
                       batch, logits, the loss for `labels`.
  tiny-mpnet-cls/      MPNetForSequenceClassification (1 label: regression), sequences longer
                       than MPNet's exact relative buckets; tiny-mpnet-cls.safetensors: batch,
                       last_hidden_state, logits, MSE loss for `targets`, and `buckets`: HF's
                       relative_position_bucket for relative positions -300..299.
  tiny-mpnet-tok/      MPNetForTokenClassification (5 labels); logits and the loss for `labels`
                       with -100 entries.
  tiny-gpt2/           GPT2LMHeadModel (tied head); logits and the causal-LM loss.
  tiny-llama/          LlamaForCausalLM with grouped-query attention (4 heads, 2 KV heads),
                       untied head; logits and loss; tiny-llama.gguf: the same weights as a GGUF
                       file the way llama.cpp's converter writes them (Q/K rows permuted), F32
                       and F16 tensors.
  tiny-gpt2_dora/       a PEFT DoRA adapter on tiny-gpt2 (fused c_attn and both c_proj, Conv1D
                       fan_in_fan_out) with non-zero lora_B and non-trivial magnitudes;
                       tiny-gpt2_dora.safetensors: its logits on the tiny-gpt2 batch.
  tiny-llama_lora/     a PEFT LoRA adapter on tiny-llama (q_proj, v_proj, rsLoRA scaling);
                       tiny-llama_lora.safetensors: its logits.
  quants.gguf          one random tensor per GGUF type (F32, F16, Q8_0, Q4_0, Q4_1) written
                       with the gguf package; quants.safetensors: gguf's dequantised values.
"""

import copy
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MPNetConfig,
                          MPNetForSequenceClassification, MPNetForTokenClassification, RobertaConfig,
                          RobertaForSequenceClassification, RobertaModel)
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
from peft import LoraConfig, get_peft_model

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-models", "tests", "fixtures")


def perturb(model):
    """Random init leaves LayerNorms at 1/0 and biases at 0: make every tensor matter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    return model.eval()


def save(model, name, tensors):
    folder = os.path.join(OUT, name)
    model.save_pretrained(folder, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, name + ".safetensors"))
    print("wrote", folder)


def encoder_batch(pad):
    ids = torch.tensor([[0, 5, 17, 33, 8, 2], [0, 44, 9, 2, pad, pad]])
    return ids, (ids != pad).long(), torch.zeros_like(ids)


def roberta():
    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    ids, mask, types = encoder_batch(1)
    model = perturb(RobertaModel(config))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    save(model, "tiny-roberta", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                                 "last_hidden_state": out.last_hidden_state,
                                 "pooler_output": out.pooler_output})
    config.num_labels = 3
    clf = perturb(RobertaForSequenceClassification(config))
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = clf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    save(clf, "tiny-roberta-cls", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                                   "labels": labels, "logits": out.logits, "loss": out.loss.reshape(1)})


def mpnet():
    torch.manual_seed(4)
    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, relative_attention_num_buckets=32,
                         pad_token_id=1, layer_norm_eps=1e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, 40), generator=g)
    ids[:, 0] = 0
    ids[0, -1] = 2
    ids[1, 25] = 2
    ids[1, 26:] = 1
    mask = (ids != 1).long()
    types = torch.zeros_like(ids)
    buckets = MPNetEncoder.relative_position_bucket(torch.arange(-300, 300), num_buckets=32)
    config.num_labels = 1
    reg = perturb(MPNetForSequenceClassification(config))
    targets = torch.tensor([0.5, -1.25])
    with torch.no_grad():
        hidden = reg.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        out = reg(input_ids=ids, attention_mask=mask, labels=targets)
    save(reg, "tiny-mpnet-cls", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                                 "last_hidden_state": hidden, "logits": out.logits, "targets": targets,
                                 "loss": out.loss.reshape(1), "buckets": buckets})
    config.num_labels = 5
    tok = perturb(MPNetForTokenClassification(config))
    labels = torch.randint(0, 5, ids.shape, generator=g)
    labels[mask == 0] = -100
    labels[:, 0] = -100
    with torch.no_grad():
        out = tok(input_ids=ids, attention_mask=mask, labels=labels)
    save(tok, "tiny-mpnet-tok", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                                 "labels": labels, "logits": out.logits, "loss": out.loss.reshape(1)})


def decoder_batch(pad):
    ids = torch.tensor([[5, 17, 33, 8, 61, 2, 9], [44, 9, 12, 7, pad, pad, pad]])
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, mask, labels


def gpt2():
    torch.manual_seed(5)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = perturb(GPT2LMHeadModel(config))
    ids, mask, labels = decoder_batch(0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    save(model, "tiny-gpt2", {"input_ids": ids, "attention_mask": mask, "labels": labels,
                              "last_hidden_state": hidden, "logits": out.logits, "loss": out.loss.reshape(1)})
    peft_adapter(model, "tiny-gpt2_dora",
                 LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                            use_dora=True, task_type="CAUSAL_LM"), ids, mask)


def peft_adapter(model, name, config, ids, mask):
    """Wraps `model` in a PEFT adapter with random non-trivial values, saves it and its logits."""
    pm = get_peft_model(copy.deepcopy(model), config)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.3 * torch.rand(p.shape, generator=gen))
    pm.eval()
    with torch.no_grad():
        logits = pm(input_ids=ids, attention_mask=mask).logits
    folder = os.path.join(OUT, name)
    pm.save_pretrained(folder)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    save_file({"logits": logits.contiguous()}, os.path.join(OUT, name + ".safetensors"))
    print("wrote", folder)


def llama_permute(w, heads):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half rows to
    # GGML's interleaved pairs.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama():
    torch.manual_seed(6)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    model = perturb(LlamaForCausalLM(config))
    ids, mask, labels = decoder_batch(0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    save(model, "tiny-llama", {"input_ids": ids, "attention_mask": mask, "labels": labels,
                               "last_hidden_state": hidden, "logits": out.logits, "loss": out.loss.reshape(1)})
    peft_adapter(model, "tiny-llama_lora",
                 LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                            task_type="CAUSAL_LM"), ids, mask)

    w = gguf.GGUFWriter(os.path.join(OUT, "tiny-llama.gguf"), "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    for name, t in model.state_dict().items():
        a = t.numpy().astype(np.float32)
        if name in names:
            out_name = names[name]
        else:
            _, _, i, *rest = name.split(".")
            module = ".".join(rest[:-1])
            out_name = f"blk.{i}.{per_layer[module]}.weight"
            if module == "self_attn.q_proj":
                a = llama_permute(a, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = llama_permute(a, config.num_key_value_heads)
        # Matrices other than the embeddings as F16, to exercise that type end to end.
        if a.ndim == 2 and "embd" not in out_name:
            a = a.astype(np.float16)
        w.add_tensor(out_name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The F16 matrices round the weights: the golden logits for the GGUF copy come from HF with
    # the same rounding applied.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed_tokens" not in name:
                p.copy_(p.half().float())
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    save_file({"logits": out.logits.contiguous()}, os.path.join(OUT, "tiny-llama-gguf.safetensors"))


WORDS = ("the a an and or but not no very good bad great awful fine movie film plot actor story "
         "i you it is was are love hate like boring fun funny sad dull best worst really quite "
         "this that so too much more less ending music scenes ##s ##ly ##ing ##ed").split()


def tiny_bert():
    """A random BERT with a WordPiece vocabulary, for the CLI tests (crates/bidora-cli)."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(8)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!'") + WORDS
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    model = perturb(BertModel(config))
    folder = os.path.join(ROOT, "crates", "bidora-cli", "tests", "fixtures", "tiny-bert")
    model.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(vocab) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        fh.write('{"do_lower_case": true, "model_max_length": 128}\n')
    print("wrote", folder)


def quants():
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    expected = {}
    for qtype in [gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0,
                  gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1]:
        a = (rng.standard_normal((3, 64)) * 0.7 + 0.1).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F16:
            q = a.astype(np.float16)
            w.add_tensor(qtype.name, q)
            back = q.astype(np.float32)
        elif qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(qtype.name, a)
            back = a
        else:
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(qtype.name, q, raw_shape=q.shape, raw_dtype=qtype)
            back = gguf.quants.dequantize(q, qtype)
        expected[qtype.name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    w.add_string("bidora.note", "quantisation test tensors")
    w.add_uint32("bidora.count", 5)
    w.add_array("bidora.list", [1, 2, 3])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(OUT, "quants.safetensors"))
    print("wrote quants.gguf")


if __name__ == "__main__":
    roberta()
    mpnet()
    gpt2()
    llama()
    quants()
    tiny_bert()
