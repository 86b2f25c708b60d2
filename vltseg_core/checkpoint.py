"""Checkpoints: ours (safetensors weights + JSON sidecar with the preset and class names) and external
backbone weights (official BAAI EVA-CLIP `.pt`, open_clip / timm EVA02, OpenAI CLIP, DINOv2) from a local path.

Nothing is ever unpickled with the full pickle machinery: `torch.load(weights_only=True)` only; safetensors
preferred. OpenAI's released CLIP `.pt` files are TorchScript archives: they are read with `torch.jit.load`,
whose restricted unpickler cannot run arbitrary Python either."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vltseg_core.errors import VLTSegError

FORMAT = "vltseg-checkpoint"
VERSION = 1
# Keys of the CLIP image-text projection / classifier heads: pre-training only, unused by segmentation.
HEAD_PREFIXES = ("head.", "fc_norm.", "attn_pool.")


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write `path` (.safetensors) and its `.json` sidecar (preset, num_classes, class names, `meta`) atomically."""
    from vltseg_core.classes import load_class_table

    path = Path(path)
    if path.suffix != ".safetensors":
        raise VLTSegError(f"checkpoint path {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = load_class_table(model.class_table)
    names = list(table.names) if table.num_classes == model.num_classes else [str(i) for i in range(model.num_classes)]
    sidecar = {"format": FORMAT, "version": VERSION, "preset": model.preset, "num_classes": model.num_classes,
               "class_table": model.class_table, "class_names": names, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    side_tmp = sidecar_path(path).with_name(sidecar_path(path).name + ".part")
    side_tmp.write_text(json.dumps(sidecar, indent=2))
    os.replace(tmp, path)
    os.replace(side_tmp, sidecar_path(path))
    return path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VLTSegError(f"checkpoint not found: {path} (expected a .safetensors file with a .json sidecar)")
    side = sidecar_path(path)
    if not side.is_file():
        raise VLTSegError(f"checkpoint {path} has no sidecar {side.name} (expected the JSON written by save_checkpoint)")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VLTSegError(f"checkpoint sidecar {side} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VLTSegError(f"{side} is not a VLTSeg checkpoint sidecar (expected a JSON object with format '{FORMAT}')")
    if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > VERSION:
        raise VLTSegError(f"checkpoint {path} has format version {meta['version']} (expected an int up to {VERSION}, "
                          f"what this vltseg reads)")
    if not isinstance(meta.get("preset"), dict):
        raise VLTSegError(f"checkpoint sidecar {side} has no preset (expected the model preset as a JSON object)")
    num_classes = meta.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise VLTSegError(f"checkpoint sidecar {side} has num_classes {num_classes!r} (expected a positive int)")
    return meta


def load_checkpoint(path: str | Path, model: nn.Module | None = None):
    """Our checkpoint -> VLTSeg in eval mode. Built from the sidecar's preset, or loaded into `model`
    (then a checkpoint of another architecture is a VLTSegError naming the offending keys)."""
    from vltseg_core.models import build_model

    path = Path(path)
    meta = read_checkpoint_meta(path)
    source = f"checkpoint {path} (preset '{meta['preset'].get('name')}')"
    if model is None:
        model = build_model(meta["preset"], num_classes=meta["num_classes"])
    else:
        source += f" loaded into preset '{model.preset.get('name')}'"
    load_state_dict_checked(model, read_safetensors(path), source)
    return model.eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file; a truncated or foreign file is one clear error line."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated / foreign files
        raise VLTSegError(f"{path} is not a readable safetensors file ({exc})") from exc


def is_torchscript(path: Path) -> bool:
    """A zip archive written by torch.jit.save (it holds constants.pkl) rather than by torch.save."""
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


def load_state_dict_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with one clear line on mismatch: missing, unexpected and mis-shaped keys, by name."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        parts = [f"{len(lst)} {what} ({', '.join(lst[:3])}{', ...' if len(lst) > 3 else ''})"
                 for what, lst in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("mis-shaped keys (file vs model)", shaped)) if lst]
        raise VLTSegError(f"{source} does not match the model architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=False)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat tensor dict from .safetensors, a torch checkpoint (weights_only) or a TorchScript archive."""
    path = Path(path)
    if not path.is_file():
        raise VLTSegError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if zipfile.is_zipfile(path) and is_torchscript(path):
        return {k: v for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VLTSegError(f"{path} is not a tensor-only torch checkpoint ({str(exc).splitlines()[0]}); "
                          "expected .safetensors or a state dict saved with torch.save") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VLTSegError(f"{path} does not hold a state dict of tensors")
    return obj


def load_backbone_weights(target: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load pre-trained ViT weights into a VLTSeg model's backbone (or a bare ViTBackbone) from the official /
    open_clip / timm / OpenAI layouts (timm's converters; position embeddings resampled to the preset's img_size
    grid, patch kernels to its patch size). Returns {"ignored": [...]} (projection heads); any other mismatch
    raises VLTSegError."""
    from timm.models import eva, vision_transformer

    backbone = target.backbone if hasattr(target, "backbone") else target
    vit = backbone.vit
    state = read_weights(path)
    filter_fn = eva.checkpoint_filter_fn if backbone.family == "eva" else vision_transformer.checkpoint_filter_fn
    try:
        converted = filter_fn(state, vit)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise VLTSegError(f"{path} could not be converted for backbone '{backbone.type}' ({exc})") from exc
    ignored = sorted(k for k in converted if k.startswith(HEAD_PREFIXES) and k not in vit.state_dict())
    converted = {k: v for k, v in converted.items() if k not in ignored}
    load_state_dict_checked(vit, converted, f"backbone weights {path} for '{backbone.type}'")
    return {"ignored": ignored}
