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

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, None]:
        """ONNX subgraph: ACE per robot, (N,) float64, exact at any finite action spread.

        One sort per chunk index. Two points share a cell iff their D float32 cell values
        ``floor((p - origin) / c)`` are equal, as in :func:`ace_float_cells`; no value can
        overflow, so no step is refused.

        * Cells in float32 with the operations and order of ``ace_float_cells``.
        * One float64 key per point. Fast branch: a fixed radix ``R = 2^floor(53 / D)`` per axis and
          one ``MatMul`` (exact while every cell index is below R: about 250 times the fitted
          action range at D = 3). Otherwise, chosen at run time by an ``If``: per-axis dense ranks
          (one sort per axis), packed exactly, re-ranked whenever B^k would pass 2^53. Exact for
          every finite float32 cell value, including cells that overflow to +inf.
        * Counts: the keys sorted with ``TopK`` along B, run lengths by ``CumSum`` +
          ``ScatterElements``, the terms -p log2 p read from a table.

        With ``integrate_dt``, a chunk whose integrated positions overflow float32 gives NaN (as the
        Python score does), which the monitor then refuses or counts as an alarm.
        """
        from ..exporters._subgraphs import ace_keys, sorted_run_entropy

        assert self.cell_ is not None and self.input_shapes_ is not None
        b, h, d_full = self.input_shapes_["action_samples"]
        pts = "action_samples"
        d = d_full
        if self.dims is not None:
            pts = g.op("Gather", pts, g.i64(list(self.dims)), axis=3)
            d = len(self.dims)
        if self.integrate_dt is not None:
            pts = g.op("CumSum", g.op("Mul", pts, g.f32(np.float32(self.integrate_dt))), g.i64(2))
        # the same float32 operations, in the same order, as ace_float_cells
        lo = g.op("ReduceMin", pts, g.i64([1]), keepdims=1)
        hi = g.op("ReduceMax", pts, g.i64([1]), keepdims=1)
        origin = g.op("Sub", lo, g.op("Mul", g.f32(np.float32(0.01)), g.op("Sub", hi, lo)))
        # the cell size tiled to (B, H, D): onnxruntime divides far faster without a short
        # innermost broadcast, and the quotient is the same IEEE division
        cell = np.broadcast_to(np.asarray(self.cell_, dtype=np.float32), (b, h, d))
        cells = g.op(
            "Floor", g.op("Div", g.op("Sub", pts, origin), g.const(cell, np.float32, "ace_cell"))
        )
        key = ace_keys(g, cells, b, d)  # (N, B, H) float64, equal iff same cell
        total = sorted_run_entropy(g, key, b, 1)  # (N,): Σ_h E_h
        ace = g.op("Div", total, g.f64(float(h)))  # the mean over h, as numpy takes it
        if self.integrate_dt is not None:
            # integrated positions that overflowed float32 leave no defined cell: NaN, as in
            # Python
            # (0 * x is NaN exactly where x is not finite)
            probe = g.op("ReduceSum", g.op("Mul", pts, g.f32(0.0)), g.i64([1, 2, 3]), keepdims=0)
            ace = g.op("Where", g.op("IsNaN", probe), g.f64(np.nan), ace)
        return ace, None

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

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, None]:
        """ONNX subgraph: the entropy of softmax(logits) in float64, or the empirical entropy
        of the B sampled ids (compared as exact float64 integers, |id| < 2^53) by the same
        sort / run-length core as ACE."""
        from ..exporters._subgraphs import logits_entropy, sorted_run_entropy

        if self.source == "logits":
            return logits_entropy(g, "action_logits"), None
        assert self.input_shapes_ is not None
        ids = g.op("Cast", "action_ids", to=g.DOUBLE)  # exact for |id| < 2**53
        rows = g.op("Unsqueeze", ids, g.i64([2]))  # (N, B, 1): one row of B draws
        return sorted_run_entropy(g, rows, self.input_shapes_["action_ids"][0], 1), None

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        if self.source == "logits":
            return logits_entropy(inputs["action_logits"])
        return empirical_entropy(np.asarray(inputs["action_ids"], dtype=np.int64))

    def _params(self) -> dict[str, Any]:
        return {"source": self.source}
