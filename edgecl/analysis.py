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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.efficiency.freezing import TapPoint, TapRecorder, is_vit, layer_names


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
    json_path.write_text(json.dumps(asdict(result), indent=1))
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


def train_on_task(net: nn.Module, batches: Any, n_seen: int, optimizer: torch.optim.Optimizer,
                  steps: int) -> list[float]:
    """Finetune every layer for ``steps`` steps on the task's batches."""
    net.train()
    losses = []
    for step, (x, y, _) in enumerate(batches):
        if step >= steps:
            break
        logits = net(x)
        loss = F.cross_entropy(logits[:, :n_seen], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def analyze_layers(cfg: Any, *, steps: int | None = None, samples: int = 64,
                   threshold: float = 0.9, contiguous: bool = True,
                   normalize_tokens: bool = True) -> LayerAnalysis:
    """Train the config's backbone on its first two tasks and measure MS/LP per layer.

    ``cfg`` is a :class:`edgecl.config.RunConfig`; its data, backbone, train (batch size,
    epochs, augmentation) and optim sections are used. ``steps`` caps the steps per task
    (default: the config's epochs over the task).
    """
    from edgecl.data.loader import iterate_batches
    from edgecl.data.transforms import eval_transform, train_transform
    from edgecl.methods.base import Classifier, feature_dim_of, make_optimizer
    from edgecl.runner import build_backbone, build_scenario, steps_in_task

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scenario = build_scenario(cfg)
    if scenario.n_tasks < 2:
        raise ValueError("analyze-layers needs a stream of at least two tasks (data.n_tasks)")
    bundle = build_backbone(cfg)
    backbone = bundle.module
    net = Classifier(backbone, feature_dim_of(backbone), scenario.num_classes)
    tf_train = (train_transform if cfg.train.augment else eval_transform)(
        bundle.img_size, bundle.mean, bundle.std)
    tf_eval = eval_transform(bundle.img_size, bundle.mean, bundle.std)

    def held_out(t: int) -> Tensor:
        idx = scenario.tasks[t].test_indices[:samples]
        return tf_eval(torch.from_numpy(scenario.test.images[idx]))

    def batches(t: int) -> Any:
        for epoch in range(10_000):
            yield from iterate_batches(
                scenario.train, scenario.tasks[t].train_indices, cfg.train.batch_size,
                transform=tf_train, shuffle=True, seed=cfg.seed * 1000 + 10 * t + epoch)

    x_old, x_new = held_out(0), held_out(1)
    n_steps = [steps_in_task(len(scenario.tasks[t].train_indices), cfg.train) for t in (0, 1)]
    if steps is not None:
        n_steps = [min(steps, n) for n in n_steps]
    loss0 = train_on_task(net, batches(0), int(scenario.tasks[0].classes.max()) + 1,
                          make_optimizer(list(net.parameters()), cfg.optim), n_steps[0])
    def grams(x: Tensor) -> dict[str, Tensor]:
        return layer_grams(backbone, x, normalize_tokens=normalize_tokens)

    before_old, before_new = grams(x_old), grams(x_new)
    loss1 = train_on_task(net, batches(1), int(scenario.tasks[1].classes.max()) + 1,
                          make_optimizer(list(net.parameters()), cfg.optim), n_steps[1])
    after_old, after_new = grams(x_old), grams(x_new)
    names = layer_names(backbone)
    ms = [cka_from_grams(before_old[n], after_old[n]) for n in names]
    lp = [cka_from_grams(before_new[n], after_new[n]) for n in names]
    return LayerAnalysis(
        layers=names, memory_stability=ms, learning_plasticity=lp, threshold=threshold,
        proposed_freeze_until=propose_freeze_point(ms, lp, threshold, contiguous),
        details={
            "backbone": cfg.backbone.name, "scenario": scenario.name,
            "steps": n_steps, "held_out_samples": [len(x_old), len(x_new)],
            "final_loss": [loss0[-1] if loss0 else None, loss1[-1] if loss1 else None],
            "contiguous": contiguous, "normalize_tokens": normalize_tokens,
        },
    )
