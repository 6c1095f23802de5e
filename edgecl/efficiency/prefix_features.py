"""A frozen prefix's outputs for training batches, optionally cached per training sample.

LightCL and latent replay run the first ``k`` layers of the backbone frozen and without grad
(:class:`~edgecl.efficiency.freezing.FrozenPrefix`) and train the rest on their output. With
``cache_features`` the output of each training sample is computed once per task, keyed by its
dataset index (``batch.index``), and read back in later epochs
(:class:`~edgecl.efficiency.feature_cache.FeatureCache`); that is only correct when the prefix
is a fixed function of un-augmented inputs, which :meth:`PrefixFeatures.build` checks.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import Tensor

from edgecl.data.transforms import BatchTransform
from edgecl.efficiency.feature_cache import (
    FeatureCache,
    FeatureCacheConfigError,
    Storage,
    require_unaugmented,
)
from edgecl.efficiency.freezing import FrozenPrefix
from edgecl.metrics.cost import CostMeter


class PrefixFeatures:
    """Prefix outputs of training batches: from ``frozen.prefix`` or a per-task cache."""

    def __init__(self, frozen: FrozenPrefix, cache: FeatureCache | None = None,
                 meter: CostMeter | None = None) -> None:
        self.frozen = frozen
        self.cache = cache
        self.meter = meter  # books the prefix passes as their own phase ("prefix")

    @classmethod
    def build(cls, frozen: FrozenPrefix, cache_storage: Storage | None,
              transform: BatchTransform, method: str, split_param: str,
              meter: CostMeter | None = None) -> PrefixFeatures:
        """Uncached when ``cache_storage`` is None; else a cache, if caching is sound."""
        if cache_storage is None:
            return cls(frozen, meter=meter)
        require_unaugmented(transform, method)
        if frozen.k == 0:
            raise FeatureCacheConfigError(
                f"{method}: cache_features=true needs a frozen prefix ({split_param} > 0)"
            )
        if not frozen.deterministic:
            raise FeatureCacheConfigError(
                f"{method}: cache_features=true needs a frozen prefix that is a fixed function "
                "of its input (frozen_bn: eval)"
            )
        return cls(frozen, FeatureCache(cache_storage), meter)

    def __call__(self, x: Tensor, index: Tensor) -> Tensor:
        """The prefix output of training inputs ``x`` (dataset indices ``index``)."""
        with self.meter.phase("prefix") if self.meter else contextlib.nullcontext():
            if self.cache is not None:
                return self.cache.fetch(index, x, self.frozen.prefix)
            return self.frozen.prefix(x)

    def begin_task(self, n_train: int) -> None:
        """A task's samples do not come back later: the cache lives for one task."""
        if self.cache is not None:
            self.cache.reset(n_train)

    def nbytes(self) -> int:
        return self.cache.nbytes() if self.cache is not None else 0

    def state_dict(self) -> dict[str, Any] | None:
        return self.cache.state_dict() if self.cache is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.cache is not None and state is not None:
            self.cache.load_state_dict(state)
