"""Every TensorRT call the code makes exists, with those parameter names, in the real Python bindings of each
supported TensorRT version: the fake module the build/gate tests run against (fake_tensorrt.py) is checked name by
name against the real `tensorrt` of 10.0, 10.16 and 11.4, made importable without TensorRT's libraries by
../shared/trt-api-stubs (no engine can run there). Skipped, with the reason, where those stubs cannot be made."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vltseg_core.gpu import TENSORRT_SUPPORTED, check_tensorrt_version

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT.parent / "shared" / "trt-api-stubs" / "make_site.sh"
VERSIONS = ["10.0.1", "10.16.1.11", "11.4.0.106"]

PROBE = r'''
import importlib.util, inspect, re, sys
import tensorrt as real
spec = importlib.util.spec_from_file_location("fake_tensorrt", sys.argv[1])
fake = importlib.util.module_from_spec(spec); spec.loader.exec_module(fake)
# attributes the code reads that the fake sets in __init__ (properties on the real classes)
INSTANCE = {"OnnxParser": ["num_errors"], "IBuilderConfig": ["progress_monitor"]}
SKIP = {"KNOBS", "RECORD", "reset"}
problems = []
def overloads(name, doc):
    """Parameter-name lists of every signature in a pybind11 docstring (overloads are numbered lines)."""
    found = []
    for line in (doc or "").splitlines():
        m = re.match(r"\s*(?:\d+\.\s*)?" + name + r"\((self[^)]*)\)", line)
        if m:
            found.append([p.split(":")[0].strip() for p in m.group(1).split(",")][1:])
    return found
def check_class(name, fake_cls, real_cls):
    for attr, value in vars(fake_cls).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        if not hasattr(real_cls, attr):
            problems.append(f"{name}.{attr} missing"); continue
        if inspect.isclass(value):
            check_class(f"{name}.{attr}", value, getattr(real_cls, attr))
        elif inspect.isfunction(value) and attr != "__init__" or (attr == "__init__" and name in ("OnnxParser", "Runtime", "Builder")):
            want = overloads(attr, getattr(real_cls, attr).__doc__)
            got = list(inspect.signature(value).parameters)[1:]
            # the fake's parameters are the leading ones of some real overload (later ones have defaults)
            if want and not any(w[:len(got)] == got for w in want):
                problems.append(f"{name}.{attr}{tuple(got)} but real {want}")
    for attr in INSTANCE.get(name, []):
        if not hasattr(real_cls, attr):
            problems.append(f"{name}.{attr} missing")
for name, value in vars(fake).items():
    if name.startswith("_") or name in SKIP or inspect.ismodule(value) or getattr(value, "__module__", "fake_tensorrt") != "fake_tensorrt":
        continue
    if not hasattr(real, name):
        problems.append(f"{name} missing")
    elif inspect.isclass(value):
        check_class(name, value, getattr(real, name))
print(real.__version__)
print("\n".join(problems) or "OK")
'''


def stub_site(version: str, tmp_root: Path) -> dict:
    if not STUBS.is_file():
        pytest.skip(f"no {STUBS} (the shared TensorRT API stubs)")
    out = Path(os.environ.get("VLTSEG_TRT_API_CACHE", Path.home() / ".cache" / "vltseg-trt-api")) / version
    if not (out / "site" / "tensorrt").is_dir():
        proc = subprocess.run(["bash", str(STUBS), version, str(out), sys.executable], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"TensorRT {version} API stubs could not be made: {proc.stderr.strip()[-300:]}")
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{out / 'site'}:{env.get('PYTHONPATH', '')}"
    env["LD_LIBRARY_PATH"] = f"{out / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


@pytest.mark.parametrize("version", VERSIONS)
def test_every_call_exists_in_the_real_bindings(version, tmp_path):
    env = stub_site(version, tmp_path)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(Path(__file__).with_name("fake_tensorrt.py"))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reported, _, problems = proc.stdout.partition("\n")
    assert reported.strip() == version
    assert problems.strip() == "OK", problems
    assert check_tensorrt_version(version) == version  # every version checked here is inside the supported range


@pytest.mark.parametrize("version, ok", [("10.0.1", True), ("10.16.1.11", True), ("11.4.0.106", True),
                                         ("12.0.0", False), ("9.3.0", False), ("8.6.1", False), ("x", False)])
def test_version_gate_follows_the_supported_range(version, ok):
    from vltseg_core.errors import VLTSegError

    if ok:
        assert check_tensorrt_version(version) == version
    else:
        with pytest.raises(VLTSegError, match=re.escape(f"TensorRT {version} is installed (expected TensorRT "
                                                        f"{TENSORRT_SUPPORTED[0][0]}.0 to 11.x")):
            check_tensorrt_version(version)
