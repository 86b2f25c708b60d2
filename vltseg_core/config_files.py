"""Config files as data: every kind (presets, class tables, label maps, experiments) is a folder of YAML files
under `vltseg_core/configs/`, referred to by name or by a path to a YAML of the same schema."""
from __future__ import annotations

from pathlib import Path

from vltseg_core.errors import VLTSegError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def known_configs(kind: str) -> list[str]:
    """Names of the shipped configs of one kind (the folder `configs/<kind>/`)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def config_path(name_or_path: str | Path, kind: str, what: str) -> Path:
    """`configs/<kind>/NAME.yaml` for a name, the file itself for a .yaml/.yml path; one clear error otherwise."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        raise VLTSegError(f"{what} '{name_or_path}' not found (looked for {path}); known: {known_configs(kind)}")
    return path
