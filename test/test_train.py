"""Training on real CamVid frames with the tiny preset: the loss goes down, a resumed run is bit-identical to a
straight one, the feature-cache path works, and two processes train together through torchrun (gloo)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vltseg_core.config_files import known_configs
from vltseg_core.data.datasets import DATASETS, build_dataset
from vltseg_core.data.transforms import TrainTransform
from vltseg_core.errors import VLTSegError
from vltseg_core.evaluation import evaluate_dataset
from vltseg_core.models import load_preset
from vltseg_core.predictor import load_predictor
from vltseg_core.train.optim import build_optimizer, build_scheduler

try:  # the train extra's scipy: without it these tests are skipped, while the module still imports (launch_testing's
    # pytest plugin, i.e. colcon test on a ROS 2 install, imports every test module of the folder: one failing import
    # would stop them all)
    from vltseg_core.train.losses import build_loss
    from vltseg_core.train.trainer import Trainer, load_experiment
except ModuleNotFoundError as missing:
    if missing.name != "scipy":
        raise
    pytestmark = pytest.mark.skip(reason="scipy (train extra) not installed")

FRAMES = 4


@pytest.fixture(scope="module")
def camvid_mini(camvid_root, tmp_path_factory) -> Path:
    """A CamVid root whose 'mini' split lists the first real training frames (links to the real files)."""
    root = tmp_path_factory.mktemp("camvid_mini")
    for folder in ("train", "trainannot"):
        (root / folder).symlink_to(camvid_root / folder)
    lines = (camvid_root / "train.txt").read_text().splitlines()[:FRAMES]
    (root / "mini.txt").write_text("\n".join(" ".join(Path(p).parent.name + "/" + Path(p).name for p in line.split())
                                             for line in lines) + "\n")
    return root


def _config(tmp_path: Path, root: Path, **train) -> Path:
    cfg = {
        "name": "tiny-camvid",
        "model": "tiny-test",
        "data": {"train": {"kind": "camvid", "root": str(root), "split": "mini"},
                 "transform": {"scale": [480, 360], "ratio_range": [0.5, 1.0], "crop_size": [96, 128]}},
        "train": {"iterations": 4, "batch_size": 2, "checkpoint_interval": 2, "log_interval": 1, **train},
        "optimizer": {"lr": 1.0e-3, "grad_clip": 1.0},
        "schedule": {"constant_iterations": 2},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_short_real_training_lowers_the_loss(tmp_path, camvid_mini):
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["train.iterations=24", "train.checkpoint_interval=24",
                                                           "data.transform.photometric=false"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    first, last = trainer.history[:4], trainer.history[-4:]
    assert sum(last) / 4 < 0.8 * sum(first) / 4, trainer.history
    assert (tmp_path / "run" / "final.safetensors").is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_bf16_training_runs_in_bfloat16(tmp_path, camvid_mini):
    cfg = load_experiment(_config(tmp_path, camvid_mini, precision="bf16", iterations=2, checkpoint_interval=2))
    trainer = Trainer(cfg, tmp_path / "bf16")
    seen = []
    hook = trainer.model.head.register_forward_hook(lambda m, i, o: seen.append(
        next(v for v in (o.values() if isinstance(o, dict) else [o]) if torch.is_tensor(v)).dtype))
    trainer.run()
    hook.remove()
    assert torch.bfloat16 in seen  # autocast really ran the head in bf16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    assert all(torch.isfinite(torch.tensor(trainer.history)))


def test_resume_is_exact(tmp_path, camvid_mini):
    cfg_path = _config(tmp_path, camvid_mini)
    straight = Trainer(load_experiment(cfg_path), tmp_path / "straight")
    straight.run()  # 4 iterations, checkpoints at 2 and 4

    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "iter_0000002.pth", resumed_dir)
    (resumed_dir / "latest.txt").write_text("iter_0000002.pth\n")
    resumed = Trainer(load_experiment(cfg_path), tmp_path / "resumed", resume=True)
    assert resumed.iteration == 2
    resumed.run()

    assert resumed.history == straight.history[2:]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, camvid_mini):
    with pytest.raises(VLTSegError, match="no checkpoint"):
        Trainer(load_experiment(_config(tmp_path, camvid_mini)), tmp_path / "empty", resume=True)


def test_bad_config_is_a_clear_error(tmp_path, camvid_mini):
    path = _config(tmp_path, camvid_mini)
    with pytest.raises(VLTSegError, match="unknown train option"):
        load_experiment(path, ["train.iters=5"])
    with pytest.raises(VLTSegError, match="not found"):
        load_experiment("no-such-experiment")


def test_validation_and_checkpoint_use_the_experiment_test_protocol(tmp_path, camvid_mini):
    """The experiment's `test:` block (over the preset's) is what training-time validation runs and what the final
    checkpoint's sidecar carries; a bad protocol fails when the config loads, not after training."""
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["test={mode: slide, crop_size: [64, 64], stride: [48, 48]}",
                                                           "train.iterations=1"])
    trainer = Trainer(cfg, tmp_path / "protocol")
    settings = trainer._val_predictor().settings
    assert (settings.mode, settings.crop_size, settings.stride) == ("slide", (64, 64), (48, 48))
    trainer.run()
    sidecar = json.loads((tmp_path / "protocol" / "final.json").read_text())
    assert sidecar["preset"]["test"] == {"mode": "slide", "crop_size": [64, 64], "stride": [48, 48]}
    with pytest.raises(VLTSegError, match="unknown test option"):
        load_experiment(_config(tmp_path, camvid_mini), ["test.window=512"])
    with pytest.raises(VLTSegError, match="test.stride"):
        load_experiment(_config(tmp_path, camvid_mini), ["test.stride=[0, 0]"])


