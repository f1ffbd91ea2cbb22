"""CachedScore: share one fitted score, and its per-rollout results, across many detectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..exceptions import NotFittedError
from ..types import Rollout
from ._base import BaseScore

__all__ = ["CachedScore"]


class CachedScore(BaseScore):
    """A fitted score whose per-rollout results are memoised, keyed by rollout identity.

    Wrapping fitted scores lets many :class:`~failguard.FailureDetector` configurations
    (windows, threshold styles, fusion, alpha) be fitted and evaluated on the same
    validation rollouts while each rollout is scored once: ``fit`` checks the inputs and
    learns nothing. Meant for model selection and benchmarks; the cache holds a reference to
    every rollout it scored, so drop the wrapper when done. For one detector,
    :meth:`FailureDetector.with_params` does the same without a wrapper.

    Parameters
    ----------
    inner : BaseScore
        A fitted score; its name, inputs and context are the wrapper's.

    Examples
    --------
    >>> from failguard import FailureDetector, RNDScore
    >>> from failguard.synthetic import make_rollouts
    >>> fit_set, cal_set = make_rollouts(8, seed=0), make_rollouts(30, seed=1)
    >>> rnd = CachedScore(RNDScore(max_epochs=2).fit(fit_set))
    >>> for w in (3, 10):  # RND trained once, each calibration rollout scored once
    ...     det = FailureDetector(scores=[rnd], windows=w, alpha=0.1).fit(fit_set, progress=False)
    ...     _ = det.calibrate(cal_set)
    >>> len(rnd.cache)
    30
    """

    def __init__(self, inner: BaseScore) -> None:
        if not inner.is_fitted:
            raise NotFittedError(
                f"CachedScore wraps fitted scores only; call {type(inner).__name__}.fit first."
            )
        super().__init__(inner.name)
        self.inner = inner
        self.requires = inner.requires
        self.input_shapes_ = inner.input_shapes_
        self.cache: dict[int, NDArray[np.float64]] = {}
        self._alive: list[Rollout] = []  # keeps ids unique while their results are cached

    @property
    def context(self) -> int:  # type: ignore[override]
        """History the wrapped score reads."""
        return self.inner.context

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        """Nothing to learn: the wrapped score is frozen."""

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        return self.inner.score_steps(inputs)

    def score(self, rollout: Rollout) -> NDArray[np.float64]:
        """Per-step scores of one rollout (memoised)."""
        return self.score_many([rollout])[0]

    def score_many(self, rollouts: Sequence[Rollout]) -> list[NDArray[np.float64]]:
        """Per-step scores of several rollouts; only unseen ones are scored (batched)."""
        missing = [r for r in rollouts if id(r) not in self.cache]
        if missing:
            for r, s in zip(missing, self.inner.score_many(missing), strict=True):
                self.cache[id(r)] = s
                self._alive.append(r)
        return [self.cache[id(r)] for r in rollouts]
