"""Engine-cache logic without TensorRT: key, manifest, stale detection, atomic writes and the build lock.

The lock test runs real processes contending for the real file lock; their build function is a stand-in
(a TensorRT build is not the thing under test there, the serialisation is)."""
import dataclasses
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import (EngineSpec, InputProfile, ensure_engine, manifest_path,
                                             profile_for_input, read_manifest, runtime_mismatch, stale_reason,
                                             verify_engine_file)
from vltseg_core.export.tensorrt_build import builder_flags, default_engine_path, timing_cache_path


def make_spec(**changes) -> EngineSpec:
    spec = EngineSpec(onnx_sha256="a" * 64, tensorrt_version="10.3.0", gpu_name="NVIDIA Jetson AGX Orin",
                      compute_capability="8.7", precision="fp16",
                      profile=InputProfile("images", (1, 3, 512, 1024), (1, 3, 512, 1024), (1, 3, 512, 1024)),
                      builder_flags=builder_flags("fp16"), network_onnx_sha256="d" * 64)
    return dataclasses.replace(spec, **changes)


class Builds:
    """Counts builds; the 'engine' bytes encode the spec so a reused engine can be told apart."""

    def __init__(self):
        self.count = 0

    def __call__(self, spec: EngineSpec) -> bytes:
        self.count += 1
        return f"engine {spec.key()} #{self.count}".encode()


def test_key_changes_with_every_component():
    base = make_spec()
    variants = {
        "onnx_sha256": "b" * 64, "tensorrt_version": "10.4.0", "gpu_name": "NVIDIA GeForce RTX 4090",
        "compute_capability": "8.9", "precision": "fp32",
        "profile": InputProfile("images", (1, 3, 512, 512), (1, 3, 512, 1024), (1, 3, 1024, 2048)),
        "builder_flags": builder_flags("fp16", workspace_mib=1024), "network_onnx_sha256": "e" * 64,
    }
    assert set(variants) == {f.name for f in dataclasses.fields(EngineSpec)}
    keys = {base.key()}
    for name, value in variants.items():
        keys.add(make_spec(**{name: value}).key())
    assert len(keys) == len(variants) + 1
    assert make_spec().key() == base.key()  # deterministic
    # flag order does not matter, only the set
    assert make_spec(builder_flags=tuple(reversed(base.builder_flags))).key() == base.key()


def test_build_reuse_and_manifest(tmp_path):
    engine, builds = tmp_path / "m.fp16.engine", Builds()
    spec = make_spec()
    assert ensure_engine(engine, spec, builds, metadata={"class_table": "cityscapes"}) == engine
    assert builds.count == 1
    manifest = read_manifest(engine)
    assert manifest["key"] == spec.key() and manifest["spec"]["gpu_name"] == "NVIDIA Jetson AGX Orin"
    assert manifest["metadata"] == {"class_table": "cityscapes"}
    assert manifest_path(engine).name == "m.fp16.engine.json"
    ensure_engine(engine, spec, builds)
    assert builds.count == 1  # reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.engine", "m.fp16.engine.json", "m.fp16.engine.lock"]
    ensure_engine(engine, spec, builds, force=True)
    assert builds.count == 2


def test_stale_engine_is_rebuilt_with_reason(tmp_path, caplog):
    engine, builds = tmp_path / "m.engine", Builds()
    ensure_engine(engine, make_spec(), builds)
    new = make_spec(onnx_sha256="c" * 64, tensorrt_version="10.5.0")
    reason = stale_reason(engine, new)
    assert "onnx_sha256" in reason and "tensorrt_version: '10.3.0' -> '10.5.0'" in reason
    with caplog.at_level(logging.WARNING, logger="vltseg_core.export.engine_cache"):
        ensure_engine(engine, new, builds)
    assert builds.count == 2
    assert "tensorrt_version" in caplog.text and "building TensorRT engine" in caplog.text
    assert engine.read_bytes().decode().startswith(f"engine {new.key()}")


@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "garbage_manifest", "old_format"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    engine, builds = tmp_path / "m.engine", Builds()
    spec = make_spec()
    ensure_engine(engine, spec, builds)
    if damage == "truncate":
        engine.write_bytes(engine.read_bytes()[:5])
    elif damage == "no_manifest":
        manifest_path(engine).unlink()
    elif damage == "garbage_manifest":
        manifest_path(engine).write_text("{not json")
    else:
        data = json.loads(manifest_path(engine).read_text())
        data["format"] = 0
        manifest_path(engine).write_text(json.dumps(data))
    assert stale_reason(engine, spec) is not None
    ensure_engine(engine, spec, builds)
    assert builds.count == 2 and stale_reason(engine, spec) is None


def test_failed_build_leaves_previous_engine_intact(tmp_path):
    engine = tmp_path / "m.engine"
    ensure_engine(engine, make_spec(), Builds())
    before = engine.read_bytes()

    def broken(spec):
        raise VLTSegError("TensorRT failed to build an engine")

    with pytest.raises(VLTSegError, match="failed to build"):
        ensure_engine(engine, make_spec(precision="fp32"), broken)
    assert engine.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_verify_engine_file_errors(tmp_path):
    engine = tmp_path / "x.engine"
    with pytest.raises(VLTSegError, match="engine not found"):
        verify_engine_file(engine)
    engine.write_bytes(b"123")
    with pytest.raises(VLTSegError, match="no readable manifest"):
        verify_engine_file(engine)
    ensure_engine(engine, make_spec(), Builds(), force=True)
    assert verify_engine_file(engine)["key"] == make_spec().key()
    engine.write_bytes(b"flipped bits")
    with pytest.raises(VLTSegError, match="corrupt or was replaced"):
        verify_engine_file(engine)


