"""Per-layer generalizability (LightCL §3): memory stability and learning plasticity by CKA.

edgecl's definitions (the paper gives no code for them). Train on task 0, then on task 1,
every layer trainable; compare each layer's features before and after training task 1:

- **memory stability** ``MS_l = CKA(f_l(θ_0; X_old), f_l(θ_1; X_old))`` on held-out task-0
  images (1: the layer still represents old data as before);
- **learning plasticity** ``LP_l = CKA(f_l(θ_0; X_new), f_l(θ_1; X_new))`` on held-out
  task-1 images (low: the layer had to change a lot to learn the new task).

``f_l`` is the output of layer l (ViT: block l's tokens; CNN: stage l's feature map),
flattened per image. ViT tokens are first normalised per token (LayerNorm without affine,
i.e. as the next block's ``norm1`` sees them; ``normalize_tokens=False`` keeps them raw):
pretrained ViTs carry *massive activations* — in the local ViT-Ti one channel of a few
tokens reaches ~530 from block 7 on, about 90% of the layer's energy — and raw linear CKA
would then only measure that channel (it stays ≈ 0.97 whatever the training does).
Linear CKA (Kornblith et al. 2019) with Gram matrices ``K = XXᵀ``,
``L = YYᵀ`` and centring ``H = I − 11ᵀ/n``::

    CKA(X, Y) = ⟨HKH, HLH⟩_F / (‖HKH‖_F · ‖HLH‖_F)

It is invariant to orthogonal transforms and isotropic scaling of either representation,
and only needs the n×n Gram matrices. Freeze point: the number of leading layers whose MS
and LP both stay ≥ ``threshold`` (default 0.9); ``contiguous=False`` takes the deepest such
layer regardless of the layers below it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.efficiency.freezing import TapPoint, TapRecorder, is_vit, layer_names
from edgecl.io import write_json
from edgecl.runner.callbacks import Callback


# ---- linear CKA ---------------------------------------------------------------------------------
def gram_linear(x: Tensor) -> Tensor:
    """``X Xᵀ`` in float64 for features ``x`` of shape (n, ...)."""
    flat = x.reshape(x.shape[0], -1).double()
    return flat @ flat.T


def center_gram(k: Tensor) -> Tensor:
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def cka_from_grams(k: Tensor, l: Tensor) -> float:
    kc, lc = center_gram(k), center_gram(l)
    denom = torch.linalg.norm(kc) * torch.linalg.norm(lc)
    if denom == 0:
        return float("nan")
    return float((kc * lc).sum() / denom)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between two representations of the same n examples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    return cka_from_grams(gram_linear(x), gram_linear(y))


def propose_freeze_point(
    ms: list[float], lp: list[float], threshold: float = 0.9, contiguous: bool = True
) -> int:
    """Number of layers to freeze: leading layers with MS and LP both ≥ threshold."""
    ok = [m >= threshold and p >= threshold for m, p in zip(ms, lp, strict=True)]
    if contiguous:
        return next((i for i, good in enumerate(ok) if not good), len(ok))
    return max((i + 1 for i, good in enumerate(ok) if good), default=0)


# ---- results -----------------------------------------------------------------------------------
@dataclass
class LayerAnalysis:
    layers: list[str]
    memory_stability: list[float]
    learning_plasticity: list[float]
    threshold: float
    proposed_freeze_until: int
    details: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = ["| layer | memory stability | learning plasticity | both >= threshold |",
                 "|---|---:|---:|:---:|"]
        for name, m, p in zip(self.layers, self.memory_stability, self.learning_plasticity,
                              strict=True):
            mark = "yes" if m >= self.threshold and p >= self.threshold else "no"
            lines.append(f"| {name} | {m:.4f} | {p:.4f} | {mark} |")
        k = self.proposed_freeze_until
        frozen = f"{self.layers[k - 1]} (the first {k} layers)" if k else "nothing"
        lines.append("")
        lines.append(f"Proposed freeze point (threshold {self.threshold}): freeze_until={k} "
                     f"— freeze up to {frozen}.")
        return "\n".join(lines)


def write_analysis(result: LayerAnalysis, out_dir: Path) -> tuple[Path, Path]:
    """``analysis.json`` (readable by ``lightcl: {freeze_until: auto}``) and ``analysis.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "analysis.json", out_dir / "analysis.png"
    write_json(json_path, asdict(result))
    plot_layer_analysis(result, png_path)
    return json_path, png_path


