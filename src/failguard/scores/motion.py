"""How a rollout moves: stagnation, early-warning signals and chunk consistency.

FIPER's indicators see novel inputs and uncertain actions; these see a policy that is stuck
or dithering while confident and in distribution. All are cheap (no network) and causal.

- :class:`Movement`: how far the embedding moved over the last ``lag`` steps, in units of
  its spread over the fit rollouts. Raw, *more* movement scores higher; wrap it as
  ``Deviation(Movement(), side="low")`` to score *less* movement than successes show at
  the same phase (stagnation).
- :class:`SlowingDown`: "critical slowing down" from the early-warning-signals literature:
  the variance or the lag-1 autocorrelation of the embedding's leading principal components
  over a trailing window. Wrap it in :class:`~failguard.scores.Deviation` to compare with
  the successes' profile.
- :class:`ChunkConsistency`: a cheap, first-class version of STAC. The mean of the chunks
  sampled at t-1 and the mean of those sampled at t both describe the same stretch of the
  future (their overlap); the score is their RMS difference, in units of the fitted action
  spread. O(B·H·D) a step instead of STAC's O(B²·H·D) kernel matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ConfigError, RolloutError
from ..types import Rollout
from ._base import BaseScore, register_score

__all__ = ["ChunkConsistency", "Movement", "SlowingDown"]


def _flat(x: NDArray[Any]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


_DOUBLE = 11  # onnx.TensorProto.DOUBLE


def _onnx_embeddings(g: Any, source: str = "embeddings") -> str:
    """The graph input ``source`` (N, ...) float32 as (N, d) float64, like :func:`_flat`."""
    return g.op("Cast", g.op("Flatten", source, axis=1), to=_DOUBLE)


def _onnx_first_step(g: Any, rank: int) -> str:
    """(N, 1, …) bool, true at a robot's first step (t == 0), ``rank`` axes in all."""
    return g.op("Unsqueeze", g.op("Equal", "t", g.i64(0)), g.i64(list(range(1, rank))))


