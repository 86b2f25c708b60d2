"""Class tables (names, colours, ignore index) kept as YAML data under configs/classes/."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vltseg_core.config_files import config_path
from vltseg_core.errors import VLTSegError



@dataclass(frozen=True)
class ClassTable:
    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (K, 3) uint8, row i = colour of class id i
    ignore_index: int = 255
    _palette: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # built once: the node colours every frame with it
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = self.colors
        lut.setflags(write=False)
        object.__setattr__(self, "_palette", lut)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table (read-only): class id -> colour; ids without a class (incl. ignore) are
        black."""
        return self._palette

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """HxW class ids -> HxWx3 rgb8."""
        return np.take(self._palette, labels, axis=0)


def load_class_table(name_or_path: str | Path = "cityscapes") -> ClassTable:
    """A class table by name (a file in configs/classes/) or by path to a YAML of the same schema."""
    path = config_path(name_or_path, "classes", "class table")
    data = yaml.safe_load(path.read_text())
    try:
        entries = sorted(data["classes"], key=lambda c: c["id"])
        ids = [int(c["id"]) for c in entries]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..K-1 without gaps, got {ids}")
        colors = np.array([c["color"] for c in entries], dtype=np.uint8).reshape(-1, 3)
        return ClassTable(
            name=str(data.get("name", path.stem)),
            names=tuple(str(c["name"]) for c in entries),
            colors=colors,
            ignore_index=int(data.get("ignore_index", 255)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VLTSegError(f"class table {path} is malformed ({exc}); expected 'classes: [{{id, name, color}}]'") from exc
