"""Entropy of the policy's actions: ACE for continuous action chunks, Shannon for discrete actions.

ACE (action-chunk entropy, METHOD.md §3). At step t the policy samples B chunks
A_t ∈ R^{B×H×D}. For each chunk index h the B points A_t[:, h, :] are binned on a grid with
cell size c_k per axis (c_k = factor × range of axis k over the fitting data) whose origin is
the per-step minimum minus 1 % of the per-step range. With p the cell frequencies,
E_h = -Σ p log₂ p, and ACE_t = mean_h E_h ∈ [0, log₂ B].

Binning is done in float32 with a fixed order of operations so that the ONNX graph computes
the very same cells; cell counts come from sorting integer cell keys (O(B log B) per chunk
index), never from a B×B comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ConfigError, RolloutError
from ..types import Rollout
from ._base import BaseScore, register_score

__all__ = [
    "ActionChunkEntropy",
    "DiscreteActionEntropy",
    "ace_cells",
    "ace_float_cells",
    "empirical_entropy",
    "logits_entropy",
]

#: Fraction of the per-step range by which the grid origin sits below the per-step minimum.
ORIGIN_MARGIN = np.float32(0.01)


def empirical_entropy(keys: NDArray[np.int64]) -> NDArray[np.float64]:
    """Base-2 entropy of the empirical distribution of each row of integer keys.

    Parameters
    ----------
    keys : int array of shape (G, B)
        B draws per row; equal keys are the same outcome.

    Returns
    -------
    ndarray of shape (G,)

    Examples
    --------
    >>> empirical_entropy(np.array([[1, 1, 1, 1], [0, 1, 2, 3], [5, 5, 7, 7]]))
    array([0., 2., 1.])
    """
    g, b = keys.shape
    s = np.sort(keys, axis=1)
    starts = np.ones((g, b), dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    first = np.flatnonzero(starts)  # flat index where each run of equal keys begins
    counts = np.diff(first, append=g * b).astype(np.float64)
    row_of_run = first // b
    p = counts / b
    return np.asarray(np.bincount(row_of_run, weights=-p * np.log2(p), minlength=g), np.float64)


def logits_entropy(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Exact base-2 Shannon entropy of softmax(logits) per row.

    Examples
    --------
    >>> logits_entropy(np.array([[0.0, 0.0], [0.0, -1e9]])).round(6)
    array([1., 0.])
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p = z - log_norm
    p = np.exp(log_p)
    return np.asarray(np.abs((p * log_p).sum(axis=1)) / np.log(2.0), dtype=np.float64)


def ace_float_cells(
    points: NDArray[np.float32], cell: NDArray[np.float32], axis: int = 1
) -> NDArray[np.float32]:
    """Grid cell of each point as float32 values ``floor((p - origin) / c)``.

    The one home of ACE's cell arithmetic: :class:`ActionChunkEntropy` scores with it, and
    its ONNX subgraph performs the same float32 operations in the same order. Two points
    share a cell iff their cell values are equal on every axis; the values are exact for any
    finite input (past 2^24 they are the float32 quotient itself, and a span past float32's
    range gives +inf for every point, one cell).

    Parameters
    ----------
    points : float32 array of shape (T, B, H, D)
        Or any layout, with the B samples along ``axis``.
    cell : float32 array of shape (D,)
        Or broadcastable against ``points`` in that layout.
    axis : int, default=1
        The axis of the B samples (the origin is their minimum, minus 1 % of their range).

    Returns
    -------
    float32 array of the shape of ``points``, all >= 0 (integers, or +inf).
    """
    lo = points.min(axis=axis, keepdims=True)
    hi = points.max(axis=axis, keepdims=True)
    with np.errstate(over="ignore"):  # a span past float32's range: every cell is +inf
        origin = lo - ORIGIN_MARGIN * (hi - lo)
        return np.asarray(np.floor((points - origin) / cell), dtype=np.float32)


def ace_cells(
    points: NDArray[np.float32], cell: NDArray[np.float32], axis: int = 1
) -> NDArray[np.int64]:
    """Integer grid cell of each point, with a floating origin per chunk index.

    :func:`ace_float_cells` as int64: exact while every cell index is below 2^63 (the score
    itself compares the float32 cell values, so it stays exact beyond).

    Parameters
    ----------
    points : float32 array of shape (T, B, H, D)
        Or any layout, with the B samples along ``axis``.
    cell : float32 array of shape (D,)
        Or broadcastable against ``points`` in that layout.
    axis : int, default=1
        The axis of the B samples (the origin is their minimum, minus 1 % of their range).

    Returns
    -------
    int64 array of the shape of ``points``, all >= 0.
    """
    return ace_float_cells(points, cell, axis).astype(np.int64)


def _pack_cells(cells: NDArray[np.int64], axis: int = -1) -> NDArray[np.int64]:
    """One int64 key per point (same key iff same cell), removing the cell-index ``axis``."""
    cells = np.moveaxis(cells, axis, 0)  # (D, ...): each cells[k] is a contiguous block
    d = cells.shape[0]
    if d == 1:
        return np.asarray(cells[0])
    top = int(cells.max()) + 1
    bits = max(1, int(np.ceil(np.log2(top + 1))))
    if bits * d <= 62:
        key = cells[0].copy()
        for k in range(1, d):
            key <<= bits
            key |= cells[k]
        return key
    # Too many cells to pack: number the distinct points exactly instead.
    flat = cells.reshape(d, -1).T
    _, inverse = np.unique(flat, axis=0, return_inverse=True)
    return inverse.reshape(cells.shape[1:]).astype(np.int64)


@register_score
class ActionChunkEntropy(BaseScore):
    """ACE: entropy of the policy's sampled action chunks (FIPER's second indicator).

    Parameters
    ----------
    dims : sequence of int, optional
        Action dimensions to use (default: all). The reference uses end-effector xyz.
    cell_factor : float, default=0.03
        Cell size per axis as a fraction of that axis' range over the fitting data.
    integrate_dt : float, optional
        If given, actions are velocities: they are integrated along the chunk from zero,
        p_h = Σ_{j<=h} dt·v_j, before binning (what the reference does for velocity control).
    name : str, default="ace"

    Attributes
    ----------
    cell_ : ndarray of shape (D',)
        Fitted cell size of each used axis.

    Examples
    --------
    >>> import numpy as np
    >>> from failguard import Rollout
    >>> rng = np.random.default_rng(0)
    >>> r = Rollout(np.zeros((6, 4)), action_samples=rng.normal(size=(6, 32, 8, 2)), success=True)
    >>> ace = ActionChunkEntropy().fit([r])
    >>> s = ace.score(r)
    >>> s.shape, bool(0 <= s.min() and s.max() <= np.log2(32))
    ((6,), True)
    """

    requires = ("action_samples",)
    exportable = True

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        cell_factor: float = 0.03,
        integrate_dt: float | None = None,
        name: str = "ace",
    ) -> None:
        super().__init__(name)
        if not (isinstance(cell_factor, (int, float)) and 0 < cell_factor <= 1):
            raise ConfigError(
                "The 'cell_factor' parameter of ActionChunkEntropy must be a float in the range "
                f"(0, 1]. Got {cell_factor!r} instead."
            )
        if integrate_dt is not None and not (
            isinstance(integrate_dt, (int, float)) and integrate_dt > 0
        ):
            raise ConfigError(
                "The 'integrate_dt' parameter of ActionChunkEntropy must be a positive float or "
                f"None. Got {integrate_dt!r} instead."
            )
        self.dims = None if dims is None else [int(d) for d in dims]
        self.cell_factor = float(cell_factor)
        self.integrate_dt = None if integrate_dt is None else float(integrate_dt)
        self.cell_: NDArray[np.float32] | None = None

    def points(self, action_samples: NDArray[Any]) -> NDArray[np.float32]:
        """The points that are binned: chosen dims, integrated if asked; (T, B, H, D')."""
        a = np.asarray(action_samples, dtype=np.float32)
        if self.dims is not None:
            if max(self.dims) >= a.shape[-1] or min(self.dims) < -a.shape[-1]:
                raise RolloutError(
                    f"ActionChunkEntropy: dims {self.dims} out of range for actions with "
                    f"D={a.shape[-1]}."
                )
            a = a[..., self.dims]
        if self.integrate_dt is not None:
            with np.errstate(over="ignore"):  # an overflow makes the step NaN (see _score)
                a = np.cumsum(a * np.float32(self.integrate_dt), axis=2, dtype=np.float32)
        return a

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        lo = hi = None
        for r in rollouts:
            assert r.action_samples is not None
            pts = self.points(r.action_samples)
            p = pts.reshape(-1, pts.shape[-1])
            lo = p.min(axis=0) if lo is None else np.minimum(lo, p.min(axis=0))
            hi = p.max(axis=0) if hi is None else np.maximum(hi, p.max(axis=0))
        assert lo is not None and hi is not None
        span = (hi - lo).astype(np.float64)
        if not np.any(span > 0):
            span = np.ones_like(span)
        span = np.where(span > 0, span, span.max())
        self.cell_ = (self.cell_factor * span).astype(np.float32)

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.cell_ is not None
        pts = self.points(inputs["action_samples"])
        t, b, h, _ = pts.shape
        # A (D, T, H, B) layout, where every reduction and every per-axis slice is contiguous.
        p = np.ascontiguousarray(pts.transpose(3, 0, 2, 1))
        # integrated positions can overflow float32: such a step has no defined cells (NaN)
        bad = ~np.isfinite(p).all(axis=(0, 2, 3)) if self.integrate_dt is not None else None
        if bad is not None and bad.any():
            p[:, bad] = 0.0
        fcells = ace_float_cells(p, self.cell_[:, None, None, None], axis=-1)
        if fcells.max() < 2.0**62:  # the usual case: exact int64 cell indices
            keys = _pack_cells(fcells.astype(np.int64), axis=0)  # (T, H, B)
        else:  # an extreme spread (cells past int64, or +inf): rank the float32 cells exactly
            ranks = np.stack(
                [
                    np.unique(fcells[k], return_inverse=True)[1].reshape(fcells.shape[1:])
                    for k in range(fcells.shape[0])
                ]
            )
            keys = _pack_cells(ranks.astype(np.int64), axis=0)
        out = empirical_entropy(keys.reshape(t * h, b)).reshape(t, h).mean(axis=1)
        if bad is not None and bad.any():
            out[bad] = np.nan
        return out

    def _params(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "cell_factor": self.cell_factor,
            "integrate_dt": self.integrate_dt,
        }

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.cell_ is not None
        return {"cell": self.cell_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.cell_ = np.asarray(tensors["cell"], dtype=np.float32)


@register_score
class DiscreteActionEntropy(BaseScore):
    """Entropy of a discrete-action agent's action distribution.

    Parameters
    ----------
    source : {"logits", "samples"}, default="logits"
        ``"logits"``: exact Shannon entropy of softmax(action_logits) (T, K).
        ``"samples"``: empirical entropy of B sampled action ids (T, B), for agents whose
        distribution is only available through samples (e.g. an LLM sampled B times).
    name : str, optional
        Default ``"entropy"`` for logits and ``"entropy_samples"`` for samples.

    Notes
    -----
    Entropy signals failure when the agent's uncertainty means "I don't know what to do":
    imitation policies, or an LLM choosing among tools. An RL policy trained with an entropy
    bonus can be the opposite, near-uniform when the action hardly matters and decisive when
    in trouble; on the LunarLander benchmark (docs/BENCHMARKS.md) its entropy is *lower*
    on failures (ROC-AUC 0.30), and AND-fusing it with RND loses most failures. Check the
    direction on validation rollouts before relying on it.

    Examples
    --------
    >>> import numpy as np
    >>> from failguard import Rollout
    >>> r = Rollout(np.zeros((2, 3)), action_logits=[[0.0, 0.0], [5.0, -5.0]], success=True)
    >>> DiscreteActionEntropy().fit([r]).score(r).round(3)
    array([1.   , 0.001])
    """

    exportable = True

    def __init__(self, source: str = "logits", name: str | None = None) -> None:
        if source not in ("logits", "samples"):
            raise ConfigError(
                "The 'source' parameter of DiscreteActionEntropy must be 'logits' or 'samples'. "
                f"Got {source!r} instead."
            )
        super().__init__(name or ("entropy" if source == "logits" else "entropy_samples"))
        self.source = source
        self.requires = ("action_logits",) if source == "logits" else ("action_ids",)

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        """Nothing to learn: the entropy needs no fitting beyond recording input shapes."""

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        if self.source == "logits":
            return logits_entropy(inputs["action_logits"])
        return empirical_entropy(np.asarray(inputs["action_ids"], dtype=np.int64))

    def _params(self) -> dict[str, Any]:
        return {"source": self.source}
