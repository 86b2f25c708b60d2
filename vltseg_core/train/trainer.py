"""Iteration-based training from an experiment config (configs/experiments/*.yaml).

One process per device; under `torchrun` the processes form a DDP group through env:// (gloo on CPU, nccl on GPU)
and each takes its share of the global batch through a DistributedSampler. Checkpoints hold everything needed for
an exact resume: model, optimizer, scheduler, iteration, RNG states; the sampler position follows from the
iteration because batches are drawn from a per-epoch deterministic order (and augmentations are seeded by
(seed, epoch, index) in the dataset), so a resumed run continues with the very batches the straight run sees.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from vltseg_core.config_files import config_path
from vltseg_core.errors import VLTSegError
from vltseg_core.train.feature_cache import FeatureCache, build_feature_cache, pad_label
from vltseg_core.train.losses import build_loss
from vltseg_core.train.optim import OPTIMIZER_DEFAULTS, build_optimizer, build_scheduler, clip_gradients

TRAIN_DEFAULTS: dict[str, Any] = {
    "iterations": 20000, "batch_size": 8, "precision": "fp32", "seed": 0, "freeze_backbone": False,
    "trainable_blocks": 0, "lora_rank": 0, "lora_alpha": 16.0, "feature_cache": False, "checkpoint_interval": 1000,
    "eval_interval": 0, "log_interval": 10,
}
TOP_KEYS = {"name", "description", "model", "model_overrides", "num_classes", "backbone_weights", "init_from", "data",
            "train", "optimizer", "schedule", "loss", "test", "paper"}
DATA_KEYS = {"train", "val", "transform", "workers", "cache_views", "feature_cache_dir"}
DATA_SPEC_KEYS = {"kind", "root", "split", "include", "exclude"}
TEST_KEYS = {"mode", "size", "crop_size", "stride", "crops_per_batch", "min_confidence"}


# ------------------------------------------------------------------------------------------------ configuration

def load_experiment(name_or_path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """An experiment by name (configs/experiments/NAME.yaml) or path, with `key.sub=value` overrides (YAML values)."""
    path = config_path(name_or_path, "experiments", "experiment config")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise VLTSegError(f"experiment config {path} is not a YAML mapping")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VLTSegError(f"override '{item}' is not KEY.SUB=VALUE (e.g. train.iterations=100)")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise VLTSegError(f"override '{item}': '{part}' is not a section of {path}")
        node[leaf] = yaml.safe_load(value)
    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise VLTSegError(f"unknown top-level key(s) {unknown} in {path} (expected some of {sorted(TOP_KEYS)})")
    for key in ("model", "data"):
        if key not in cfg:
            raise VLTSegError(f"experiment config {path} lacks '{key}'")
    unknown = sorted(set(cfg["data"]) - DATA_KEYS)
    if unknown:
        raise VLTSegError(f"unknown data option(s) {unknown} in {path} (expected some of {sorted(DATA_KEYS)})")
    if "train" not in cfg["data"]:
        raise VLTSegError(f"experiment config {path} lacks data.train (expected {{kind, root, split}})")
    for role in ("train", "val"):
        unknown = sorted(set(cfg["data"].get(role) or {}) - DATA_SPEC_KEYS)
        if unknown:
            raise VLTSegError(f"unknown dataset key(s) {unknown} in data.{role} of {path} "
                              f"(expected some of {sorted(DATA_SPEC_KEYS)})")
    bad = sorted(set(cfg.get("train", {})) - set(TRAIN_DEFAULTS))
    if bad:
        raise VLTSegError(f"unknown train option(s) {bad} in {path} (expected some of {sorted(TRAIN_DEFAULTS)})")
    cfg["train"] = {**TRAIN_DEFAULTS, **cfg.get("train", {})}
    if cfg["train"]["precision"] not in ("fp32", "bf16"):
        raise VLTSegError(f"train.precision '{cfg['train']['precision']}' in {path} (expected fp32 or bf16)")
    if cfg["train"]["feature_cache"] and not cfg["train"]["freeze_backbone"]:
        raise VLTSegError(f"train.feature_cache needs train.freeze_backbone: true ({path})")
    blocks = cfg["train"]["trainable_blocks"]
    if not isinstance(blocks, int) or blocks < 0 or (blocks and not cfg["train"]["freeze_backbone"]):
        raise VLTSegError(f"train.trainable_blocks is {blocks!r} in {path} (expected 0, or with freeze_backbone: "
                          "true the number of last backbone blocks that still train)")
    if blocks and cfg["train"]["feature_cache"]:
        raise VLTSegError(f"train.trainable_blocks {blocks} in {path} needs train.feature_cache: false (the cache "
                          "holds the features of the whole frozen backbone)")
    rank = cfg["train"]["lora_rank"]
    if not isinstance(rank, int) or rank < 0 or (rank and not cfg["train"]["freeze_backbone"]):
        raise VLTSegError(f"train.lora_rank is {rank!r} in {path} (expected 0, or with freeze_backbone: true the "
                          "rank of the adapters on every backbone block's linear layers)")
    if rank and cfg["train"]["feature_cache"]:
        raise VLTSegError(f"train.lora_rank {rank} in {path} needs train.feature_cache: false (the adapters change "
                          "the backbone's features)")
    cfg["schedule"] = {**cfg.get("schedule", {}), "iterations": cfg["train"]["iterations"]}
    cfg.setdefault("name", path.stem)
    bad = sorted(set(cfg.get("test") or {}) - TEST_KEYS)
    if bad:
        raise VLTSegError(f"unknown test option(s) {bad} in {path} (expected some of {sorted(TEST_KEYS)})")
    from vltseg_core.predictor import InferenceSettings

    InferenceSettings.from_preset(resolved_preset(cfg))  # a bad protocol fails here, not after hours of training
    return cfg


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolved_preset(cfg: dict[str, Any]) -> dict[str, Any]:
    """The experiment's model: its preset with `model_overrides` merged in and the experiment's own `test:`
    protocol on top of the preset's. The trained model carries this preset (and so its checkpoint's sidecar), so
    training-time validation, `vltseg eval`, replay and export defaults all test the way the experiment says."""
    from vltseg_core.models import load_preset

    preset = _deep_merge(load_preset(cfg["model"]), cfg.get("model_overrides") or {})
    if cfg.get("test"):
        preset["test"] = {**(preset.get("test") or {}), **cfg["test"]}
    return preset


def resolved_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything a run of `cfg` uses, defaults filled in: model preset, data and transform, optimizer groups
    (lr, weight decay, parameter counts), schedule, loss weights, test protocol. Builds the model on the meta
    device (no memory, no weights, no datasets), so it is cheap enough for `vltseg train --print-config`."""
    import dataclasses
    import inspect

    from vltseg_core.data.transforms import TrainTransform
    from vltseg_core.models import build_model
    from vltseg_core.predictor import InferenceSettings
    from vltseg_core.train.losses import Mask2FormerLoss, PixelCrossEntropy
    from vltseg_core.train.optim import SCHEDULE_DEFAULTS, _merged, param_groups

    preset = resolved_preset(cfg)
    with torch.device("meta"):
        model = build_model(preset, cfg.get("num_classes"))
    freeze(model, cfg["train"])
    optimizer = _merged(cfg.get("optimizer"), OPTIMIZER_DEFAULTS, "optimizer")
    groups = [{"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"], "tensors": len(g["params"]),
               "parameters": sum(p.numel() for p in g["params"])} for g in param_groups(model, optimizer)]
    loss_cls = Mask2FormerLoss if preset["head"]["type"] == "mask2former" else PixelCrossEntropy
    loss = {k: v.default for k, v in inspect.signature(loss_cls).parameters.items()
            if v.default is not inspect.Parameter.empty}
    data = dict(cfg["data"])
    if cfg["train"]["feature_cache"] and data.get("transform") is None:
        data["transform"] = "none (feature cache of the untransformed frames)"
    else:
        data["transform"] = dataclasses.asdict(TrainTransform.from_config(data.get("transform", {})))
    resolved = {
        "name": cfg["name"], "paper": cfg.get("paper"), "model": preset, "num_classes": model.num_classes,
        "backbone_weights": cfg.get("backbone_weights"), "init_from": cfg.get("init_from"), "data": data,
        "train": cfg["train"],
        "optimizer": {**optimizer, "groups": groups},
        "schedule": _merged(cfg.get("schedule"), SCHEDULE_DEFAULTS, "schedule"),
        "loss": {"type": loss_cls.__name__, **loss, **(cfg.get("loss") or {})},
        "test": dataclasses.asdict(InferenceSettings.from_preset(preset)),
    }
    return _plain(resolved)


