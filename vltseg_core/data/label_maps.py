"""Raw dataset label ids -> Cityscapes trainIds, kept as YAML data under configs/datasets/.

Each map also knows which raw ids may occur at all, so a label file from another dataset or a colour image
passed as labels is reported instead of silently turned into ignore pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from vltseg_core.config_files import config_path
from vltseg_core.errors import VLTSegError

IGNORE = 255


@dataclass(frozen=True)
class LabelMap:
    name: str
    description: str
    class_ids: tuple[int, ...]  # trainIds evaluated for data labelled this way
    lut: np.ndarray  # (N,) uint8: raw id -> trainId (255 = ignore)
    valid: np.ndarray  # (N,) bool: raw ids that may occur in a label file

    def apply(self, raw: np.ndarray, source: Path | str) -> np.ndarray:
        """Map a raw label image to trainIds; unexpected ids -> VLTSegError naming the file."""
        raw = np.asarray(raw)
        if raw.size and (int(raw.max()) >= len(self.lut) or not self.valid[raw].all()):
            found = np.unique(raw)
            bad = [int(v) for v in found if v >= len(self.valid) or not self.valid[v]]
            shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
            raise VLTSegError(f"unexpected label ids [{shown}] in {source} (expected {self.description})")
        return self.lut[raw]


def _parse_ids(spec: str) -> list[int]:
    """'0-18,255' -> [0, ..., 18, 255]."""
    ids: list[int] = []
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


@lru_cache(maxsize=None)
def load_label_map(name_or_path: str) -> LabelMap:
    """A label map by name (a file in configs/datasets/) or by path to a YAML of the same schema."""
    path = config_path(name_or_path, "datasets", "label map")
    data = yaml.safe_load(path.read_text())
    try:
        valid_ids = _parse_ids(data["valid_ids"])
        size = max(valid_ids + [int(k) for k in data["to_train_id"]]) + 1
        lut = np.full(size, IGNORE, np.uint8)
        for raw, train in data["to_train_id"].items():
            lut[int(raw)] = int(train)
        valid = np.zeros(size, bool)
        valid[valid_ids] = True
        return LabelMap(name=str(data["name"]), description=str(data["description"]),
                        class_ids=tuple(int(c) for c in data["class_ids"]), lut=lut, valid=valid)
    except (KeyError, TypeError, ValueError) as exc:
        raise VLTSegError(f"label map {path} is malformed ({exc}); expected name, description, valid_ids, "
                          "class_ids and to_train_id") from exc
