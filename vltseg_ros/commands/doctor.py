"""`vltseg doctor [--json] [--backend NAME --device DEV] [--build-engine]`: what this machine can run, checked by
trying it (ONNX Runtime providers by creating a session on each, TensorRT by building a tiny engine when asked),
because version drift between torch, CUDA, ONNX Runtime, TensorRT, ROS 2 and OpenCV is what stops a deployment.

It lives in vltseg_ros, not vltseg_core, because it imports rclpy, cv_bridge and vision_msgs (inside functions,
each optional): vltseg_core never imports ROS, not even lazily. Everything it says about backends comes from the
same facts the backends use (vltseg_core.gpu, vltseg_core.backends.factory).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from vltseg_core.backends.base import BACKENDS
from vltseg_core.backends.factory import check_usable, choose_backend
from vltseg_core.errors import VLTSegError
from vltseg_core.gpu import (TENSORRT_SUPPORTED, check_tensorrt_version, cuda_available, cuda_index, current_gpu,
                             supported_tensorrt_range, tensorrt_installed)

STATUSES = ("ok", "warn", "fail", "absent")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # these take a device_id
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
TENSORRT_DISTRIBUTIONS = {f"tensorrt-cu{major}{suffix}": major for major in (11, 12, 13) for suffix in ("", "-libs")}
JETSON_RELEASE = Path("/etc/nv_tegra_release")  # present on every JetPack (L4T) system


@dataclass
class Check:
    """One row: `check` names what was checked, `status` is one of STATUSES, `facts` are the JSON fields."""

    check: str
    status: str
    detail: str
    facts: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"check": self.check, "status": self.status, "detail": self.detail, **self.facts}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of the table")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="the backend you need: exit 2 with the reason when it cannot run here")
    parser.add_argument("--device", default=None,
                        help="device for --backend: cpu or cuda[:N] (default: cuda for tensorrt, else cpu)")
    parser.add_argument("--build-engine", action="store_true",
                        help="also build a tiny TensorRT engine (seconds; needs TensorRT and a CUDA GPU)")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def python_checks() -> list[Check]:
    version = ".".join(map(str, sys.version_info[:3]))
    return [Check("python", "ok", f"{version} ({sys.executable})", {"version": version, "executable": sys.executable})]


def _torch_has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """CUDA binary compatibility: sm_XY code runs on the same major with minor >= Y; compute_XY (PTX) is compiled
    for any GPU >= XY; arch-specific builds (sm_90a) run only on their own GPU."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
        if not match:
            continue
        kind, major, minor, special = match[1], int(match[2]), int(match[3]), match[4]
        if special:
            if (major, minor) == capability:
                return True
        elif kind == "compute" and (major, minor) <= capability:
            return True
        elif kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
    return False


def torch_checks() -> tuple[list[Check], list[str]]:
    """torch and its CUDA build, then one row per visible GPU; also returns the visible GPUs ('cuda:N')."""
    import torch

    build = torch.version.cuda
    number = torch.backends.cudnn.version() if build else None  # 92400 = 9.24.0
    cudnn = f"{number // 10000}.{number % 10000 // 100}.{number % 100}" if number else None
    checks = [Check("torch", "ok", f"{torch.__version__}, " + (f"CUDA {build} build" if build else "CPU-only build")
                    + (f", cuDNN {cudnn}" if cudnn else ""),
                    {"version": torch.__version__, "cuda": build, "cudnn": cudnn})]
    if not build:
        checks.append(Check("cuda", "absent", "this torch is a CPU-only build (install a CUDA build of torch for "
                            "GPUs)", {"available": False, "gpus": 0}))
        return checks, []
    with warnings.catch_warnings(record=True) as caught:  # torch says why (e.g. a driver too old) in a warning
        warnings.simplefilter("always")
        available = cuda_available()
    if not available:
        why = "; ".join(" ".join(str(w.message).split()) for w in caught) or ("NVIDIA driver or GPU missing, or "
                                                                             "CUDA_VISIBLE_DEVICES hides them")
        checks.append(Check("cuda", "absent", f"no CUDA GPU visible (torch is a CUDA {build} build: {why})",
                            {"available": False, "gpus": 0}))
        return checks, []
    count = torch.cuda.device_count()
    checks.append(Check("cuda", "ok", f"{count} GPU(s) visible to torch's CUDA {build}",
                        {"available": True, "gpus": count}))
    gpus = []
    for index in range(count):
        device = f"cuda:{index}"
        name, capability = current_gpu(device)
        major, minor = map(int, capability.split("."))
        memory = torch.cuda.get_device_properties(index).total_memory / 2**30
        facts = {"device": device, "name": name, "capability": capability, "memory_gib": round(memory, 1)}
        detail = f"{name}, compute capability {capability}, {memory:.1f} GiB"
        if _torch_has_kernels((major, minor), torch.cuda.get_arch_list()):
            checks.append(Check(f"gpu {device}", "ok", detail, facts))
        else:
            checks.append(Check(f"gpu {device}", "fail", f"{detail}: this torch has no kernels for sm_{major}{minor} "
                                f"(built for {', '.join(torch.cuda.get_arch_list())}; install a torch build that "
                                "supports this GPU)", facts))
        gpus.append(device)
    return checks, gpus


