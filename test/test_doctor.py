"""`vltseg doctor` on this machine (real torch, real ONNX Runtime sessions, real rclpy where importable), an ONNX
Runtime that lists a CUDA provider whose session falls back to the CPU, and the tiny-engine build path against the
fake `tensorrt` module (TensorRT cannot run here)."""
import contextlib
import importlib.util
import json
import subprocess
import sys

import cv2
import onnxruntime
import pytest
import torch

import fake_tensorrt
from vltseg_core import cli
from vltseg_core.export import tensorrt_build
from vltseg_core.gpu import cuda_available, tensorrt_installed
from vltseg_ros.commands import doctor

CORE_ROWS = ["python", "torch", "cuda", "onnxruntime", "ort CPUExecutionProvider", "tensorrt", "ros2", "rclpy",
             "cv_bridge", "vision_msgs", "opencv", "auto (model, cpu)", "auto (onnx, cpu)"]
TENSORRT_USABLE = tensorrt_installed() and cuda_available()


def doctor_json(capsys, *flags: str) -> tuple[int, dict, str]:
    code = cli.main(["doctor", "--json", *flags])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def rows(report: dict) -> dict[str, dict]:
    return {row["check"]: row for row in report["checks"]}


def test_table_has_a_row_per_check_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "doctor"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["check", "status", "detail"]
    status_at, detail_at = lines[0].index("status"), lines[0].index("detail")
    table = {line[:status_at].strip(): (line[status_at:detail_at].strip(), line[detail_at:]) for line in lines[1:-1]}
    assert set(CORE_ROWS) <= set(table), sorted(set(CORE_ROWS) - set(table))
    assert all(status in doctor.STATUSES for status, _ in table.values()), table
    assert table["ort CPUExecutionProvider"] == ("ok", "loads and runs")
    assert table["torch"][1].startswith(torch.__version__)
    assert lines[-1].startswith(f"[doctor] {len(table)} checks in ")


def test_json_fields_say_what_this_machine_has(capsys):
    code, report, _ = doctor_json(capsys)
    assert code == 0 and report["requested"] is None
    by_name = rows(report)
    assert by_name["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert (by_name["torch"]["version"], by_name["torch"]["cuda"]) == (torch.__version__, torch.version.cuda)
    assert by_name["cuda"]["available"] == torch.cuda.is_available()
    assert by_name["onnxruntime"]["listed"] == onnxruntime.get_available_providers()
    cpu = by_name["ort CPUExecutionProvider"]
    assert cpu["loads"] and cpu["session_providers"][0] == "CPUExecutionProvider"
    trt = by_name["tensorrt"]
    assert trt["installed"] == tensorrt_installed() and trt["supported_range"] == "TensorRT 10.0 to 11.x"
    if torch.version.cuda and not trt["installed"] and not doctor.JETSON_RELEASE.exists():
        major = torch.version.cuda.split(".")[0]
        assert trt["install_command"] == f"pip install 'tensorrt-cu{major}>=10.0,<12'"
        assert trt["status"] == "absent" and trt["install_command"] in trt["detail"]
    assert by_name["opencv"]["version"] == cv2.__version__
    assert by_name["rclpy"]["importable"] == (importlib.util.find_spec("rclpy") is not None)
    assert by_name["cv_bridge"]["importable"] == (importlib.util.find_spec("cv_bridge") is not None)
    assert by_name["auto (model, cpu)"]["backend"] == "torch"
    assert by_name["auto (onnx, cpu)"]["backend"] == "onnxruntime"
    assert 0 < report["seconds"] < 60


@pytest.mark.skipif(TENSORRT_USABLE, reason="TensorRT and a GPU are present: the tensorrt backend can run")
def test_requested_tensorrt_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "doctor", "--backend", "tensorrt"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "vltseg doctor: backend tensorrt cannot run on cuda here: "), proc.stderr
    assert "requested tensorrt on cuda  fail" in proc.stdout


def test_requested_onnxruntime_on_cpu_exits_0(capsys):
    code, report, err = doctor_json(capsys, "--backend", "onnxruntime", "--device", "cpu")
    assert code == 0 and err == ""
    assert report["requested"] == {"check": "requested onnxruntime on cpu", "status": "ok", "detail": "can run here",
                                   "backend": "onnxruntime", "device": "cpu", "usable": True}


def test_listed_cuda_provider_whose_session_falls_back_does_not_load(capsys, monkeypatch):
    """An onnxruntime that lists CUDAExecutionProvider (as onnxruntime-gpu does without its CUDA libraries): the real
    session asked for it on this CPU build runs on the CPU, and doctor says the provider does not load."""
    real = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this onnxruntime really has the CUDA provider")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    code, report, _ = doctor_json(capsys)
    assert code == 0
    cuda = rows(report)["ort CUDAExecutionProvider"]
    assert (cuda["status"], cuda["loads"], cuda["session_providers"]) == ("fail", False, ["CPUExecutionProvider"])
    assert cuda["detail"] == "listed but does not load: the session fell back to CPUExecutionProvider"
    # asked for onnxruntime on a GPU: listed is not enough, one of the GPU providers must load
    requested = doctor.requested_check("onnxruntime", "cuda:0", ["cuda:0"], ["CPUExecutionProvider"])
    assert requested.status == "fail" and requested.facts["usable"] is False
    assert requested.detail.startswith("no CUDA or TensorRT execution provider of ONNX Runtime loads on cuda:0")