def test_partial_fine_tuning_trains_only_the_last_blocks(tmp_path, camvid_mini):
    """trainable_blocks: 1 with a frozen backbone: the last block, the neck and the head change, nothing else."""
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["train.freeze_backbone=true", "train.trainable_blocks=1",
                                                           "train.iterations=2"])
    trainer = Trainer(cfg, tmp_path / "partial")
    last = len(trainer.model.backbone.vit.blocks) - 1
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    backbone = {k for k in changed if k.startswith("backbone.")}
    assert all(k.startswith(f"backbone.vit.blocks.{last}.") for k in backbone), sorted(backbone)
    assert {f"backbone.vit.blocks.{last}.attn.qkv.weight", f"backbone.vit.blocks.{last}.mlp.fc2.weight"} <= backbone
    assert any(k.startswith("neck.") for k in changed) and any(k.startswith("head.") for k in changed)


def test_frozen_blocks_stay_in_eval_mode_under_partial_fine_tuning(tmp_path, camvid_mini):
    """With drop-path on and trainable_blocks: 1, only the last block runs in training mode: drop-path in a frozen
    block would change the features it was frozen for."""
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["train.freeze_backbone=true", "train.trainable_blocks=1",
                                                           "model_overrides={backbone: {drop_path_rate: 0.3}}"])
    trainer = Trainer(cfg, tmp_path / "modes")
    trainer.step_module.train()
    blocks = trainer.model.backbone.vit.blocks
    assert [b.training for b in blocks] == [False] * (len(blocks) - 1) + [True]
    assert all(m.training for m in blocks[-1].modules())
    assert not any(m.training for b in blocks[:-1] for m in b.modules())
    assert not trainer.model.backbone.vit.patch_embed.training
    assert trainer.model.neck.training and trainer.model.head.training


@pytest.mark.parametrize("overrides, match", [
    (["train.trainable_blocks=2"], r"train.trainable_blocks is 2 .*expected 0, or with freeze_backbone: true"),
    (["train.freeze_backbone=true", "train.trainable_blocks=-1"], r"trainable_blocks is -1"),
    (["train.freeze_backbone=true", "train.feature_cache=true", "train.trainable_blocks=1"],
     r"trainable_blocks 1 .* needs train.feature_cache: false"),
])
def test_bad_trainable_blocks_are_one_error(tmp_path, camvid_mini, overrides, match):
    with pytest.raises(VLTSegError, match=match):
        load_experiment(_config(tmp_path, camvid_mini), overrides)


def test_more_trainable_blocks_than_the_backbone_has_is_one_error(tmp_path, camvid_mini):
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["train.freeze_backbone=true", "train.trainable_blocks=99"])
    with pytest.raises(VLTSegError, match=r"trainable_blocks is 99 but the backbone has \d+ blocks"):
        Trainer(cfg, tmp_path / "run")


