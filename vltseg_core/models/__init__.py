"""VLTSeg models: `build_model(preset)`, presets as YAML in configs/models/ (docs/model.md)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from vltseg_core.config_files import config_path, known_configs
from vltseg_core.errors import VLTSegError

REQUIRED_KEYS = ("backbone", "head", "input")


def list_presets() -> list[str]:
    return known_configs("models")


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """A preset by name (configs/models/NAME.yaml) or by path to a YAML of the same schema."""
    path = config_path(name_or_path, "models", "model preset")
    preset = yaml.safe_load(path.read_text())
    if not isinstance(preset, dict):
        raise VLTSegError(f"model preset {path} is not a YAML mapping (expected keys {list(REQUIRED_KEYS)})")
    preset.setdefault("name", path.stem)
    return preset


def build_model(preset: str | Path | dict[str, Any], num_classes: int | None = None):
    """Build a VLTSeg model (random weights) from a preset name, YAML path or dict."""
    from vltseg_core.classes import load_class_table
    from vltseg_core.models.vltseg import VLTSeg

    cfg = copy.deepcopy(preset) if isinstance(preset, dict) else load_preset(preset)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise VLTSegError(f"model preset '{cfg.get('name', '?')}' lacks keys {missing} (expected {list(REQUIRED_KEYS)})")
    if num_classes is None:
        num_classes = int(cfg.get("num_classes") or load_class_table(cfg.get("class_table", "cityscapes")).num_classes)
    cfg["num_classes"] = int(num_classes)
    try:
        return VLTSeg(cfg, int(num_classes))
    except TypeError as exc:  # unknown keys in a preset section
        raise VLTSegError(f"model preset '{cfg.get('name', '?')}' has an invalid entry: {exc}") from exc


__all__ = ["build_model", "list_presets", "load_preset"]
