#!/usr/bin/env python3
"""Golden fixtures for crates/bidora-adapters, computed with HF PEFT and plain torch.

Run by hand (CI needs no Python; the outputs are committed):

    scripts/golden/setup.sh /opt/bidora-py
    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/adapters.py

Writes, under crates/bidora-adapters/tests/fixtures/:

layers.json + layers.safetensors
    One case per (method, shape, rank, norm mode). For each: the layer's tensors in PyTorch
    layout (W0 [out,in], bias [out], lora_A [r,in], lora_B [out,r], magnitude [out]), an input
    x [2,3,in], the output y, the merged weight, and the gradients of the scalar loss
    sum(y * C) (C [2,3,out] stored too) with respect to lora_A, lora_B, magnitude and x.
    References are computed in float64 and stored as float32; inputs are float32 values.
    LoRA and detached-norm DoRA come from PEFT's own `lora.Linear`; exact-norm DoRA (PEFT
    always detaches) comes from the same formula written in plain torch autograd.
    Cases with `"dropout": p > 0` run in training mode with the adapter's input dropped out
    by a fixed keep mask (`mask` [2,3,in], 0/1; kept values scaled by 1/(1-p)), put in place of
    PEFT's `lora_dropout` module, with non-zero lora_B and magnitudes away from the row norms:
    they pin PEFT's dropout form `x W0^T + b + (m/n - 1)(x~ W0^T) + (m/n) s (x~ A^T) B^T`.

peft_dora/, peft_lora/ (adapter_config.json + adapter_model.safetensors, written by PEFT's
save_pretrained) + peft_io.safetensors
    A tiny two-block model (layers.{0,1}.{query,value}, classifier in modules_to_save) with a
    PEFT adapter whose lora_B, magnitudes and classifier are non-trivial; the base weights, an
    input and PEFT's outputs for each adapter.
"""

import json
import os
import sys

import torch
from torch import nn
from safetensors.torch import save_file

import peft
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLinear

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-adapters", "tests", "fixtures")

SHAPES = [(16, 16), (24, 10), (10, 24)]  # (in, out): square, wide (out < in), tall (out > in)
RANKS = [(1, 3.0), (4, 6.0), (8, 4.0)]   # (r, alpha): scaling 3, 1.5, 0.5 (never 1)


def f32(t):
    """Round to float32 values, keep float64 dtype for the reference computation."""
    return t.float().double()


class FixedMask(nn.Module):
    """Dropout with a given keep mask, in place of PEFT's `lora_dropout` (an nn.Dropout)."""

    def __init__(self, keep, p):
        super().__init__()
        self.keep, self.p = keep, p

    def forward(self, x):
        return x * self.keep / (1.0 - self.p)


def layer_case(gen, method, d_in, d_out, r, alpha, norm, bias, p=0.0):
    s = alpha / r
    w0 = f32(torch.randn(d_out, d_in, generator=gen) * 0.3)
    b0 = f32(torch.randn(d_out, generator=gen) * 0.1) if bias else None
    a = f32(torch.randn(r, d_in, generator=gen) * 0.4)
    b = f32(torch.randn(d_out, r, generator=gen) * 0.4)
    # Magnitudes perturbed away from the initial row norms.
    m = f32(w0.norm(dim=1) * (1.0 + 0.3 * torch.rand(d_out, generator=gen)))
    x = f32(torch.randn(2, 3, d_in, generator=gen))
    c = f32(torch.randn(2, 3, d_out, generator=gen))
    # Drawn only for dropout cases, so that the other cases keep their generator sequence.
    keep = (torch.rand(2, 3, d_in, generator=gen, dtype=torch.float64) >= p).double() if p > 0 \
        else torch.ones(2, 3, d_in, dtype=torch.float64)

    rec = {"W0": w0, "lora_A": a, "lora_B": b, "x": x, "C": c}
    if p > 0:
        rec["mask"] = keep
    if bias:
        rec["bias"] = b0
    if method == "dora":
        rec["magnitude"] = m

    if method == "dora" and norm == "exact":
        # Plain autograd, norm differentiated through.
        A = a.clone().requires_grad_(True)
        B = b.clone().requires_grad_(True)
        M = m.clone().requires_grad_(True)
        X = x.clone().requires_grad_(True)
        Xd = X * keep / (1.0 - p)
        v = w0 + s * (B @ A)
        n = v.norm(dim=1)
        base = X @ w0.T
        y = base + (M / n - 1) * (Xd @ w0.T) + (M / n) * s * ((Xd @ A.T) @ B.T)
        if bias:
            y = y + b0
        (y * c).sum().backward()
        merged = ((M / n).unsqueeze(1) * v).detach()
        grads = {"grad_lora_A": A.grad, "grad_lora_B": B.grad, "grad_magnitude": M.grad, "grad_x": X.grad}
    else:
        base_layer = nn.Linear(d_in, d_out, bias=bias).double()
        with torch.no_grad():
            base_layer.weight.copy_(w0)
            if bias:
                base_layer.bias.copy_(b0)
        layer = PeftLinear(base_layer, "default", r=r, lora_alpha=alpha, lora_dropout=p,
                           use_dora=(method == "dora"))
        layer = layer.double()
        if p > 0:
            layer.lora_dropout["default"] = FixedMask(keep, p)
            layer.train()
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
            if method == "dora":
                layer.lora_magnitude_vector["default"].weight.copy_(m)
        assert abs(layer.scaling["default"] - s) < 1e-12
        X = x.clone().requires_grad_(True)
        y = layer(X)
        (y * c).sum().backward()
        grads = {
            "grad_lora_A": layer.lora_A["default"].weight.grad,
            "grad_lora_B": layer.lora_B["default"].weight.grad,
            "grad_x": X.grad,
        }
        if method == "dora":
            grads["grad_magnitude"] = layer.lora_magnitude_vector["default"].weight.grad
        layer.merge(safe_merge=True)
        merged = layer.base_layer.weight.detach().clone()

    rec["y"] = y.detach()
    rec["merged_weight"] = merged
    rec.update(grads)
    meta = {"method": method, "d_in": d_in, "d_out": d_out, "r": r, "alpha": alpha,
            "bias": bias, "norm": norm, "dropout": p,
            "source": "torch-autograd" if (method == "dora" and norm == "exact") else "peft"}
    return meta, rec


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.value = nn.Linear(d, d)

    def forward(self, x):
        return x + self.value(torch.tanh(self.query(x)))


