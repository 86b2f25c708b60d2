"""The TensorRT engine cache, kept free of TensorRT so all of it is tested on any machine.

An engine is only valid for the exact ONNX bytes (the graph exported and the graph TensorRT parsed, e.g. its
float16 conversion), TensorRT version, GPU model and compute capability, precision, input profile and builder flags
it was built with. All of these form the cache key; a JSON manifest
beside each engine records them, so a mismatch is detected, explained in the log and rebuilt, never used.
Writes are atomic (temp file + rename) and a file lock serialises builders (several nodes starting at once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from vltseg_core.assets import sha256_file
from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2  # 2: strongly typed engines, network_onnx_sha256, the engine gate record
Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class InputProfile:
    """TensorRT optimization profile of the one image input: min / opt / max (N,3,H,W)."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) <= 0:
                raise VLTSegError(f"input profile {label} shape {shape} is invalid (expected positive (N,3,H,W))")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise VLTSegError(f"input profile needs min <= opt <= max in every axis, got min {self.min}, "
                              f"opt {self.opt}, max {self.max}")

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max))

    def describe(self) -> str:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        return f"{self.name} min {fmt(self.min)} opt {fmt(self.opt)} max {fmt(self.max)}"

    def as_dict(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_for_input(name: str, graph_shape: list, opt_hw: tuple[int, int] | None = None,
                      min_hw: tuple[int, int] | None = None, max_hw: tuple[int, int] | None = None,
                      batch: tuple[int, int, int] = (1, 1, 1)) -> InputProfile:
    """Profile for a graph input whose shape is `graph_shape` (ints = static dims, anything else = dynamic).

    Static dims must agree with the requested sizes; dynamic H/W need at least `opt_hw` (min/max default to it).
    """
    if len(graph_shape) != 4:
        raise VLTSegError(f"graph input '{name}' has shape {graph_shape} (expected (N,3,H,W))")
    static_hw = [d if isinstance(d, int) and d > 0 else None for d in graph_shape[2:]]
    if all(static_hw):
        for label, hw in (("opt", opt_hw), ("min", min_hw), ("max", max_hw)):
            if hw is not None and tuple(hw) != tuple(static_hw):
                raise VLTSegError(f"the ONNX graph is fixed at {static_hw[0]}x{static_hw[1]} but the {label} size "
                                  f"asked for is {hw[0]}x{hw[1]} (expected the graph's size, or a dynamic export)")
        opt_hw = min_hw = max_hw = tuple(static_hw)
    elif opt_hw is None:
        raise VLTSegError(f"graph input '{name}' has dynamic height/width: give the size to optimise for "
                          "(--size HxW, optionally --min-size/--max-size)")
    min_hw, max_hw = tuple(min_hw or opt_hw), tuple(max_hw or opt_hw)
    n = graph_shape[0]
    if isinstance(n, int) and n > 0:
        batch = (n, n, n)
    return InputProfile(name, (batch[0], 3, *min_hw), (batch[1], 3, *opt_hw), (batch[2], 3, *max_hw))


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine depends on. Its canonical JSON is hashed into the cache key."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: InputProfile
    builder_flags: tuple[str, ...] = field(default=())
    network_onnx_sha256: str = ""  # the graph TensorRT parsed (its precision is the engine's)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["profile"] = self.profile.as_dict()
        data["builder_flags"] = sorted(self.builder_flags)
        return data

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


def manifest_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_manifest(engine: Path) -> dict | None:
    """The manifest beside `engine`, or None when it is missing or unreadable (both mean: not trustworthy)."""
    try:
        data = json.loads(manifest_path(engine).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(engine: Path, spec: EngineSpec) -> str | None:
    """Why the engine at `engine` cannot be used for `spec`, or None when it can."""
    if not engine.is_file():
        return "no engine built yet"
    manifest = read_manifest(engine)
    if manifest is None:
        return f"no readable manifest {manifest_path(engine).name} beside it"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"manifest format {manifest.get('format')} (this version writes {MANIFEST_FORMAT})"
    if manifest.get("key") != spec.key():
        old, new = manifest.get("spec", {}), spec.as_dict()
        changed = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
        return "built for a different configuration (" + ("; ".join(changed) or "key differs") + ")"
    if sha256_file(engine) != manifest.get("engine_sha256"):
        return "engine file does not match its manifest's sha256 (corrupt, truncated or replaced)"
    return None


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_engine(engine: Path, spec: EngineSpec, build: Callable[[EngineSpec], bytes], metadata: dict | None = None,
                  force: bool = False, lock_timeout: float = 6 * 3600) -> Path:
    """Return `engine`, building it with `build(spec) -> serialized bytes` unless a valid one is already there.

    Builders are serialised by a file lock; a process that waited re-checks, so the engine is built once.
    """
    engine.parent.mkdir(parents=True, exist_ok=True)
    reason = "rebuild forced" if force else stale_reason(engine, spec)
    if reason is None:
        log.info("using cached TensorRT engine %s (key %s)", engine, spec.key()[:12])
        return engine
    lock = FileLock(str(engine) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is building %s; waiting for it", engine)
        try:
            lock.acquire(timeout=lock_timeout)
        except Timeout:
            raise VLTSegError(f"timed out after {lock_timeout:.0f}s waiting for the build lock {lock.lock_file} "
                              "(expected the other builder to finish; remove the lock only if no build runs)") from None
    try:
        if not force:
            reason = stale_reason(engine, spec)
            if reason is None:
                log.info("TensorRT engine %s was built by another process while waiting", engine)
                return engine
        log.warning("building TensorRT engine %s: %s", engine, reason)
        started = time.time()
        data = bytes(build(spec))
        if not data:
            raise VLTSegError(f"TensorRT returned an empty engine for {engine} (see the builder log above)")
        manifest = {"format": MANIFEST_FORMAT, "key": spec.key(), "spec": spec.as_dict(),
                    "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.time() - started, 1), "metadata": metadata or {}}
        # Engine first, manifest last: a crash in between leaves a manifest whose sha does not match -> rebuild.
        atomic_write(engine, data)
        atomic_write(manifest_path(engine), json.dumps(manifest, indent=2, sort_keys=True).encode())
        log.info("TensorRT engine %s written (%.1f MiB, %.0f s)", engine, len(data) / 2**20, manifest["build_seconds"])
    finally:
        lock.release()
    return engine


def record_in_manifest(engine: Path, key: str, value: dict) -> dict:
    """Add `value` under `key` to the manifest beside `engine` (atomically); returns the new manifest."""
    manifest = read_manifest(engine)
    if manifest is None:
        raise VLTSegError(f"{engine} has no readable manifest {manifest_path(engine).name} beside it (expected the "
                          "JSON written by `vltseg export trt`)")
    manifest[key] = value
    atomic_write(manifest_path(engine), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def runtime_mismatch(manifest: dict, tensorrt_version: str, gpu_name: str, compute_capability: str) -> str | None:
    """Why an engine described by `manifest` cannot run with this TensorRT / GPU, or None when it can."""
    spec = manifest.get("spec", {})
    current = {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": compute_capability}
    changed = [f"{k}: built for {spec.get(k)!r}, running {v!r}" for k, v in current.items() if spec.get(k) != v]
    return "; ".join(changed) or None


def verify_engine_file(engine: Path) -> dict:
    """The manifest of a user-given engine after checking the file is the one the manifest describes."""
    if not engine.is_file():
        raise VLTSegError(f"TensorRT engine not found: {engine} (expected a file from `vltseg export trt`)")
    manifest = read_manifest(engine)
    if manifest is None:
        raise VLTSegError(f"{engine} has no readable manifest {manifest_path(engine).name} beside it (expected the "
                          "JSON written by `vltseg export trt`; without it the engine cannot be checked, rebuild it)")
    if sha256_file(engine) != manifest.get("engine_sha256"):
        raise VLTSegError(f"TensorRT engine {engine} is corrupt or was replaced: its sha256 does not match "
                          f"{manifest_path(engine).name} (expected an untouched engine; rebuild with "
                          "`vltseg export trt`)")
    return manifest