def _check_int(cls: str, label: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(
            f"The '{label}' parameter of {cls} must be an int >= {low}. Got {value!r} instead."
        )
    return int(value)


@register_score
class Movement(BaseScore):
    """Distance moved over ``lag`` steps: ‖(x_t - x_{t-lag}) / std‖ / √d.

    Before step ``lag`` the first step is the reference (x_{max(0, t-lag)}). ``x`` is the
    embedding, or with ``source="states"`` the rollout's optional physical state
    (:attr:`Rollout.states`, e.g. the end-effector position): a robot pushing against an
    obstacle can keep changing what it sees a little while its position stands still.

    Parameters
    ----------
    lag : int, default=5
    source : {"embeddings", "states"}, default="embeddings"
        The :class:`~failguard.Rollout` field whose movement is measured.
    name : str, optional
        Default ``"movement"`` (``"state_movement"`` for ``source="states"``).

    Examples
    --------
    >>> from failguard import Rollout
    >>> line = np.outer(np.arange(10.0), np.ones(3))
    >>> m = Movement(lag=2).fit([Rollout(line, success=True)])
    >>> m.score(Rollout(line)).round(3).tolist()[:4]
    [0.0, 0.348, 0.696, 0.696]
    >>> still = Rollout(line, states=np.zeros((10, 3)), success=True)
    >>> m = Movement(lag=2, source="states").fit([still, Rollout(line, states=line)])
    >>> m.requires, float(m.score(still).max())
    (('states',), 0.0)
    """

    SOURCES: ClassVar[tuple[str, ...]] = ("embeddings", "states")

    def __init__(self, lag: int = 5, source: str = "embeddings", name: str | None = None) -> None:
        if source not in self.SOURCES:
            raise ConfigError(
                f"The 'source' parameter of Movement must be one of {self.SOURCES}. "
                f"Got {source!r} instead."
            )
        super().__init__(name or ("movement" if source == "embeddings" else "state_movement"))
        self.lag = _check_int("Movement", "lag", lag, 1)
        self.source = source
        self.requires = (source,)
        self.inv_std_: NDArray[np.float64] | None = None

    exportable: ClassVar[bool] = True

    @property
    def context(self) -> int:  # type: ignore[override]
        """The score at t reads rows t-lag … t."""
        return self.lag

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        x = np.concatenate([_flat(getattr(r, self.source)) for r in rollouts])
        std = x.std(axis=0)
        self.inv_std_ = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 0.0)

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.inv_std_ is not None
        x = _flat(inputs[self.source]) * self.inv_std_
        ref = np.maximum(np.arange(x.shape[0]) - self.lag, 0)
        d = x - x[ref]
        return np.sqrt(np.sum(d * d, axis=1) / x.shape[1])

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """ONNX subgraph; its state is the last ``lag`` scaled embeddings, oldest first."""
        assert self.inv_std_ is not None
        d = self.inv_std_.shape[0]
        x = g.op(
            "Mul",
            _onnx_embeddings(g, self.source),
            g.const(self.inv_std_, np.float64, f"{self.name}_scale"),
        )
        row = g.op("Unsqueeze", x, g.i64([1]))  # (N, 1, d)
        state = g.state((self.lag, d))
        # at t == 0 every earlier row is the first one (the reference max(0, t - lag))
        past = g.op("Where", _onnx_first_step(g, 3), row, state)
        ref = g.op("Squeeze", g.op("Slice", past, g.i64([0]), g.i64([1]), g.i64([1])), g.i64([1]))
        diff = g.op("Sub", x, ref)
        total = g.op("ReduceSum", g.op("Mul", diff, diff), g.i64([1]), keepdims=0)
        if self.lag == 1:
            g.update_state(state, row)
        else:
            keep = g.op("Slice", past, g.i64([1]), g.i64([self.lag]), g.i64([1]))
            g.update_state(state, g.op("Concat", keep, row, axis=1))
        return g.op("Sqrt", g.op("Div", total, g.f64(float(d)))), None

    def _params(self) -> dict[str, Any]:
        return {"lag": self.lag, "source": self.source}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.inv_std_ is not None
        return {"inv_std": self.inv_std_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.inv_std_ = np.asarray(tensors["inv_std"], dtype=np.float64)


@register_score
class SlowingDown(BaseScore):
    """Early-warning signal over a trailing window of the embedding's principal components.

    The embedding is projected on its ``n_components`` leading principal components (fitted
    on the fit rollouts) and standardised. Over the rows max(0, t-window+1) … t:

    - ``statistic="variance"``: the mean variance of the components;
    - ``statistic="autocorrelation"``: (1 + ρ₁) / 2 with ρ₁ the mean lag-1 autocorrelation of
      the components (0 … 1; 0.5 with fewer than 3 rows or no variance).

    Parameters
    ----------
    window : int, default=20
    statistic : {"variance", "autocorrelation"}, default="autocorrelation"
    n_components : int, default=4
    name : str, optional
        Default ``"ews_var"`` / ``"ews_ac"``.
    """

    STATISTICS: ClassVar[tuple[str, ...]] = ("variance", "autocorrelation")

    def __init__(
        self,
        window: int = 20,
        statistic: str = "autocorrelation",
        n_components: int = 4,
        name: str | None = None,
    ) -> None:
        if statistic not in self.STATISTICS:
            raise ConfigError(
                f"The 'statistic' parameter of SlowingDown must be one of {self.STATISTICS}. "
                f"Got {statistic!r} instead."
            )
        super().__init__(name or ("ews_var" if statistic == "variance" else "ews_ac"))
        self.window = _check_int("SlowingDown", "window", window, 2)
        self.statistic = statistic
        self.n_components = _check_int("SlowingDown", "n_components", n_components, 1)
        self.mean_: NDArray[np.float64] | None = None
        self.components_: NDArray[np.float64] | None = None

    exportable: ClassVar[bool] = True

    @property
    def context(self) -> int:  # type: ignore[override]
        """The score at t reads rows t-window+1 … t."""
        return self.window - 1

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        x = np.concatenate([_flat(r.embeddings) for r in rollouts])
        mean = x.mean(axis=0)
        _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = min(self.n_components, vt.shape[0])
        sd = sv[:k] / np.sqrt(max(x.shape[0] - 1, 1))
        self.mean_ = mean
        # components scaled so that the projections have unit variance on the fit rollouts
        self.components_ = vt[:k] / np.maximum(sd, 1e-12)[:, None]

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.mean_ is not None and self.components_ is not None
        z = (_flat(inputs["embeddings"]) - self.mean_) @ self.components_.T
        out = np.empty(z.shape[0])
        for t in range(z.shape[0]):
            w = z[max(0, t - self.window + 1) : t + 1]
            c = w - w.mean(axis=0)
            if self.statistic == "variance":
                out[t] = float(np.mean(np.mean(c * c, axis=0)))
                continue
            den = np.sum(c * c, axis=0)
            ok = den > 1e-12
            if w.shape[0] < 3 or not np.any(ok):
                out[t] = 0.5
                continue
            num = np.sum(c[1:] * c[:-1], axis=0)
            out[t] = 0.5 * (1.0 + float(np.mean(num[ok] / den[ok])))
        return out

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """ONNX subgraph; its state is the last ``window - 1`` projections, oldest first.

        Rows before the first step are masked out, so the state's initial value is unused.
        """
        assert self.mean_ is not None and self.components_ is not None
        w = self.window
        k = self.components_.shape[0]
        x = g.op("Sub", _onnx_embeddings(g), g.const(self.mean_, np.float64, "ews_mean"))
        z = g.op("MatMul", x, g.const(self.components_.T, np.float64, "ews_components"))
        state = g.state((w - 1, k))
        rows = g.op("Concat", state, g.op("Unsqueeze", z, g.i64([1])), axis=1)  # (N, w, k)
        g.update_state(state, g.op("Slice", rows, g.i64([1]), g.i64([w]), g.i64([1])))
        n = g.op("Min", g.op("Add", "t", g.i64(1)), g.i64(w))  # rows in the window
        first = g.op("Unsqueeze", g.op("Sub", g.i64(w), n), g.i64([1]))  # (N, 1)
        valid = g.op("GreaterOrEqual", g.i64(np.arange(w)[None, :]), first)  # (N, w)
        valid = g.op("Unsqueeze", valid, g.i64([2]))
        zero = g.f64(0.0)
        n_rows = g.op("Cast", n, to=_DOUBLE)
        n_col = g.op("Unsqueeze", n_rows, g.i64([1]))
        summed = g.op("ReduceSum", g.op("Where", valid, rows, zero), g.i64([1]), keepdims=1)
        mean = g.op("Div", summed, g.op("Unsqueeze", n_col, g.i64([2])))
        c = g.op("Where", valid, g.op("Sub", rows, mean), zero)
        sq = g.op("ReduceSum", g.op("Mul", c, c), g.i64([1]), keepdims=0)  # (N, k)
        if self.statistic == "variance":
            per = g.op("Div", sq, n_col)
            return g.op("ReduceMean", per, g.i64([1]), keepdims=0), None
        lagged = g.op(
            "Mul",
            g.op("Slice", c, g.i64([1]), g.i64([w]), g.i64([1])),
            g.op("Slice", c, g.i64([0]), g.i64([w - 1]), g.i64([1])),
        )
        num = g.op("ReduceSum", lagged, g.i64([1]), keepdims=0)
        ok = g.op("Greater", sq, g.f64(1e-12))
        rho = g.op("Where", ok, g.op("Div", num, g.op("Where", ok, sq, g.f64(1.0))), zero)
        count = g.op("ReduceSum", g.op("Cast", ok, to=_DOUBLE), g.i64([1]), keepdims=0)
        mean_rho = g.op(
            "Div", g.op("ReduceSum", rho, g.i64([1]), keepdims=0), g.op("Max", count, g.f64(1.0))
        )
        value = g.op("Mul", g.f64(0.5), g.op("Add", g.f64(1.0), mean_rho))
        flat = g.op("Or", g.op("Less", n, g.i64(3)), g.op("Less", count, g.f64(0.5)))
        return g.op("Where", flat, g.f64(0.5), value), None

    def _params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "statistic": self.statistic,
            "n_components": self.n_components,
        }

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.mean_ is not None and self.components_ is not None
        return {"mean": self.mean_, "components": self.components_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.mean_ = np.asarray(tensors["mean"], dtype=np.float64)
        self.components_ = np.asarray(tensors["components"], dtype=np.float64)


@register_score
class ChunkConsistency(BaseScore):
    """RMS difference of consecutive mean chunks over their overlap (cheap STAC).

    The chunks sampled at t-1 cover chunk indices ``exec_horizon … H-1`` of the future that
    the chunks sampled at t cover with indices ``0 … H-1-exec_horizon``. With m_t the mean
    over the B samples, s(t) = RMS over the overlap and the action axes of
    (m_{t-1}[e:] - m_t[:H-e]) / spread, where ``spread`` is the per-axis standard deviation
    of the sampled actions over the fit rollouts; s(0) = 0.

    Parameters
    ----------
    exec_horizon : int, default=4
        Actions executed between two policy steps (< H).
    dims : sequence of int, optional
        Action dimensions to compare (default: all).
    name : str, default="consistency"

    Examples
    --------
    >>> from failguard import Rollout
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(5, 16, 8, 2))
    >>> c = ChunkConsistency(exec_horizon=2).fit([Rollout(np.zeros((5, 1)), action_samples=a)])
    >>> c.score(Rollout(np.zeros((5, 1)), action_samples=a)).shape
    (5,)
    """

    requires = ("action_samples",)
    context: ClassVar[int] = 1

    def __init__(
        self, exec_horizon: int = 4, dims: Sequence[int] | None = None, name: str = "consistency"
    ) -> None:
        super().__init__(name)
        self.exec_horizon = _check_int("ChunkConsistency", "exec_horizon", exec_horizon, 1)
        self.dims = None if dims is None else [int(d) for d in dims]
        self.inv_spread_: NDArray[np.float64] | None = None

    exportable: ClassVar[bool] = True

    def _points(self, a: NDArray[Any]) -> NDArray[np.float64]:
        x = np.asarray(a, dtype=np.float64)
        if self.dims is not None:
            if max(self.dims) >= x.shape[-1] or min(self.dims) < -x.shape[-1]:
                raise RolloutError(
                    f"ChunkConsistency: dims {self.dims} out of range for actions with "
                    f"D={x.shape[-1]}."
                )
            x = x[..., self.dims]
        return x

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        h = rollouts[0].action_samples.shape[2]  # type: ignore[union-attr]
        if self.exec_horizon >= h:
            raise RolloutError(
                f"ChunkConsistency: exec_horizon={self.exec_horizon} leaves no overlap in chunks "
                f"of length H={h}; use exec_horizon < H."
            )
        pts = [self._points(r.action_samples) for r in rollouts if r.action_samples is not None]
        flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in pts])
        std = flat.std(axis=0)
        self.inv_spread_ = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 0.0)

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.inv_spread_ is not None
        m = self._points(inputs["action_samples"]).mean(axis=1)  # (T, H, D)
        h = m.shape[1]
        e = self.exec_horizon
        out = np.zeros(m.shape[0])
        if m.shape[0] > 1:
            d = (m[:-1, e:, :] - m[1:, : h - e, :]) * self.inv_spread_
            out[1:] = np.sqrt(np.mean(d * d, axis=(1, 2)))
        return out

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """ONNX subgraph; its state is the tail ``[e:]`` of the previous mean chunk."""
        assert self.inv_spread_ is not None and self.input_shapes_ is not None
        h = int(self.input_shapes_["action_samples"][1])
        e = self.exec_horizon
        pts = "action_samples"
        if self.dims is not None:
            pts = g.op("Gather", pts, g.i64(self.dims), axis=3)
        m = g.op("ReduceMean", g.op("Cast", pts, to=_DOUBLE), g.i64([1]), keepdims=0)  # (N, H, D)
        state = g.state((h - e, self.inv_spread_.shape[0]))
        g.update_state(state, g.op("Slice", m, g.i64([e]), g.i64([h]), g.i64([1])))
        head = g.op("Slice", m, g.i64([0]), g.i64([h - e]), g.i64([1]))
        diff = g.op(
            "Mul", g.op("Sub", state, head), g.const(self.inv_spread_, np.float64, "spread")
        )
        rms = g.op("Sqrt", g.op("ReduceMean", g.op("Mul", diff, diff), g.i64([1, 2]), keepdims=0))
        return g.op("Where", g.op("Equal", "t", g.i64(0)), g.f64(0.0), rms), None

    def _params(self) -> dict[str, Any]:
        return {"exec_horizon": self.exec_horizon, "dims": self.dims}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.inv_spread_ is not None
        return {"inv_spread": self.inv_spread_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.inv_spread_ = np.asarray(tensors["inv_spread"], dtype=np.float64)
