"""REP's adaptive layer dropping (ALD): skip transformer blocks at random during training.

At training step ``t`` block ``l`` (1-based) runs with probability

    θ_{t,l} = α(l) · (1 − θ̄) · exp(−γ t) + θ̄,

else it is skipped (identity: the residual stream passes through). ``α(l) = α`` when more
than ``τ`` tokens have been removed by token merging (AToM) before block ``l``, else 1, so
blocks that see merged, less spatially detailed tokens are dropped a little more often.
Blocks listed in ``always_run`` (those holding prefix prompts) are never skipped. Evaluation
never drops anything: :class:`LayerDropper` is only consulted for training steps.

Choices:

- "Tokens removed before block ``l``" counts the merges of the blocks that actually ran
  before it in this step: a skipped block performs no merge (its merge lives inside the
  block), so its scheduled merges do not count. The decision is therefore sequential over
  the blocks, but every step draws exactly ``depth`` uniforms (one per block, also for
  blocks that always run), so the generator advances identically whatever is skipped and a
  resumed run reproduces the same draws.
- ``t`` is a step counter kept by the caller (REP: training steps over the whole stream,
  as in progressive layer dropping); ``time_scale`` stretches it (``t·time_scale``) so a
  shortened run can follow the decay of a longer protocol.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from edgecl.efficiency.token_merging import removed_before


@dataclass(frozen=True)
class ALDConfig:
    theta_bar: float = 0.5  # θ̄: the keep probability the schedule decays to
    gamma: float = 0.001  # γ: decay rate per step
    alpha: float = 0.9  # α: factor on the decaying part once more than τ tokens are gone
    tau: int = 16  # τ: removed-token threshold (REP: 16 L2P, 12 DualPrompt CIFAR, 8 IN-R)

    def __post_init__(self) -> None:
        if not 0.0 <= self.theta_bar <= 1.0:
            raise ValueError(f"theta_bar must be in [0, 1], got {self.theta_bar}")
        if self.gamma < 0 or not 0.0 <= self.alpha <= 1.0 or self.tau < 0:
            raise ValueError(
                f"need gamma >= 0, 0 <= alpha <= 1 and tau >= 0; got gamma={self.gamma}, "
                f"alpha={self.alpha}, tau={self.tau}"
            )


def spatial_alpha(removed: int, cfg: ALDConfig) -> float:
    """α(l): ``α`` if more than ``τ`` tokens were removed before the block, else 1."""
    return cfg.alpha if removed > cfg.tau else 1.0


def keep_probability(t: float, removed: int, cfg: ALDConfig) -> float:
    """θ_{t,l} = α(l)·(1 − θ̄)·exp(−γ t) + θ̄."""
    return spatial_alpha(removed, cfg) * (1.0 - cfg.theta_bar) * math.exp(-cfg.gamma * t) + (
        cfg.theta_bar
    )


def scheduled_keep_probabilities(t: float, merges: Sequence[int], cfg: ALDConfig) -> list[float]:
    """θ_{t,l} for every block when every block runs (removed counts from the schedule)."""
    return [keep_probability(t, r, cfg) for r in removed_before(merges)]


class LayerDropper:
    """Seeded per-step block sampling for ALD; its generator state is part of the resume state.

    ``merges[l]`` is the number of tokens block ``l`` removes when it runs (AToM's schedule;
    all zeros without token merging).
    """

    def __init__(
        self, depth: int, merges: Sequence[int] | None, cfg: ALDConfig, seed: int,
        time_scale: float = 1.0,
    ) -> None:
        merges = list(merges) if merges is not None else [0] * depth
        if len(merges) != depth:
            raise ValueError(f"{len(merges)} merge counts for {depth} blocks")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.depth, self.merges, self.cfg = depth, merges, cfg
        self.time_scale = time_scale
        self.generator = torch.Generator().manual_seed(seed)

    def decide(
        self, t: int, uniforms: Sequence[float], always_run: Collection[int] = ()
    ) -> tuple[list[int], list[float]]:
        """Blocks to skip at step ``t`` given one uniform per block; also returns each θ used."""
        skip, thetas, removed = [], [], 0
        for layer in range(self.depth):
            theta = keep_probability(t * self.time_scale, removed, self.cfg)
            thetas.append(theta)
            if layer in always_run or uniforms[layer] < theta:
                removed += self.merges[layer]
            else:
                skip.append(layer)
        return skip, thetas

    def sample(self, t: int, always_run: Collection[int] = ()) -> list[int]:
        """Draw this step's skipped blocks (``depth`` uniforms from the generator)."""
        uniforms = torch.rand(self.depth, generator=self.generator, dtype=torch.float64)
        return self.decide(t, uniforms.tolist(), always_run)[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
