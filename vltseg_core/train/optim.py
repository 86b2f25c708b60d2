"""The VLTSeg optimiser recipe: AdamW with per-group lr / weight decay chosen by parameter name, and a poly
schedule after a constant phase. Both are driven by the experiment config's `optimizer` / `schedule` sections."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vltseg_core.errors import VLTSegError

# Parameters whose names contain one of these get no weight decay (norms, position embeddings, queries).
DEFAULT_NO_DECAY = ("norm", "pos_embed", "cls_token", "reg_token", "mask_token", "level_embed", "query_embed",
                    "query_feat")
# neck_lr_mult: the reimplementation's feature pyramid (fpn1..4) is part of its backbone and so trains at the
# backbone's lr x0.1; 1.0 trains the neck at the head's lr.
OPTIMIZER_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.05, "betas": (0.9, 0.999), "eps": 1e-8,
                      "backbone_lr_mult": 0.1, "backbone_prefix": "backbone.", "neck_lr_mult": 1.0,
                      "neck_prefix": "neck.", "no_decay_keys": DEFAULT_NO_DECAY, "grad_clip": 0.01}
PARTS = ("backbone", "neck", "head")
SCHEDULE_DEFAULTS = {"iterations": 20000, "constant_iterations": 500, "power": 0.9, "min_lr_ratio": 0.0}


def _merged(section: dict | None, defaults: dict, what: str) -> dict:
    section = dict(section or {})
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise VLTSegError(f"unknown {what} option(s) {unknown} in the experiment config (expected some of {sorted(defaults)})")
    return {**defaults, **section}


def _part(name: str, cfg: dict) -> str:
    if name.startswith(cfg["backbone_prefix"]):
        return "backbone"
    return "neck" if name.startswith(cfg["neck_prefix"]) else "head"


def param_groups(model: nn.Module, cfg: dict | None = None) -> list[dict]:
    """Trainable parameters in up to six groups: backbone / neck / head x decay / no decay. Each group carries its
    own `lr`, `weight_decay` and a `name` (for logging, --print-config and tests)."""
    cfg = _merged(cfg, OPTIMIZER_DEFAULTS, "optimizer")
    lr_mult = {"backbone": cfg["backbone_lr_mult"], "neck": cfg["neck_lr_mult"], "head": 1.0}
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (PARTS.index(_part(name, cfg)), not any(k in name for k in cfg["no_decay_keys"]))
        groups.setdefault(key, []).append(param)
    out = []
    for (part, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        out.append({
            "name": PARTS[part] + ("" if decay else "_no_decay"),
            "params": params,
            "lr": cfg["lr"] * lr_mult[PARTS[part]],
            "weight_decay": cfg["weight_decay"] if decay else 0.0,
        })
    if not out:
        raise VLTSegError("the model has no trainable parameters (is everything frozen?)")
    return out


def build_optimizer(model: nn.Module, cfg: dict | None = None) -> torch.optim.AdamW:
    merged = _merged(cfg, OPTIMIZER_DEFAULTS, "optimizer")
    return torch.optim.AdamW(param_groups(model, merged), lr=merged["lr"], betas=tuple(merged["betas"]),
                             eps=merged["eps"])


def poly_factor(iteration: int, cfg: dict | None = None) -> float:
    """lr multiplier at `iteration` (0-based): 1 during the constant phase, then (1 - progress) ** power."""
    cfg = _merged(cfg, SCHEDULE_DEFAULTS, "schedule")
    total, const = int(cfg["iterations"]), int(cfg["constant_iterations"])
    if iteration < const:
        return 1.0
    progress = min(1.0, (iteration - const) / max(1, total - const))
    return cfg["min_lr_ratio"] + (1.0 - cfg["min_lr_ratio"]) * (1.0 - progress) ** cfg["power"]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    merged = _merged(cfg, SCHEDULE_DEFAULTS, "schedule")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_factor(it, merged))


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor | None:
    """L2 gradient clipping over all parameters (the recipe's 0.01); None/0 disables it."""
    if not max_norm:
        return None
    return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
