"""``edgecl analyze-kernels``: the knowledge-intensity probe behind CsKO's center finding.

For each probed depth (a residual block; default the last block of every stage), the
pretrained backbone learns the config's first task with only some kernel elements of that
block's 3x3 convs trainable, plus a linear head; the rest of the network is frozen, with
BatchNorm in eval mode. Variants:

- ``head``: the head only (the floor);
- ``center``: the center tap ``[1, 1]`` of every 3x3 kernel of the block (what CsKO trains);
- ``offcenter``: one off-center tap, ``[0, 0]`` (same number of trainable weights);
- ``full``: the whole 3x3 kernels (the ceiling).

Each variant is edgecl's finetune (``trainable: head``) with the chosen elements unfrozen
and their gradient masked to the chosen taps, trained with the config's train/optim blocks
(no weight decay reaches a masked element: its gradient is zero and so is its update under
SGD and Adam without decay; decay is refused). The probe reports the test accuracy of each
variant and the share of the head-to-full gap it recovers:
``(acc_variant - acc_head) / (acc_full - acc_head)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecl.config import MethodSpec, RunConfig
from edgecl.errors import ConfigError
from edgecl.io import atomic_write_text
from edgecl.runner.build import build_backbone, build_scenario, resolve_device, setup_method
from edgecl.runner.loop import TrainingLoop

VARIANTS = ("head", "center", "offcenter", "full")
TAPS = {"center": (1, 1), "offcenter": (0, 0)}


@dataclass
class KernelProbe:
    blocks: list[str]
    accuracy: dict[str, dict[str, float]]  # block -> variant -> test accuracy
    recovered: dict[str, dict[str, float | None]]  # block -> center/offcenter -> share
    trainable: dict[str, dict[str, int]]  # block -> variant -> trainable conv elements
    details: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = ["block | head | center | off-center | full | center recovers | off recovers"]
        for b in self.blocks:
            a, r = self.accuracy[b], self.recovered[b]
            share = ["-" if r[k] is None else f"{r[k]:.2f}" for k in ("center", "offcenter")]
            lines.append(f"{b} | {a['head']:.3f} | {a['center']:.3f} | {a['offcenter']:.3f} | "
                         f"{a['full']:.3f} | {share[0]} | {share[1]}")
        return "\n".join(lines)


def default_blocks(backbone: nn.Module) -> list[str]:
    """The last residual block (a module with conv1/conv2) of every stage."""
    stages = getattr(backbone, "stage_names", ())
    blocks = []
    for stage in stages:
        module = getattr(backbone, stage)
        if isinstance(module, nn.Sequential) and len(module) and hasattr(module[-1], "conv1"):
            blocks.append(f"{stage}.{len(module) - 1}")
    if not blocks:
        raise ConfigError("analyze-kernels needs a CNN backbone with residual stages")
    return blocks


def _block_convs(backbone: nn.Module, block: str) -> list[nn.Conv2d]:
    try:
        module = backbone.get_submodule(block)
    except AttributeError as exc:
        raise ConfigError(f"analyze-kernels: no block {block!r} in the backbone") from exc
    convs = [m for m in module.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if not convs:
        raise ConfigError(f"analyze-kernels: block {block!r} has no 3x3 conv")
    return convs


def _unfreeze(convs: list[nn.Conv2d], variant: str) -> int:
    """Make the variant's kernel elements trainable; returns how many."""
    if variant == "head":
        return 0
    count = 0
    for conv in convs:
        conv.weight.requires_grad_(True)
        if variant == "full":
            count += conv.weight.numel()
            continue
        mask = torch.zeros_like(conv.weight)
        mask[:, :, TAPS[variant][0], TAPS[variant][1]] = 1
        conv.weight.register_hook(lambda g, m=mask: g * m)
        count += int(mask.sum())
    return count


def _accuracy(setup: Any, eval_batch: int = 256) -> float:
    task = setup.scenario.tasks[0]
    classes = torch.as_tensor(task.classes)
    correct, idx = 0, task.test_indices
    for start in range(0, len(idx), eval_batch):
        chunk = idx[start:start + eval_batch]
        x = setup.eval_tf(torch.from_numpy(setup.scenario.test.images[chunk])).to(setup.device)
        pred = classes[setup.method.predict(x)[:, classes].argmax(1).cpu()]
        correct += int((pred == torch.from_numpy(setup.scenario.test.labels[chunk])).sum())
    return correct / max(1, len(idx))


def analyze_kernels(cfg: RunConfig, blocks: list[str] | None = None) -> KernelProbe:
    """Train every (block, variant) on the config's first task; see the module docstring."""
    if cfg.optim.weight_decay:
        raise ConfigError("analyze-kernels: set optim.weight_decay: 0 (decay would move the "
                          "masked kernel elements)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scenario = build_scenario(cfg)
    bundle = build_backbone(cfg)
    blocks = blocks or default_blocks(bundle.module)
    spec = MethodSpec(name="finetune", trainable="head")
    accuracy: dict[str, dict[str, float]] = {}
    trainable: dict[str, dict[str, int]] = {}
    head_acc: float | None = None
    for block in blocks:
        accuracy[block], trainable[block] = {}, {}
        for variant in VARIANTS:
            if variant == "head" and head_acc is not None:  # the same run for every block
                accuracy[block]["head"], trainable[block]["head"] = head_acc, 0
                continue
            setup = setup_method(cfg, spec, scenario, bundle, resolve_device(cfg.device))
            n = _unfreeze(_block_convs(setup.backbone, block), variant)
            loop = TrainingLoop(setup)
            with loop.meter.active():
                loop.train_task(0)
            accuracy[block][variant], trainable[block][variant] = _accuracy(setup), n
            if variant == "head":
                head_acc = accuracy[block]["head"]
    recovered: dict[str, dict[str, float | None]] = {}
    for block in blocks:
        a = accuracy[block]
        gap = a["full"] - a["head"]
        recovered[block] = {k: (a[k] - a["head"]) / gap if gap > 0 else None
                            for k in ("center", "offcenter")}
    return KernelProbe(blocks, accuracy, recovered, trainable, details={
        "backbone": cfg.backbone.name, "weights": cfg.backbone.weights or "registry default",
        "scenario": scenario.name, "task0_classes": len(scenario.tasks[0].classes),
        "train_images": len(scenario.tasks[0].train_indices),
        "test_images": len(scenario.tasks[0].test_indices),
        "epochs": cfg.train.epochs, "optim": cfg.optim.model_dump(mode="json"),
    })


def write_probe(probe: KernelProbe, out: Path) -> Path:
    path = out / "kernel_probe.json"
    atomic_write_text(path, json.dumps(asdict(probe), indent=1))
    return path