def tiny_graph(input_name: str = "images"):
    """A one-node Add graph (1x3x8x8): enough for a provider to load and run, and for TensorRT to build."""
    from onnx import TensorProto, helper

    shape = [1, 3, 8, 8]
    graph = helper.make_graph([helper.make_node("Add", [input_name, input_name], ["sum"])], "vltseg_doctor",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("sum", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for every supported ONNX Runtime and TensorRT parser
    return model


def probe_provider(ort, graph: bytes, provider: str, device_index: int) -> tuple[bool, str, list[str]]:
    """(loads, why, providers the session really runs): a session created with `provider` first, run once.
    ONNX Runtime silently drops a provider whose libraries cannot load, and retries one whose creation failed
    without its options (losing device_id), so both the list and the device id are read back."""
    import numpy as np

    options = {"device_id": device_index} if provider in GPU_PROVIDERS else {}
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(graph, sess_options=session_options,
                                           providers=[(provider, options), "CPUExecutionProvider"])
            session.run(None, {"images": np.ones((1, 3, 8, 8), np.float32)})
    except Exception as exc:  # noqa: BLE001 - any failure to create or run is the answer
        return False, f"session creation failed ({_one_line(exc)})", []
    in_use = session.get_providers()
    if provider not in in_use:
        return False, f"listed but does not load: the session fell back to {', '.join(in_use)}", in_use
    if options:
        got = str(session.get_provider_options().get(provider, {}).get("device_id", device_index))
        if got != str(device_index):
            return False, f"loads on device {got}, not cuda:{device_index} (its options were dropped)", in_use
        return True, f"loads and runs on cuda:{device_index}", in_use
    return True, "loads and runs", in_use


def onnxruntime_checks(device_index: int) -> tuple[list[Check], list[str]]:
    """ONNX Runtime's version, then one row per listed provider; also returns the providers that load."""
    if importlib.util.find_spec("onnxruntime") is None:
        return [Check("onnxruntime", "absent", "not installed (pip install '.[export]')", {"version": None})], []
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the fallback warnings are what this check reports, once, in its row
    listed = ort.get_available_providers()
    installed = [name for name in ("onnxruntime-gpu", "onnxruntime") if _distribution_version(name)]
    facts = {"version": ort.__version__, "distributions": installed, "listed": listed}
    detail = f"{ort.__version__} ({', '.join(installed) or 'unknown distribution'}), lists {', '.join(listed)}"
    if len(installed) > 1:  # one `onnxruntime` module: whichever was installed last overwrote the other's files
        checks = [Check("onnxruntime", "warn", f"{detail}: both share one module, the last installed wins (keep one: "
                        "pip uninstall onnxruntime onnxruntime-gpu, then install the one you need)", facts)]
    else:
        checks = [Check("onnxruntime", "ok", detail, facts)]
    graph = tiny_graph().SerializeToString()
    loading = []
    for provider in listed:
        loads, why, in_use = probe_provider(ort, graph, provider, device_index)
        loading += [provider] if loads else []
        checks.append(Check(f"ort {provider}", "ok" if loads else "fail", why,
                            {"provider": provider, "loads": loads, "session_providers": in_use}))
    return checks, loading


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_install_command(torch_cuda: str | None, jetson: bool) -> str:
    """How to get a supported TensorRT for this torch: the pip package of its CUDA major (tensorrt-cu12 /
    tensorrt-cu13; plain `tensorrt` resolves to the newest, whatever CUDA it needs), or JetPack's own on a Jetson."""
    if jetson:
        return ("use JetPack's TensorRT: python3 -m venv --system-site-packages .venv (do not pip install tensorrt "
                "on a Jetson)")
    if not torch_cuda:
        return "TensorRT needs a CUDA build of torch first (this torch is CPU-only)"
    (lo_major, lo_minor), (hi_major, _) = TENSORRT_SUPPORTED
    return f"pip install 'tensorrt-cu{torch_cuda.split('.')[0]}>={lo_major}.{lo_minor},<{hi_major}'"


def tensorrt_checks(torch_cuda: str | None) -> list[Check]:
    jetson = JETSON_RELEASE.is_file()
    command = tensorrt_install_command(torch_cuda, jetson)
    facts = {"installed": False, "version": None, "supported": False, "supported_range": supported_tensorrt_range(),
             "install_command": command}
    if not tensorrt_installed():
        return [Check("tensorrt", "absent", f"not installed; {command}", facts)]
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError of a missing libnvinfer, ...
        return [Check("tensorrt", "fail", f"installed but does not import ({_one_line(exc)}); {command}",
                      {**facts, "installed": True})]
    facts.update(installed=True, version=trt.__version__)
    try:
        check_tensorrt_version(trt.__version__)
    except VLTSegError as exc:
        return [Check("tensorrt", "fail", f"{exc}; {command}", facts)]
    facts["supported"] = True
    detail = f"{trt.__version__} (supported: {supported_tensorrt_range()})"
    cuda_majors = {major for name, major in TENSORRT_DISTRIBUTIONS.items() if _distribution_version(name)}
    if torch_cuda and cuda_majors and int(torch_cuda.split(".")[0]) not in cuda_majors:
        return [Check("tensorrt", "warn", f"{detail}, but built for CUDA {'/'.join(map(str, sorted(cuda_majors)))} "
                      f"while torch uses CUDA {torch_cuda} (two CUDA runtimes in one process); {command}", facts)]
    return [Check("tensorrt", "ok", detail, facts)]


def engine_build_check(device: str) -> Check:
    """Build (and deserialize) a tiny strongly typed engine with the project's builder: the whole TensorRT chain
    (libraries, GPU, parser, builder) works on `device`."""
    name = f"tensorrt engine {device}"
    if not tensorrt_installed():
        return Check(name, "absent", "not tried: TensorRT is not installed", {"built": False})
    if not cuda_available():
        return Check(name, "absent", "not tried: no CUDA GPU visible", {"built": False})
    import onnx

    from vltseg_core.export.tensorrt_build import build_serialized_engine, engine_spec, tensorrt_logger

    start = time.perf_counter()
    try:
        import tensorrt as trt

        with tempfile.TemporaryDirectory(prefix="vltseg-doctor-") as folder:
            onnx_path = Path(folder) / "tiny.onnx"
            onnx.save(tiny_graph(), str(onnx_path))
            spec, network = engine_spec(onnx_path, "fp32", device)
            data = build_serialized_engine(network, spec, Path(folder) / "timing.cache", device)
        if trt.Runtime(tensorrt_logger()).deserialize_cuda_engine(data) is None:
            raise VLTSegError("the engine built but does not deserialize")
    except Exception as exc:  # noqa: BLE001 - whatever TensorRT raises is the answer
        return Check(name, "fail", f"tiny engine does not build: {_one_line(exc)}", {"built": False})
    seconds = time.perf_counter() - start
    return Check(name, "ok", f"tiny fp32 engine built and deserialized in {seconds:.1f} s",
                 {"built": True, "seconds": round(seconds, 2)})


def ros_checks() -> list[Check]:
    """ROS 2 distribution, rclpy and its RMW, cv_bridge (agreeing with this cv2), vision_msgs: all optional."""
    distro = os.environ.get("ROS_DISTRO")
    checks = [Check("ros2", "ok", f"ROS_DISTRO={distro} (a sourced ROS 2 install)", {"distro": distro}) if distro
              else Check("ros2", "absent", "ROS_DISTRO not set: no ROS 2 install sourced (pip ROS wheels or none)",
                         {"distro": None})]
    rmw_env = os.environ.get("RMW_IMPLEMENTATION")
    facts = {"importable": False, "origin": None, "rmw": None, "rmw_env": rmw_env}
    if importlib.util.find_spec("rclpy") is None:
        checks.append(Check("rclpy", "absent", "not importable (source a ROS 2 install, or pip install '.[ros]' for "
                            "the pip wheels)", facts))
    else:
        try:
            import rclpy
            import rclpy.utilities

            rmw = rclpy.utilities.get_rmw_implementation_identifier()
        except Exception as exc:  # noqa: BLE001 - a broken or mismatched install (another Python, another distro)
            checks.append(Check("rclpy", "fail", f"found but does not import ({_one_line(exc)})", facts))
        else:
            facts.update(importable=True, origin=str(Path(rclpy.__file__).parent), rmw=rmw)
            checks.append(Check("rclpy", "ok", f"{facts['origin']}; RMW {rmw} "
                                f"(RMW_IMPLEMENTATION={rmw_env or 'unset, the default'})", facts))
    checks.append(cv_bridge_check())
    try:
        from vision_msgs.msg import LabelInfo  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or present without its message libraries
        checks.append(Check("vision_msgs", "absent", "not importable: label_info is published as a std_msgs/String "
                            "(YAML)", {"importable": False}))
    else:
        checks.append(Check("vision_msgs", "ok", "label_info is published as vision_msgs/LabelInfo",
                            {"importable": True}))
    return checks


def cv_bridge_check() -> Check:
    """cv_bridge's C++ side is built against the OpenCV of the ROS install: with a pip cv2 that numbers the types
    otherwise (OpenCV 5), every conversion fails (`KeyError: 16` in cv2_to_imgmsg). Tried, not inferred."""
    facts = {"importable": False, "agrees_with_cv2": None}
    if importlib.util.find_spec("cv_bridge") is None:
        return Check("cv_bridge", "absent", "not importable: the node converts images with rosbags-image "
                     "(pip-only machine)", facts)
    try:
        import cv2
        import numpy as np
        from cv_bridge import CvBridge

        bridge = CvBridge()
    except Exception as exc:  # noqa: BLE001
        return Check("cv_bridge", "fail", f"found but does not import ({_one_line(exc)})", facts)
    facts["importable"] = True
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    try:
        same_types = bridge.encoding_to_cvtype2("rgb8") == cv2.CV_8UC3
        back = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(rgb, encoding="rgb8"), desired_encoding="rgb8")
        agrees = bool(same_types and np.array_equal(back, rgb))
        problem = "" if agrees else "a round trip changes the pixels"
    except Exception as exc:  # noqa: BLE001 - KeyError of OpenCV 5, CvBridgeError, ...
        agrees, problem = False, _one_line(exc)
    facts["agrees_with_cv2"] = agrees
    if agrees:
        return Check("cv_bridge", "ok", f"converts with this cv2 {cv2.__version__}", facts)
    return Check("cv_bridge", "fail", f"does not work with this cv2 {cv2.__version__} ({problem}; expected the OpenCV "
                 "4 that cv_bridge is built against: pip install 'opencv-python-headless>=4.8,<5')", facts)


def opencv_check(cv_bridge_present: bool) -> Check:
    import cv2

    dists = {name: version for name in OPENCV_DISTRIBUTIONS if (version := _distribution_version(name))}
    facts = {"version": cv2.__version__, "distributions": dists}
    detail = f"{cv2.__version__} (" + (", ".join(f"{n} {v}" for n, v in dists.items()) or "not from pip") + ")"
    if not cv2.__version__.startswith("4."):
        return Check("opencv", "fail" if cv_bridge_present else "warn",
                     f"{detail}: cv_bridge is built against OpenCV 4 (expected opencv-python-headless>=4.8,<5)", facts)
    if len(set(dists.values())) > 1:
        return Check("opencv", "warn", f"{detail}: several builds provide the one `cv2` (expected the same version: "
                     "constraints.txt pins them together)", facts)
    return Check("opencv", "ok", detail, facts)


def auto_checks(gpus: list[str], ort_loading: list[str]) -> list[Check]:
    """What `backend=auto` picks for PyTorch weights and for an ONNX graph, on the CPU and on the first GPU."""
    checks = []
    for device in ["cpu"] + gpus[:1]:
        for kind in ("model", "onnx"):
            name = f"auto ({kind}, {device})"
            try:
                backend, reason = choose_backend("auto", kind, device)
            except VLTSegError as exc:
                checks.append(Check(name, "warn", str(exc), {"source_kind": kind, "device": device, "backend": None}))
                continue
            facts = {"source_kind": kind, "device": device, "backend": backend, "reason": reason}
            if backend == "onnxruntime" and device != "cpu" and not set(GPU_PROVIDERS) & set(ort_loading):
                checks.append(Check(name, "warn", f"{backend} ({reason}), but no GPU provider of ONNX Runtime loads "
                                    "here: it would stop with an error (rows 'ort ...' above)", facts))
            else:
                checks.append(Check(name, "ok", f"{backend}: {reason}", facts))
    return checks


def requested_check(backend: str, device: str, gpus: list[str], ort_loading: list[str]) -> Check:
    """Can `backend` run on `device` here: check_usable (what the backends check first), plus what only trying
    shows (a GPU provider that loads, a GPU that exists for torch)."""
    name = f"requested {backend} on {device}"
    try:
        check_usable(backend, device)
        if device != "cpu" and f"cuda:{cuda_index(device)}" not in gpus:
            raise VLTSegError(f"device '{device}' is not a visible CUDA GPU (visible: {', '.join(gpus) or 'none'})")
        if backend == "onnxruntime" and device != "cpu" and not set(GPU_PROVIDERS) & set(ort_loading):
            raise VLTSegError(f"no CUDA or TensorRT execution provider of ONNX Runtime loads on {device} (rows "
                              "'ort ...': not in this build, or CUDA, cuDNN or TensorRT libraries missing or mismatched)")
    except VLTSegError as exc:
        return Check(name, "fail", str(exc), {"backend": backend, "device": device, "usable": False})
    return Check(name, "ok", "can run here", {"backend": backend, "device": device, "usable": True})


def table(checks: list[Check]) -> str:
    widths = [max(len(row) for row in column) for column in
              (["check", *(c.check for c in checks)], ["status", *(c.status for c in checks)])]
    lines = [f"{'check':<{widths[0]}}  {'status':<{widths[1]}}  detail"]
    lines += [f"{c.check:<{widths[0]}}  {c.status:<{widths[1]}}  {c.detail}" for c in checks]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    if device != "cpu":
        cuda_index(device)  # a malformed device is bad input: one error line before any check
    checks = python_checks()
    torch_rows, gpus = torch_checks()
    checks += torch_rows
    ort_rows, ort_loading = onnxruntime_checks(cuda_index(device) if device != "cpu" else 0)
    checks += ort_rows
    checks += tensorrt_checks(torch_rows[0].facts["cuda"])
    if args.build_engine:
        checks.append(engine_build_check(device if device != "cpu" else "cuda"))
    ros_rows = ros_checks()
    bridge = next(c for c in ros_rows if c.check == "cv_bridge")
    checks += ros_rows + [opencv_check(bridge.status != "absent")]
    checks += auto_checks(gpus, ort_loading)
    requested = requested_check(args.backend, device, gpus, ort_loading) if args.backend else None
    checks += [requested] if requested else []
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"checks": [c.as_dict() for c in checks], "requested": requested and requested.as_dict(),
                          "seconds": round(seconds, 2)}, indent=2))
    else:
        print(table(checks))
        print(f"[doctor] {len(checks)} checks in {seconds:.1f} s")
    if requested and requested.status != "ok":
        print(f"vltseg doctor: backend {args.backend} cannot run on {device} here: {requested.detail}",
              file=sys.stderr)
        return 2
    return 0