class Tiny(nn.Module):
    def __init__(self, d, labels):
        super().__init__()
        self.layers = nn.ModuleList([Block(d), Block(d)])
        self.classifier = nn.Linear(d, labels)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.classifier(x)


def peft_model_fixture(gen, use_dora, base_state, x, folder):
    model = Tiny(12, 3).double()
    model.load_state_dict(base_state)
    config = LoraConfig(r=4, lora_alpha=10, lora_dropout=0.1, target_modules=["query", "value"],
                        modules_to_save=["classifier"], use_dora=use_dora)
    pm = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(f32(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3))
            elif "lora_magnitude_vector" in name:
                p.mul_(f32(1.0 + 0.5 * torch.rand(p.shape, generator=gen, dtype=torch.float64)))
                p.copy_(f32(p))
            elif "modules_to_save" in name:
                p.copy_(f32(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5))
    pm.eval()
    with torch.no_grad():
        y = pm(x)
    pm.float().save_pretrained(os.path.join(OUT, folder))
    return y


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    os.makedirs(OUT, exist_ok=True)

    cases, tensors = [], {}
    for method in ["lora", "dora"]:
        norms = ["detached", "exact"] if method == "dora" else ["none"]
        for (d_in, d_out) in SHAPES:
            for (r, alpha) in RANKS:
                for norm in norms:
                    bias = (d_in + r) % 2 == 0 or method == "lora"
                    meta, rec = layer_case(gen, method, d_in, d_out, r, alpha, norm, bias)
                    name = f"{method}_{norm}_{d_in}x{d_out}_r{r}"
                    meta["name"] = name
                    cases.append(meta)
                    for k, v in rec.items():
                        tensors[f"{name}/{k}"] = v.float().contiguous()
    # Dropout cases draw from their own generator, so the cases above and the PEFT adapters
    # below keep their values.
    gen_dropout = torch.Generator().manual_seed(4321)
    for method, norm in [("lora", "none"), ("dora", "detached"), ("dora", "exact")]:
        for (d_in, d_out), (r, alpha) in [((16, 16), (4, 6.0)), ((24, 10), (8, 4.0))]:
            meta, rec = layer_case(gen_dropout, method, d_in, d_out, r, alpha, norm, True, p=0.3)
            name = f"{method}_{norm}_{d_in}x{d_out}_r{r}_dropout"
            meta["name"] = name
            cases.append(meta)
            for k, v in rec.items():
                tensors[f"{name}/{k}"] = v.float().contiguous()
    save_file(tensors, os.path.join(OUT, "layers.safetensors"))
    versions = {"torch": torch.__version__, "peft": peft.__version__}
    with open(os.path.join(OUT, "layers.json"), "w") as fh:
        json.dump({"generator": "scripts/golden/adapters.py", "versions": versions,
                   "loss": "sum(y * C)", "cases": cases}, fh, indent=1)

    base = Tiny(12, 3).double()
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(f32(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    x = f32(torch.randn(5, 12, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        y_base = base(x)
    io = {"x": x, "y_base": y_base}
    for k, v in base_state.items():
        io[f"base.{k}"] = v
    io["y_dora"] = peft_model_fixture(gen, True, base_state, x, "peft_dora")
    io["y_lora"] = peft_model_fixture(gen, False, base_state, x, "peft_lora")
    save_file({k: v.float().contiguous() for k, v in io.items()},
              os.path.join(OUT, "peft_io.safetensors"))
    print(f"wrote {len(cases)} layer cases and 2 PEFT adapters to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