def test_lora_trains_only_adapters_and_the_final_checkpoint_is_the_merged_plain_model(tmp_path, camvid_mini):
    """lora_rank: 2 with a frozen backbone: only the adapters, the neck and the head change; the final checkpoint
    is a plain model of the preset (adapters folded in) that predicts what the trained model does; a resumed run
    rebuilds the adapters and continues bit-identically."""
    from vltseg_core.checkpoint import load_checkpoint

    overrides = ["train.freeze_backbone=true", "train.lora_rank=2", "train.lora_alpha=4", "train.iterations=4"]
    cfg = load_experiment(_config(tmp_path, camvid_mini), overrides)
    trainer = Trainer(cfg, tmp_path / "lora")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    backbone = {k for k in changed if k.startswith("backbone.")}
    assert backbone and all(".lora_" in k for k in backbone), sorted(backbone)
    assert any(k.startswith("neck.") for k in changed) and any(k.startswith("head.") for k in changed)

    final = load_checkpoint(tmp_path / "lora" / "final.safetensors").eval()
    assert not any(".lora_" in k for k in final.state_dict())
    images = torch.from_numpy(build_dataset("camvid", camvid_mini, "mini")[0].image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        torch.testing.assert_close(final(images[..., :112, :168]), trainer.model.eval()(images[..., :112, :168]),
                                   atol=1e-5, rtol=1e-4)
    resumed = Trainer(cfg, tmp_path / "lora", resume=True)
    assert resumed.iteration == 4
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in trainer.model.state_dict().items())


def test_init_from_starts_from_a_whole_model_of_the_preset(tmp_path, camvid_mini):
    """init_from: a later stage (e.g. adapters over a linear-probed head) starts from an earlier run's weights;
    a checkpoint of another architecture is one error naming the file."""
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["train.iterations=1"])
    Trainer(cfg, tmp_path / "stage1").run()
    first = tmp_path / "stage1" / "final.safetensors"
    cfg = load_experiment(_config(tmp_path, camvid_mini), [f"init_from={first}", "train.freeze_backbone=true",
                                                           "train.lora_rank=2"])
    from safetensors.torch import load_file
    from vltseg_core.train.lora import merged_state_dict

    state = merged_state_dict(Trainer(cfg, tmp_path / "stage2").model)  # adapters start at zero
    assert all(torch.equal(state[k], v) for k, v in load_file(str(first)).items())
    cfg = load_experiment(_config(tmp_path, camvid_mini), ["init_from=" + str(first), "model=demo"])
    with pytest.raises(VLTSegError, match=r"init_from .*final.safetensors does not match the model architecture"):
        Trainer(cfg, tmp_path / "stage3")


@pytest.mark.parametrize("overrides, match", [
    (["train.lora_rank=4"], r"train.lora_rank is 4 .*expected 0, or with freeze_backbone: true"),
    (["train.freeze_backbone=true", "train.lora_rank=-1"], r"lora_rank is -1"),
    (["train.freeze_backbone=true", "train.feature_cache=true", "train.lora_rank=4"],
     r"lora_rank 4 .* needs train.feature_cache: false"),
])
def test_bad_lora_options_are_one_error(tmp_path, camvid_mini, overrides, match):
    with pytest.raises(VLTSegError, match=match):
        load_experiment(_config(tmp_path, camvid_mini), overrides)