@pytest.mark.skipif(TENSORRT_USABLE, reason="TensorRT and a GPU are present: the real build runs")
def test_build_engine_without_tensorrt_or_gpu_is_not_tried(capsys):
    code, report, _ = doctor_json(capsys, "--build-engine")
    assert code == 0
    row = rows(report)["tensorrt engine cuda"]
    assert (row["status"], row["built"]) == ("absent", False) and row["detail"].startswith("not tried: ")


@pytest.fixture
def fake_trt_on_fake_gpu(monkeypatch, tmp_path):
    fake_tensorrt.reset()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(doctor, "cuda_available", lambda: True)
    monkeypatch.setattr(tensorrt_build, "current_gpu", lambda device="cuda": ("NVIDIA Fake GPU", "8.9"))
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path / "home"))
    return fake_tensorrt


def test_build_engine_uses_the_strongly_typed_builder(fake_trt_on_fake_gpu):
    row = doctor.engine_build_check("cuda:0")
    assert (row.check, row.status, row.facts["built"]) == ("tensorrt engine cuda:0", "ok", True), row.detail
    record = fake_trt_on_fake_gpu.RECORD
    assert record["network_flags"] == 1 << fake_trt_on_fake_gpu.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert record["parsed_sha256"]  # the tiny graph went through the real ONNX parser call


def test_build_engine_failure_is_one_line(fake_trt_on_fake_gpu):
    fake_trt_on_fake_gpu.KNOBS["build_fails"] = True
    row = doctor.engine_build_check("cuda")
    assert row.status == "fail" and "\n" not in row.detail
    assert row.detail.startswith("tiny engine does not build: VLTSegError: TensorRT failed to build an engine")


def test_tensorrt_version_outside_the_supported_range_fails(fake_trt_on_fake_gpu, monkeypatch):
    assert doctor.tensorrt_checks("13.0")[0].status == "ok"
    monkeypatch.setattr(fake_trt_on_fake_gpu, "__version__", "9.2.0")
    row = doctor.tensorrt_checks("13.0")[0]
    assert row.status == "fail" and row.facts["supported"] is False
    assert "expected TensorRT 10.0 to 11.x" in row.detail and "pip install 'tensorrt-cu13>=10.0,<12'" in row.detail


def test_install_command_follows_the_cuda_major_and_jetson():
    assert doctor.tensorrt_install_command("12.8", jetson=False) == "pip install 'tensorrt-cu12>=10.0,<12'"
    assert doctor.tensorrt_install_command("13.0", jetson=False) == "pip install 'tensorrt-cu13>=10.0,<12'"
    assert "--system-site-packages" in doctor.tensorrt_install_command("12.6", jetson=True)
    assert "CPU-only" in doctor.tensorrt_install_command(None, jetson=False)


def test_gpu_kernel_compatibility_of_a_torch_build():
    assert doctor._torch_has_kernels((8, 6), ["sm_80"])  # same major, newer minor
    assert not doctor._torch_has_kernels((12, 0), ["sm_80", "sm_90"])  # a new major needs its own code or PTX
    assert doctor._torch_has_kernels((12, 0), ["sm_80", "compute_90"])  # PTX is compiled for newer GPUs
    assert doctor._torch_has_kernels((9, 0), ["sm_90a"]) and not doctor._torch_has_kernels((10, 0), ["sm_90a"])
    assert doctor._torch_has_kernels((8, 7), ["sm_87", "sm_120"])



def test_tensorrt_extra_is_the_install_command_for_cuda_13_and_not_in_all(repo_root, monkeypatch):
    """`.[tensorrt]` pins what doctor tells a CUDA 13 torch to install, and `.[all]` (what ./run.sh installs on
    machines without a GPU) does not pull it: setup.py run with a `setuptools` whose setup() keeps its arguments."""
    import runpy
    import types

    captured = {}
    monkeypatch.setitem(sys.modules, "setuptools", types.SimpleNamespace(
        setup=lambda **kwargs: captured.update(kwargs), find_packages=lambda **kwargs: []))
    monkeypatch.chdir(repo_root)
    runpy.run_path(str(repo_root / "setup.py"))
    extras = captured["extras_require"]
    assert extras["tensorrt"] == [doctor.tensorrt_install_command("13.0", jetson=False).split("'")[1]]
    assert not any(req.startswith("tensorrt") for req in extras["all"]), extras["all"]


def test_onnxruntime_and_onnxruntime_gpu_both_installed_is_a_warning(monkeypatch):
    """Both distributions install the one `onnxruntime` module: whichever came last decides, often the CPU one."""
    monkeypatch.setattr(doctor, "_distribution_version",
                        lambda name: "1.32.0" if name in ("onnxruntime", "onnxruntime-gpu") else None)
    row = doctor.onnxruntime_checks(0)[0][0]
    assert (row.check, row.status, row.facts["distributions"]) == ("onnxruntime", "warn",
                                                                    ["onnxruntime-gpu", "onnxruntime"])
    assert "the last installed wins" in row.detail