def test_runtime_mismatch_names_what_differs():
    manifest = {"spec": make_spec().as_dict()}
    assert runtime_mismatch(manifest, "10.3.0", "NVIDIA Jetson AGX Orin", "8.7") is None
    reason = runtime_mismatch(manifest, "10.3.0", "NVIDIA A100-SXM4-40GB", "8.0")
    assert "gpu_name" in reason and "compute_capability" in reason and "tensorrt_version" not in reason


def test_profiles():
    fixed = profile_for_input("images", [1, 3, 512, 1024])
    assert fixed.min == fixed.opt == fixed.max == (1, 3, 512, 1024)
    with pytest.raises(VLTSegError, match="fixed at 512x1024"):
        profile_for_input("images", [1, 3, 512, 1024], opt_hw=(720, 1280))
    with pytest.raises(VLTSegError, match="dynamic height/width"):
        profile_for_input("images", ["batch", 3, "height", "width"])
    dyn = profile_for_input("images", ["batch", 3, "height", "width"], (512, 1024), (256, 512), (1024, 2048), (1, 2, 4))
    assert dyn.min == (1, 3, 256, 512) and dyn.opt == (2, 3, 512, 1024) and dyn.max == (4, 3, 1024, 2048)
    assert dyn.contains((3, 3, 720, 1280)) and not dyn.contains((1, 3, 1080, 1920)) and not dyn.contains((5, 3, 512, 512))
    with pytest.raises(VLTSegError, match="min <= opt <= max"):
        profile_for_input("images", ["b", 3, "h", "w"], (512, 1024), min_hw=(1024, 1024))
    with pytest.raises(VLTSegError, match="invalid"):
        InputProfile("images", (1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 8, 8))


def test_flags_and_paths(tmp_path):
    """Every engine is strongly typed: no precision flags (the graph's types are the engine's), TF32 off unless
    asked; bf16 is refused (no CPU check of a bf16 graph exists)."""
    assert builder_flags("fp32") == ("no_tf32", "strongly_typed", "workspace_mib=4096")
    assert builder_flags("fp16") == builder_flags("int8") == builder_flags("fp32")
    assert "tf32" in builder_flags("fp32", allow_tf32=True)
    for bad in ("fp8", "bf16"):
        with pytest.raises(VLTSegError, match=f"unknown TensorRT precision '{bad}'"):
            builder_flags(bad)
    spec = make_spec()
    engine = default_engine_path(tmp_path / "demo.onnx", spec)
    assert engine.name == f"demo.fp16.nvidia-jetson-agx-orin-sm87.{spec.key()[:8]}.engine"
    assert timing_cache_path(engine, spec).name == f"timing-nvidia-jetson-agx-orin-sm87-{spec.key()[:16]}.cache"
    # Nodes asking for another profile or other flags get their own slot instead of rebuilding this one.
    other_profile = make_spec(profile=InputProfile("images", (1, 3, 360, 480), (1, 3, 360, 480), (1, 3, 360, 480)))
    other_flags = make_spec(builder_flags=builder_flags("fp16", workspace_mib=1024))
    paths = {default_engine_path(tmp_path / "demo.onnx", s) for s in (spec, other_profile, other_flags)}
    assert len(paths) == 3
    # one timing cache per engine spec: parallel builds of different engines never overwrite each other's
    assert len({timing_cache_path(engine, s) for s in (spec, other_profile, other_flags)}) == 3


def _contend(engine: str, log_file: str, precision: str, force: bool, barrier) -> None:
    """One 'node' starting up: get the engine, building it under the lock when needed (stand-in builder)."""

    def build(spec: EngineSpec) -> bytes:
        with open(log_file, "a") as f:
            f.write("start\n")
        time.sleep(0.5)
        with open(log_file, "a") as f:
            f.write("end\n")
        return spec.key().encode()

    barrier.wait(30)  # all four ask at the same moment
    ensure_engine(Path(engine), make_spec(precision=precision), build, force=force)


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_builders_are_serialised(tmp_path, force):
    """Four processes start together. Same spec: one builds, the others wait and reuse its engine.
    Forced rebuilds: all build, but never two at once (start/end strictly alternate)."""
    engine, log_file = tmp_path / "m.engine", tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_contend, args=(str(engine), str(log_file), "fp16", force, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = log_file.read_text().split()
    assert events == ["start", "end"] * (4 if force else 1)
    assert stale_reason(engine, make_spec(precision="fp16")) is None


def test_a_file_is_hashed_once_while_unchanged(tmp_path, monkeypatch):
    """Loading an engine names it in the cache check, the manifest check and the backend: one read of the file."""
    import builtins
    import os

    from vltseg_core.assets import sha256_file

    path = tmp_path / "m.engine"
    path.write_bytes(b"engine bytes")
    reads, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (reads.append(str(f)), real_open(f, *a, **k))[1])
    first = sha256_file(path)
    assert sha256_file(path) == first and reads.count(str(path)) == 1
    path.write_bytes(b"other bytes!")  # rewritten: new size / mtime -> hashed again
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) != first and reads.count(str(path)) == 2
