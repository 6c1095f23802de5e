"""``edgecl pretrain``: train a backbone on a base set of classes, save weights to reuse.

The config's first task is the base set (``data.first_task_classes: 50`` gives CIFAR-100's
first 50 classes, CsKO's base session). The backbone (``backbone.name``/``backbone.weights``,
e.g. a CIFAR-10-pretrained ResNet or a random ``resnet18_cifar``) and a linear head train
with plain finetune through edgecl's training loop, with the config's ``train`` and
``optim`` blocks. Written, atomically: the backbone's state dict as ``.pth`` (loadable as
``backbone.weights=<file>``, with ``weights_only=True``), and ``<file>.json`` with the
classes, the accuracy on their test images, the training FLOPs and the file's sha256.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecl.config import MethodSpec, RunConfig
from edgecl.errors import ConfigError
from edgecl.io import atomic_write_bytes, atomic_write_text, sha256sum
from edgecl.runner.build import build_backbone, build_scenario, resolve_device, setup_method
from edgecl.runner.loop import TrainingLoop


def pretrain(cfg: RunConfig, out: Path, eval_batch: int = 256) -> dict[str, Any]:
    """Train the config's backbone on its first task and save it to ``out`` (.pth)."""
    if out.suffix not in (".pth", ".pt"):
        raise ConfigError(f"pretrain writes a .pth file; got {out}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scenario = build_scenario(cfg)
    bundle = build_backbone(cfg)
    if not any(isinstance(m, torch.nn.Conv2d) for m in bundle.module.modules()):
        raise ConfigError(f"pretrain trains CNN backbones; {cfg.backbone.name} has no conv")
    setup = setup_method(cfg, MethodSpec(name="finetune"), scenario, bundle,
                         resolve_device(cfg.device))
    loop = TrainingLoop(setup)
    with loop.meter.active():
        loop.train_task(0)
    task = scenario.tasks[0]
    method = setup.method
    correct, indices = 0, task.test_indices
    for start in range(0, len(indices), eval_batch):
        chunk = indices[start:start + eval_batch]
        x = setup.eval_tf(torch.from_numpy(scenario.test.images[chunk])).to(setup.device)
        logits = method.predict(x)[:, torch.as_tensor(task.classes)]
        pred = torch.as_tensor(task.classes)[logits.argmax(1).cpu()]
        correct += int((pred == torch.from_numpy(scenario.test.labels[chunk])).sum())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in setup.backbone.state_dict().items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    summary = {
        "weights": str(out),
        "sha256": sha256sum(out),
        "backbone": cfg.backbone.name,
        "initial_weights": cfg.backbone.weights or "registry default",
        "scenario": scenario.name,
        "classes": np.asarray(task.classes).tolist(),
        "class_names": [scenario.train.class_names[c] for c in np.asarray(task.classes)],
        "train_images": len(setup.task_train[0]),
        "test_images": len(indices),
        "test_accuracy": correct / max(1, len(indices)),
        "epochs": setup.train_cfg.epochs,
        "steps": loop.position["step"],
        "train_flops": loop.meter.train_flops()["total"],
        "train_seconds": loop.meter.time_summary(0)["train_total"],
        "optim": setup.method.optim_cfg.model_dump(mode="json"),
        "use": f"backbone.weights={out}",
    }
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(summary, indent=1))
    return summary
