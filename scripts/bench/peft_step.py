"""The peer of `benches/benches/minilm.rs`: one training step of HF PEFT (LoRA, DoRA) and of full
fine-tuning with transformers, on all-MiniLM-L6-v2, batch 16 x 128 tokens, on the CPU.

Same model folder, shapes, token ids, settings (r = 8, alpha 16, dropout 0.1 on query and value,
AdamW, a 2-way classifier trained) and thread count as the Rust benchmark. Each call measures one
mode in its own process, so the peak memory it prints is that mode's.

    /opt/bidora-peer/bin/python scripts/bench/peft_step.py \
        --model DIR --mode dora --threads 2 --steps 10

(`scripts/bench/setup-peer.sh` makes that venv: current torch, transformers and peft.)

Prints one JSON line: {"mode", "threads", "steps", "median_s", "min_s", "max_s", "peak_rss_kib",
"busy_cores", "torch", "peft", "transformers"}; busy_cores is the process's CPU time over the wall
time of the timed steps (1.0 = one core busy throughout). `cargo xtask bench --peer` runs it and compares.
"""

import argparse

from timing import report, timed

BATCH, SEQ = 16, 128


def inputs(torch):
    """[CLS] ... [SEP] with ids 1000 + (131 i + 7919 j) mod 20000, as the Rust benchmark."""
    ids = [
        [101 if j == 0 else 102 if j == SEQ - 1 else 1000 + (131 * i + 7919 * j) % 20000 for j in range(SEQ)]
        for i in range(BATCH)
    ]
    ids = torch.tensor(ids, dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }, torch.tensor([i % 2 for i in range(BATCH)], dtype=torch.long)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="all-MiniLM-L6-v2 folder (cargo xtask assets minilm)")
    p.add_argument("--mode", required=True, choices=["lora", "dora", "full", "inference"])
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    a = p.parse_args()

    import torch
    import transformers
    import peft

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    if a.mode in ("lora", "dora"):
        config = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS,
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["query", "value"],
            use_dora=a.mode == "dora",
        )
        model = peft.get_peft_model(model, config)
    batch, labels = inputs(torch)
    if a.mode == "inference":
        model.eval()

        def call():
            with torch.no_grad():
                model(**batch)

    else:
        model.train()
        trainable = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=5e-4, weight_decay=0.01)

        def call():
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    times, busy = timed(a.steps, call)
    report(a, times, busy)

if __name__ == "__main__":
    main()
