"""The peer of `benches/benches/smollm2.rs`: one HF PEFT training step (LoRA, DoRA) on
SmolLM2-135M at batch 8 x 256 tokens, and transformers' greedy generation of 128 new tokens after
a 32-token prompt (batch 1 and batch 8, KV cache), on the CPU.

Same GGUF file (transformers dequantises it to f32, as bidora does), shapes, token ids, settings
(r = 8, alpha 16, dropout 0.1 on q_proj and v_proj, AdamW, next-token loss on every position)
and thread count as the Rust benchmark. Each call measures one mode in its own process, so the
peak memory it prints is that mode's.

    /opt/bidora-peer/bin/python scripts/bench/peft_decoder.py \
        --gguf FILE --mode generate8 --threads 2 --steps 5

(`scripts/bench/setup-peer.sh` makes that venv: current torch, transformers, peft and gguf.)

Prints one JSON line: {"mode", "threads", "steps", "median_s", "min_s", "max_s", "tokens",
"peak_rss_kib", "busy_cores", "torch", "peft", "transformers"}; `tokens` is the new tokens of
one generation call (0 for training); busy_cores is the process's CPU time over the wall time of
the timed calls. `cargo xtask bench --peer` runs it and compares.
"""

import argparse
import os

from timing import report, timed

BATCH, SEQ = 8, 256
PROMPT, NEW_TOKENS = 32, 128


def ids(torch, batch, seq):
    """Token ids 1000 + (131 i + 7919 j) mod 40000, as the Rust benchmark."""
    return torch.tensor(
        [[1000 + (131 * i + 7919 * j) % 40000 for j in range(seq)] for i in range(batch)],
        dtype=torch.long,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", required=True, help="SmolLM2-135M GGUF file (cargo xtask assets smollm2)")
    p.add_argument("--mode", required=True, choices=["lora", "dora", "generate1", "generate8"])
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, default=10, help="timed calls (after 2 warm-up calls)")
    a = p.parse_args()

    import torch
    import transformers
    import peft

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    folder, name = os.path.split(os.path.abspath(a.gguf))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    tokens = 0
    if a.mode in ("lora", "dora"):
        config = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM,
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj"],
            use_dora=a.mode == "dora",
        )
        model = peft.get_peft_model(model, config)
        model.train()
        batch = ids(torch, BATCH, SEQ)
        mask = torch.ones_like(batch)
        trainable = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=5e-4, weight_decay=0.01)

        def step():
            loss = model(input_ids=batch, attention_mask=mask, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times, busy = timed(a.steps, step)
    else:
        rows = 1 if a.mode == "generate1" else 8
        prompt = ids(torch, rows, PROMPT)
        mask = torch.ones_like(prompt)
        model.eval()
        tokens = rows * NEW_TOKENS

        def generate():
            with torch.inference_mode():
                out = model.generate(
                    input_ids=prompt,
                    attention_mask=mask,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=0,
                )
            assert out.shape == (rows, PROMPT + NEW_TOKENS), out.shape

        times, busy = timed(a.steps, generate)
    report(a, times, busy, tokens=tokens)

if __name__ == "__main__":
    main()
