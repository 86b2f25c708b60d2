"""ONNX export (dynamo exporter; fixed or dynamic H/W), the metadata graphs carry, and what names a graph."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, TypeVar

import torch

from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)

# TensorRT 10's ONNX parser covers opsets 9..20; 18 is what the dynamo exporter emits natively and has
# LayerNormalization (17+), which TensorRT maps to its normalization layer (kept in fp32 under FP16 builds).
OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAMES = ("probs", "labels", "confidence")
T = TypeVar("T")


class ExportWrapper(torch.nn.Module):
    """The exported graph: raw RGB 0..255 in, the model's class scores out (output `probs`; unnormalised for
    Mask2Former, docs/ARCHITECTURE.md); optionally also argmax labels (int32) and the confidence (the argmax's
    share of the pixel's scores, as the predictor computes it), so a deployment at the network resolution can fetch
    (N,H,W) results instead of copying (N,C,H,W) back from the GPU."""

    def __init__(self, model: torch.nn.Module, deploy_outputs: bool = False):
        super().__init__()
        self.model = model
        self.deploy_outputs = deploy_outputs

    def forward(self, images: torch.Tensor):
        probs = self.model(images)
        if not self.deploy_outputs:
            return probs
        best, labels = probs.max(dim=1)
        return probs, labels.to(torch.int32), best / probs.sum(dim=1).clamp_min(1e-12)


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VLTSegError(f"size '{text}' is not HEIGHTxWIDTH (expected e.g. 512x1024)") from None
    if h <= 0 or w <= 0:
        raise VLTSegError(f"size '{text}' must be positive (expected e.g. 512x1024)")
    return h, w


def default_size(preset: dict, traced: list[int] | tuple[int, int] | None = None) -> tuple[int, int]:
    """The size the predictor feeds the network (slide: test.crop_size; whole: test.size), else the size a graph
    was traced at, else the training crop, else 512x512: what exports trace at and engines optimise for."""
    test = preset.get("test") or {}
    train = preset.get("train") or {}
    return tuple(test.get("crop_size") or test.get("size") or traced or train.get("crop_size") or (512, 512))


def export_onnx(model: torch.nn.Module, out: Path, size: tuple[int, int], dynamic: bool = False,
                deploy_outputs: bool = False, opset: int = OPSET) -> Path:
    """Export `model` to `out` (one self-contained file, written atomically). `size` is the traced example size;
    with `dynamic` the batch, height and width axes stay symbolic."""
    model = model.eval().cpu()
    wrapper = ExportWrapper(model, deploy_outputs).eval()
    # Batch 2 when dynamic: torch.export specialises dims whose example value is 0 or 1.
    shape = (2 if dynamic else 1, 3, *size)
    example = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float()
    names = list(OUTPUT_NAMES if deploy_outputs else OUTPUT_NAMES[:1])
    dynamic_shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        dynamic_shapes = {"images": {0: auto, 2: auto, 3: auto}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    log.info("exporting ONNX (opset %d, %s %dx%d) to %s", opset, "dynamic" if dynamic else "fixed", *size, out)
    try:
        with torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=names,
                                        dynamic_shapes=dynamic_shapes, external_data=False)
        program.save(str(tmp), external_data=False)
        _write_metadata(tmp, model, dynamic, size)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def export_checked(model: torch.nn.Module, out: Path, size: tuple[int, int], check: Callable[[Path], T],
                   dynamic: bool = False, deploy_outputs: bool = False) -> T:
    """Export to a temp file beside `out`, run `check` on it, and only then move it to `out`: a graph that failed
    its checks is never left where the next run or a cache lookup would take it for a good one."""
    tmp = out.with_name(f".{out.stem}.unchecked{os.getpid()}.onnx")
    try:
        export_onnx(model, tmp, size, dynamic=dynamic, deploy_outputs=deploy_outputs)
        try:
            result = check(tmp)
        except VLTSegError as exc:
            raise VLTSegError(f"{exc}; {out} not written") from exc
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _write_metadata(path: Path, model: torch.nn.Module, dynamic: bool, size: tuple[int, int]) -> None:
    """Preset, class table and export settings travel inside the graph so an .onnx alone is a usable model."""
    import onnx

    proto = onnx.load(str(path))
    meta = {"vltseg.preset": json.dumps(getattr(model, "preset", {}), sort_keys=True),
            "vltseg.class_table": str(getattr(model, "class_table", "cityscapes")),
            "vltseg.num_classes": str(int(getattr(model, "num_classes", 0))),
            "vltseg.dynamic": json.dumps(dynamic), "vltseg.export_size": json.dumps(list(size))}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def graph_metadata(path: Path) -> dict:
    """Preset / class table stored in an exported ONNX graph, or in the manifest beside a TensorRT engine."""
    if path.suffix.lower() != ".onnx":
        from vltseg_core.export.engine_cache import read_manifest

        return (read_manifest(path) or {}).get("metadata", {})
    import onnx

    if not path.is_file():
        raise VLTSegError(f"ONNX file not found: {path} (expected a graph from `vltseg export onnx`)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VLTSegError(f"{path} is not a readable ONNX file ({type(exc).__name__}; "
                          "expected an exported graph)") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    return {"preset": json.loads(props.get("vltseg.preset", "{}")),
            "class_table": props.get("vltseg.class_table", "cityscapes"),
            "num_classes": int(props.get("vltseg.num_classes", "0") or 0),
            "dynamic": json.loads(props.get("vltseg.dynamic", "false")),
            "export_size": json.loads(props.get("vltseg.export_size", "null"))}


def module_digest(model: torch.nn.Module) -> str:
    """sha256 over the preset and every parameter/buffer: names a model independent of where it came from."""
    digest = hashlib.sha256(json.dumps(getattr(model, "preset", {}), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def graph_code_digest() -> str:
    """sha256 over what turns weights into a graph: the model and exporter sources and the torch version."""
    here = Path(__file__).resolve()
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(here.parents[1].glob("models/*.py")) + [here]:
        digest.update(source.read_bytes())
    return digest.hexdigest()