def _plain(value: Any) -> Any:
    """Tuples -> lists all the way down, so the result dumps as plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ distributed

class Dist:
    """This process's place in the (possibly single-process) DDP group started by torchrun."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ model + data

def build_training_model(cfg: dict[str, Any]) -> nn.Module:
    """The preset with its initial weights: the backbone's (`backbone_weights`: 'demo', a checkpoint path, or
    none), then, with `init_from`, a whole model of the same preset (e.g. the head a frozen-backbone stage
    trained, before its adapters train: linear probing, then fine-tuning)."""
    from vltseg_core.models import build_model

    model = build_model(resolved_preset(cfg), cfg.get("num_classes"))
    weights = cfg.get("backbone_weights")
    if weights == "demo":
        from vltseg_core.demo_backbone import load_demo_backbone_state

        model.backbone.vit.load_state_dict(load_demo_backbone_state())
    elif weights:
        from vltseg_core.checkpoint import load_backbone_weights

        load_backbone_weights(model, weights)
    if cfg.get("init_from"):
        from vltseg_core.checkpoint import load_state_dict_checked, read_weights

        load_state_dict_checked(model, read_weights(cfg["init_from"]), f"init_from {cfg['init_from']}")
    freeze(model, cfg["train"])
    return model


def freeze(model: nn.Module, train: dict[str, Any]) -> None:
    """freeze_backbone: the backbone does not train, except its last `trainable_blocks` blocks (partial
    fine-tuning: the frozen blocks below run without autograd, so only the top of the backbone costs a backward)
    or, with `lora_rank`, the low-rank adapters added to every block's linear layers (train/lora.py)."""
    if not train["freeze_backbone"]:
        return
    model.backbone.requires_grad_(False)
    blocks = model.backbone.vit.blocks
    if train["trainable_blocks"] > len(blocks):
        raise VLTSegError(f"train.trainable_blocks is {train['trainable_blocks']} but the backbone has {len(blocks)} "
                          "blocks")
    for block in blocks[len(blocks) - train["trainable_blocks"]:]:
        block.requires_grad_(True)
    if train["lora_rank"]:
        from vltseg_core.train.lora import add_lora

        add_lora(blocks, train["lora_rank"], float(train["lora_alpha"]))