def test_frozen_backbone_feature_cache(tmp_path, camvid_mini):
    """Augmented views are cached once per (image, view): each is the transform drawn with the generator of
    (seed, view, image), training reads them and never changes the backbone, and a rerun, more views, a lost view or
    a subset of the images compute only what is missing."""
    overrides = ["train.freeze_backbone=true", "train.feature_cache=true", "train.iterations=3",
                 "train.eval_interval=3", "data.cache_views=2",
                 "data.val={kind: camvid, root: %s, split: mini}" % camvid_mini]
    cfg = load_experiment(_config(tmp_path, camvid_mini), overrides)
    trainer = Trainer(cfg, tmp_path / "cached")
    backbone_before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    last = trainer.run()
    assert len(trainer.dataset) == 2 * FRAMES  # two augmented views of each frame
    assert 0.0 <= last["val_miou"] <= 100.0
    assert all(torch.equal(v, trainer.model.backbone.state_dict()[k]) for k, v in backbone_before.items())

    # view 1 of frame 0 is the transform drawn with default_rng((seed, 1, image key)) through the backbone
    cache, model = trainer.dataset, trainer.model
    sample = build_dataset("camvid", camvid_mini, "mini").load(0)
    transform = TrainTransform.from_config(cfg["data"]["transform"])
    image, label = transform(sample.image, sample.label, np.random.default_rng((0, 1, int(cache.keys[0][:15], 16))))
    with torch.inference_mode():
        expected = model.backbone(model._normalise_and_pad(torch.from_numpy(image).permute(2, 0, 1)[None].float()))
    feats, padded = cache[1]
    assert torch.equal(feats[0], expected[0][0].to(torch.float16).float())
    assert torch.equal(padded[:label.shape[0], :label.shape[1]], torch.from_numpy(label).long())
    assert not torch.equal(cache[0][0][0], feats[0])  # two views are two draws

    def views() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "cached" / "feature_cache").glob("*/*.labels.npy")}

    before = views()
    assert len(before) == 2 * FRAMES
    Trainer(cfg, tmp_path / "cached")
    assert views() == before  # reused, not recomputed
    lost = next(iter(before))
    lost.unlink()  # an interrupted run: this view never finished
    more = Trainer(load_experiment(_config(tmp_path, camvid_mini), overrides + ["data.cache_views=3"]),
                   tmp_path / "cached")
    after = views()
    assert len(more.dataset) == 3 * FRAMES and len(after) == 3 * FRAMES
    assert {p: t for p, t in after.items() if p in before and p != lost} == {p: t for p, t in before.items() if p != lost}
    subset = Trainer(load_experiment(_config(tmp_path, camvid_mini), overrides + [
        "data.train={kind: camvid, root: %s, split: mini, exclude: ['%s']}" % (camvid_mini, sample.name.split("/")[-1] + ".png")]),
        tmp_path / "cached")
    assert len(subset.dataset) == 2 * (FRAMES - 1) and views() == after


def test_two_process_ddp_step(tmp_path, camvid_mini):
    cfg_path = _config(tmp_path, camvid_mini)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vltseg_core.cli", "train", str(cfg_path), "--work-dir", str(tmp_path / "ddp"),
           "--set", "train.iterations=2", "--set", "train.batch_size=4", "--set", "train.eval_interval=2",
           "--set", "data.val={kind: camvid, root: %s, split: mini}" % camvid_mini]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "iter_0000002.pth", weights_only=True)
    assert state["iteration"] == 2
    assert len(state["rng"]) == 2  # one RNG state per rank, for an exact multi-process resume
    final = tmp_path / "ddp" / "final.safetensors"
    # validation was split across the two ranks and summed: it equals `vltseg eval` of the final weights
    val_miou = json.loads(final.with_suffix(".json").read_text())["metrics"]["val_miou"]
    report = evaluate_dataset(load_predictor(str(final)), build_dataset("camvid", camvid_mini, "mini"))
    assert val_miou == pytest.approx(100.0 * report.confusion.miou(report.class_ids), abs=1e-6)


@pytest.mark.parametrize("name", known_configs("experiments"))
def test_every_shipped_experiment_is_a_valid_config(name):
    """Each paper experiment is a config file; every section of it is one the trainer accepts."""
    cfg = load_experiment(name)
    preset = load_preset(cfg["model"])
    for role in ("train", "val"):
        if role in cfg["data"]:
            assert cfg["data"][role]["kind"] in DATASETS
    TrainTransform.from_config(cfg["data"].get("transform", {}))
    build_loss(preset["head"]["type"], 19, cfg.get("loss"))
    build_scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg.get("optimizer")), cfg["schedule"])


def test_unknown_data_options_and_dataset_keys_are_one_error(tmp_path, camvid_mini):
    with pytest.raises(VLTSegError, match=r"unknown data option\(s\) \['cache_flips'\]"):
        load_experiment(_config(tmp_path, camvid_mini), ["data.cache_flips=true"])
    with pytest.raises(VLTSegError, match=r"unknown dataset key\(s\) \['sequence'\]"):
        load_experiment(_config(tmp_path, camvid_mini), [
            "data.train={kind: camvid, root: %s, split: mini, sequence: 0006R0}" % camvid_mini])