def plot_layer_analysis(result: LayerAnalysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.arange(len(result.layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(xs) + 2), 3.6))
    ax.plot(xs, result.memory_stability, "o-", label="memory stability (old task)")
    ax.plot(xs, result.learning_plasticity, "s-", label="learning plasticity (new task)")
    ax.axhline(result.threshold, color="grey", ls="--", lw=1, label=f"threshold {result.threshold}")
    k = result.proposed_freeze_until
    if k:
        ax.axvspan(-0.5, k - 0.5, color="tab:blue", alpha=0.08, label=f"proposed frozen ({k})")
    ax.set_xticks(xs, result.layers, rotation=45, ha="right")
    ax.set_ylabel("linear CKA before/after task 1")
    low = min(result.threshold, *result.memory_stability, *result.learning_plasticity)
    ax.set_ylim(low - 0.1 * (1.0 - low) - 1e-3, 1.0 + 0.05 * (1.0 - low) + 1e-3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Per-layer generalizability (LightCL metrics)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- features and training ---------------------------------------------------------------------
def layer_points(backbone: nn.Module) -> dict[str, TapPoint]:
    if is_vit(backbone):
        return {f"block{i}": (block, None) for i, block in enumerate(backbone.blocks)}
    return {name: (module, None) for name, module in backbone.stage_modules()}


@torch.no_grad()
def layer_grams(backbone: nn.Module, x: Tensor, batch_size: int = 32,
                normalize_tokens: bool = True) -> dict[str, Tensor]:
    """Gram matrix of every layer's flattened output on images ``x`` (eval mode)."""
    backbone.eval()
    points = layer_points(backbone)
    vit = is_vit(backbone)
    chunks: dict[str, list[Tensor]] = {name: [] for name in points}
    for start in range(0, len(x), batch_size):
        with TapRecorder(points) as rec:
            backbone(x[start : start + batch_size])
        for name, out in rec.outputs().items():
            if vit and normalize_tokens:
                out = F.layer_norm(out.float(), out.shape[-1:])
            chunks[name].append(out.reshape(out.shape[0], -1).float())
    return {name: gram_linear(torch.cat(parts)) for name, parts in chunks.items()}


class _Grams(Callback):
    """Callback: the layers' Gram matrices on held-out images when task 0 and task 1 end."""

    def __init__(self, images: dict[int, Tensor], normalize_tokens: bool) -> None:
        self.images, self.normalize_tokens = images, normalize_tokens
        self.after: dict[int, dict[int, dict[str, Tensor]]] = {}
        self.last_loss: dict[int, float] = {}

    def on_step(self, loop: Any, batch: Any, stats: Any) -> None:
        self.last_loss[batch.task_id] = stats.loss

    def on_task_end(self, loop: Any, task: Any) -> None:
        self.after[task.index] = {
            t: layer_grams(loop.run.backbone, x, normalize_tokens=self.normalize_tokens)
            for t, x in self.images.items()}


def analyze_layers(cfg: Any, *, steps: int | None = None, samples: int = 64,
                   threshold: float = 0.9, contiguous: bool = True,
                   normalize_tokens: bool = True) -> LayerAnalysis:
    """Finetune the config's backbone on its first two tasks (edgecl's training loop, method
    ``finetune`` with the config's train and optim blocks) and measure MS/LP per layer.

    ``cfg`` is a :class:`edgecl.config.RunConfig`. ``steps`` caps the steps per task (default:
    the config's epochs over the task).
    """
    from edgecl.config import MethodSpec
    from edgecl.errors import ConfigError
    from edgecl.runner import TrainingLoop, build_backbone, build_scenario, setup_method
    from edgecl.runner.build import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scenario = build_scenario(cfg)
    if scenario.n_tasks < 2:
        raise ConfigError("analyze-layers needs a stream of at least two tasks (data.n_tasks)")
    if steps is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"max_steps_per_task": steps})})
    setup = setup_method(cfg, MethodSpec(name="finetune"), scenario, build_backbone(cfg),
                         resolve_device(cfg.device))
    held_out = {t: setup.eval_tf(torch.from_numpy(
        scenario.test.images[scenario.tasks[t].test_indices[:samples]])).to(setup.device)
        for t in (0, 1)}
    grams = _Grams(held_out, normalize_tokens)
    loop = TrainingLoop(setup, callbacks=[grams])
    with loop.meter.active():
        for t in (0, 1):
            loop.train_task(t)
    before, after = grams.after[0], grams.after[1]
    names = layer_names(setup.backbone)
    ms = [cka_from_grams(before[0][n], after[0][n]) for n in names]
    lp = [cka_from_grams(before[1][n], after[1][n]) for n in names]
    return LayerAnalysis(
        layers=names, memory_stability=ms, learning_plasticity=lp, threshold=threshold,
        proposed_freeze_until=propose_freeze_point(ms, lp, threshold, contiguous),
        details={
            "backbone": cfg.backbone.name, "scenario": scenario.name,
            "steps": setup.task_steps[:2], "held_out_samples": [len(held_out[0]),
                                                                len(held_out[1])],
            "final_loss": [grams.last_loss.get(0), grams.last_loss.get(1)],
            "contiguous": contiguous, "normalize_tokens": normalize_tokens,
        },
    )