class TrainStep(nn.Module):
    """Model + loss as one module, so DDP sees the whole training computation in `forward`."""

    def __init__(self, model: nn.Module, loss: nn.Module, from_features: bool):
        super().__init__()
        self.model, self.loss, self.from_features = model, loss, from_features

    def forward(self, inputs: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.from_features:
            outputs = self.model.forward_head(self.model.neck(inputs))
        else:
            outputs = self.model.forward_train(inputs)
        return self.loss(outputs, labels)

    def train(self, mode: bool = True) -> "TrainStep":
        """Frozen parts of the backbone stay in eval mode (no dropout / drop-path); with `trainable_blocks` only
        its last blocks train, everything below them (patch embedding, position dropout, lower blocks) does not."""
        super().train(mode)
        backbone = self.model.backbone
        if mode and not all(p.requires_grad for p in backbone.parameters()):
            backbone.eval()
            for block in backbone.vit.blocks:
                if any(p.requires_grad for p in block.parameters()):
                    block.train()
        return self


def _collate_images(divisor: int):
    def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = {s.image.shape for s in samples}
        if len(sizes) > 1:
            raise VLTSegError(f"training samples of different sizes {sorted(sizes)} in one batch "
                              "(expected a transform with a fixed crop_size)")
        images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
        labels = torch.from_numpy(np.stack([s.label for s in samples])).long()
        return images, pad_label(labels, divisor)
    return collate


def _collate_features(items: list) -> tuple[list[torch.Tensor], torch.Tensor]:
    feats = [torch.stack([it[0][i] for it in items]) for i in range(len(items[0][0]))]
    return feats, torch.stack([it[1] for it in items])


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ the trainer

class Trainer:
    def __init__(self, cfg: dict[str, Any], work_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.dist = Dist()
        tcfg = cfg["train"]
        self.iterations = int(tcfg["iterations"])
        if tcfg["batch_size"] % self.dist.world:
            raise VLTSegError(f"train.batch_size {tcfg['batch_size']} is not divisible by the {self.dist.world} "
                              "processes (expected a multiple of --nproc_per_node x nodes)")
        self.batch_per_rank = tcfg["batch_size"] // self.dist.world
        self.seed = int(tcfg["seed"])
        torch.manual_seed(self.seed + self.dist.rank)
        np.random.seed(self.seed + self.dist.rank)
        random.seed(self.seed + self.dist.rank)

        self.model = build_training_model(cfg).to(self.dist.device)
        head_type = self.model.preset["head"]["type"]
        loss = build_loss(head_type, self.model.num_classes, cfg.get("loss")).to(self.dist.device)
        self.dataset = self._train_data()
        self.step_module = TrainStep(self.model, loss, from_features=bool(tcfg["feature_cache"]))
        # find_unused_parameters: timm keeps e.g. the final norm, which multi-block features never use
        self.ddp = (nn.parallel.DistributedDataParallel(
            self.step_module, device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None,
            find_unused_parameters=True) if self.dist.world > 1 else self.step_module)
        self.optimizer = build_optimizer(self.model, cfg.get("optimizer"))
        self.scheduler = build_scheduler(self.optimizer, cfg.get("schedule"))
        self.grad_clip = {**OPTIMIZER_DEFAULTS, **(cfg.get("optimizer") or {})}["grad_clip"]
        self.iteration = 0
        self.history: list[float] = []  # this process's loss at each iteration of this run
        self.iters_per_epoch = len(self.dataset) // tcfg["batch_size"]
        if self.iters_per_epoch == 0:
            raise VLTSegError(f"the training set has {len(self.dataset)} samples, fewer than one batch of "
                              f"{tcfg['batch_size']} (train.batch_size)")
        self.val = self._val_data() if tcfg["eval_interval"] else None
        if resume:
            self.load(self.latest_checkpoint())

    # data ----------------------------------------------------------------------------------------------------
    def _build_dataset(self, spec: dict, transform=None):
        from vltseg_core.data.datasets import build_dataset

        return build_dataset(spec["kind"], spec["root"], spec.get("split"), transform=transform, seed=self.seed,
                             include=spec.get("include"), exclude=spec.get("exclude"))

    def _train_data(self):
        from vltseg_core.data.transforms import TrainTransform

        data = self.cfg["data"]
        if not self.cfg["train"]["feature_cache"]:
            return self._build_dataset(data["train"], TrainTransform.from_config(data.get("transform", {})))
        # cached views are drawn from data.transform when the experiment sets one, else untransformed frames
        transform = TrainTransform.from_config(data["transform"]) if data.get("transform") is not None else None
        root = Path(data.get("feature_cache_dir") or self.work_dir / "feature_cache")
        dataset = self._build_dataset(data["train"])

        def cache() -> FeatureCache:
            return build_feature_cache(self.model, dataset, root, views=int(data.get("cache_views", 1)),
                                       transform=transform, seed=self.seed, desc="caching backbone features (train)")
        built = cache() if self.dist.main else None
        self.dist.barrier()
        return built or cache()  # the other ranks find every image done by rank 0

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`: a DistributedSampler order seeded by (seed, epoch), cut into batches."""
        sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=self.dist.world,
                                                      rank=self.dist.rank, shuffle=True, seed=self.seed,
                                                      drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        n = self.batch_per_rank
        return [order[i:i + n] for i in range(0, self.iters_per_epoch * n, n)]

    def _loader(self, epoch: int, skip: int) -> torch.utils.data.DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        workers = int(self.cfg["data"].get("workers", 0))
        collate = _collate_features if isinstance(self.dataset, FeatureCache) else _collate_images(self.model.size_divisor)
        # own generator: creating a loader must not consume the global RNG (exact resume)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=self._epoch_batches(epoch)[skip:],
                                           num_workers=workers, collate_fn=collate,
                                           generator=torch.Generator().manual_seed(self.seed + epoch),
                                           persistent_workers=False)

    # checkpoints ---------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path:
        pointer = self.work_dir / "checkpoints" / "latest.txt"
        if not pointer.is_file():
            raise VLTSegError(f"--resume: no checkpoint in {self.work_dir / 'checkpoints'} (expected latest.txt "
                              "written by an earlier run with the same --work-dir)")
        return pointer.parent / pointer.read_text().strip()

    def save(self) -> Path:
        """Full training state of this run (rank 0 writes; every rank's RNG state is kept under its rank)."""
        rng = [None] * self.dist.world
        if self.dist.world > 1:
            dist.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        folder = self.work_dir / "checkpoints"
        path = folder / f"iter_{self.iteration:07d}.pth"
        if self.dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "iteration": self.iteration, "rng": rng,
                     "config": json.dumps(self.cfg)}
            torch.save(state, path.with_suffix(".part"))
            os.replace(path.with_suffix(".part"), path)
            (folder / "latest.txt").write_text(path.name + "\n")
        self.dist.barrier()
        return path

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.dist.device, weights_only=True)
        saved = json.loads(state["config"])
        if saved.get("model") != self.cfg.get("model") or saved["train"]["batch_size"] != self.cfg["train"]["batch_size"]:
            raise VLTSegError(f"{path} was written for model {saved.get('model')} / batch {saved['train']['batch_size']}"
                              f" (expected {self.cfg.get('model')} / {self.cfg['train']['batch_size']}); "
                              "use a new --work-dir for a different experiment")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        rng = state["rng"]
        if len(rng) != self.dist.world:
            raise VLTSegError(f"{path} was written by {len(rng)} processes, this run has {self.dist.world} "
                              "(resume with the same number of processes)")
        _set_rng_state(rng[self.dist.rank])

    # training ------------------------------------------------------------------------------------------------
    def train_step(self, inputs, labels) -> dict[str, float]:
        if isinstance(inputs, list):
            inputs = [x.to(self.dist.device, non_blocking=True) for x in inputs]
        else:
            inputs = inputs.to(self.dist.device, non_blocking=True)
        labels = labels.to(self.dist.device, non_blocking=True)
        bf16 = self.cfg["train"]["precision"] == "bf16"
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with autocast:
            losses = self.ddp(inputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = clip_gradients(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

    def run(self) -> dict[str, Any]:
        """Train up to the configured iteration count; returns the last logged losses (and val mIoU)."""
        tcfg = self.cfg["train"]
        writer = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
            writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        bar = tqdm(total=self.iterations, initial=self.iteration, desc=f"train {self.cfg['name']}",
                   unit="it", dynamic_ncols=True, disable=not self.dist.main)
        self.ddp.train()
        last: dict[str, Any] = {}
        while self.iteration < self.iterations:
            epoch, skip = divmod(self.iteration, self.iters_per_epoch)
            for inputs, labels in self._loader(epoch, skip):
                losses = self.train_step(inputs, labels)
                self.history.append(losses["loss"])
                if not math.isfinite(losses["loss"]):
                    raise VLTSegError(f"loss became {losses['loss']} at iteration {self.iteration} "
                                      "(lower optimizer.lr or use precision fp32)")
                bar.update(1)
                if self.iteration % tcfg["log_interval"] == 0 or self.iteration == self.iterations:
                    last = {k: self.dist.mean(v) for k, v in losses.items()}
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    if writer:
                        for k, v in last.items():
                            writer.add_scalar(f"train/{k}", v, self.iteration)
                        for group in self.optimizer.param_groups:
                            writer.add_scalar(f"lr/{group['name']}", group["lr"], self.iteration)
                if tcfg["eval_interval"] and (self.iteration % tcfg["eval_interval"] == 0
                                              or self.iteration == self.iterations):
                    last["val_miou"] = self.validate()
                    if writer:
                        writer.add_scalar("val/mIoU", last["val_miou"], self.iteration)
                    bar.write(f"iteration {self.iteration}: val mIoU {last['val_miou']:.2f}")
                    self.ddp.train()
                if self.iteration % tcfg["checkpoint_interval"] == 0 or self.iteration == self.iterations:
                    self.save()
                if self.iteration >= self.iterations:
                    break
        bar.close()
        if writer:
            writer.close()
        if self.dist.main:
            from vltseg_core.checkpoint import save_checkpoint

            model = self.model
            if tcfg["lora_rank"]:  # the adapters folded into the weights: a plain model of the preset
                from vltseg_core.models import build_model
                from vltseg_core.train.lora import merged_state_dict

                model = build_model(self.model.preset, self.model.num_classes)
                model.load_state_dict(merged_state_dict(self.model))
            final = save_checkpoint(model, self.work_dir / "final.safetensors", experiment=self.cfg["name"],
                                    iteration=self.iteration, metrics=last)
            bar.write(f"final model: {final}")
        return last

    def _val_data(self):
        spec = self.cfg["data"].get("val")
        if spec is None:
            raise VLTSegError("train.eval_interval is set but the experiment has no data.val ({kind, root, split})")
        return self._build_dataset(spec)

    @torch.no_grad()
    def validate(self) -> float:
        """mIoU (%) over data.val's class_ids, no TTA, with the preset's own test settings (whole or slide), so it
        is the figure `vltseg eval` gives for the same weights. Each rank takes every world-th image and the
        confusion matrices are summed, so all ranks do a share of the work and return the same value."""
        from vltseg_core.evaluation import ConfusionMatrix

        self.model.eval()
        dataset, predictor = self.val, self._val_predictor()
        cm = ConfusionMatrix(self.model.num_classes)
        indices = range(self.dist.rank, len(dataset), self.dist.world)
        for i in tqdm(indices, desc="val", unit="img", leave=False, dynamic_ncols=True, disable=not self.dist.main):
            sample = dataset.load(i)
            cm.update(predictor.predict(sample.image).labels, sample.label)
        if self.dist.world > 1:
            mat = torch.from_numpy(cm.mat).to(self.dist.device)
            dist.all_reduce(mat)
            cm.mat = mat.cpu().numpy()
        return 100.0 * cm.miou(dataset.class_ids)

    def _val_predictor(self):
        """The product's predictor around the model being trained (same resizing, sliding windows, argmax)."""
        from vltseg_core.backends.torch_backend import TorchBackend
        from vltseg_core.classes import load_class_table
        from vltseg_core.predictor import InferenceSettings, Predictor

        precision = "bf16" if self.cfg["train"]["precision"] == "bf16" else "fp32"
        backend = TorchBackend(self.model, device=str(self.dist.device), precision=precision, model_id="training")
        return Predictor(backend, load_class_table(self.model.class_table), InferenceSettings.from_preset(self.model.preset))


def train(config: str | Path, work_dir: str | Path, resume: bool = False, overrides: list[str] | None = None
          ) -> dict[str, Any]:
    cfg = load_experiment(config, overrides)
    trainer = Trainer(copy.deepcopy(cfg), work_dir, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
