"""LoRA (Hu et al. 2021), by hand: a low-rank update B·A beside chosen linear layers of a trunk, the
trunk itself frozen. Only A and B train (and whatever the caller leaves trainable, a reranker's head),
so a larger trunk fits one GPU and many domain adapters can share one base.

    n = lora.add(model, r=8, alpha=16, dropout=0.1, targets=["query", "key", "value", "dense"])
    lora.merged_state_dict(model)   # plain weights, W + (alpha / r) B·A: what every loader reads
    lora.adapter_state_dict(model)  # A and B alone, for an adapter kept beside its base

A LoRALinear is an nn.Linear (the same weight and bias, so the trunk's parameter names stay) with two
more parameters, lora_A (r x in, random) and lora_B (out x r, zeros: training starts from the trunk).
"""
import json
import math
import os
import re

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ADAPTER_FILE, CONFIG_FILE = "lora.safetensors", "lora.json"


class LoRALinear(torch.nn.Linear):
    def __init__(self, linear, r, alpha, dropout):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.scale = r, alpha / r
        self.lora_A = torch.nn.Parameter(torch.empty(r, self.in_features, device=self.weight.device,
                                                     dtype=self.weight.dtype))
        self.lora_B = torch.nn.Parameter(torch.zeros(self.out_features, r, device=self.weight.device,
                                                     dtype=self.weight.dtype))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()

    def forward(self, x):
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scale

    def merged_weight(self):
        return self.weight + self.scale * (self.lora_B @ self.lora_A)


def add(model, r, alpha, dropout, targets):
    """Wrap every nn.Linear whose name's last part matches one of `targets` (exact, or a regular
    expression matching the whole dotted name), and freeze every parameter of `model` that is not
    LoRA's. Returns the number of layers wrapped; none is an error naming what was looked for."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and any(child_name == t or re.fullmatch(t, full) for t in targets):
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(full)
    if not wrapped:
        raise ValueError(f"lora_targets={targets} matched no linear layer of the model; its linear layers end in: "
                         + ", ".join(sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules()
                                             if type(m) is torch.nn.Linear})))
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in f".{name}")
    return len(wrapped)


def layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged_state_dict(model):
    """The state dict of a plain model: each LoRA layer's weight merged, its A and B left out."""
    merged = {f"{name}.weight": m.merged_weight().detach() for name, m in layers(model).items()}
    return {k: merged.get(k, v) for k, v in model.state_dict().items() if ".lora_" not in k}


def base_state_dict(model):
    """The frozen trunk's own weights, without A and B."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" not in k}


def adapter_state_dict(model):
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model, config, out_dir):
    """lora.safetensors (A and B) and lora.json (r, alpha, dropout, targets) into out_dir."""
    save_file(adapter_state_dict(model), os.path.join(out_dir, ADAPTER_FILE))
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def read_config(path):
    """lora.json of a model directory, or None (a plain model)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def load_adapter(model, path):
    """A and B from path's lora.safetensors into a model add() has wrapped alike; every one must be there."""
    saved = load_file(os.path.join(path, ADAPTER_FILE))
    own = adapter_state_dict(model)
    if set(saved) != set(own):
        raise ValueError(f"{path}: {ADAPTER_FILE} holds {len(saved)} LoRA tensors, the model wraps {len(own)}; "
                         f"its {CONFIG_FILE} and the adapter do not belong together")
    model.load_state_dict(saved, strict=False)
