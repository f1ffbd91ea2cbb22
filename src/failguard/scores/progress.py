"""A progress indicator learned from successful rollouts only.

A small MLP reads the policy's embedding and predicts how many steps a *successful* rollout
still needs, r̂(t) (trained on the fit rollouts, where the remaining steps are known:
T_i - 1 - t). A rollout that makes progress sees r̂ fall by about one step per step; a stuck
one sees r̂ stay put while t keeps growing. Two ways to turn that into a failure score, both
in units of L, the median length of the fit rollouts:

``mode="completion"``
    The projected completion time, s(t) = (t + r̂(t)) / L. About T_i / L on a success; on a
    stuck rollout it grows with t from the moment progress stops, and passes every success's
    value ``r̂`` steps before the rollout outlasts the longest success.
``mode="shortfall"``
    Progress missing over the last ``lag`` steps, s(t) = max(0, Δt - (r̂(t-Δt) - r̂(t))) / L
    with Δt = min(t, lag): 0 while the rollout progresses as fast as the clock, Δt / L while
    it is stuck. It does not read t itself, so it is free of "took longer than any success".

Both are calibrated like every other score (per-rollout maximum, n+1 conformal rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..exceptions import ConfigError
from ..types import Rollout
from ._base import BaseScore, register_score, step_index
from .rnd import torch_threads

__all__ = ["ProgressNetwork", "ProgressScore"]


class ProgressNetwork(nn.Module):
    """Standardisation buffers and an MLP (ReLU) from the embedding to r̂ / L."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, d_in: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("inv_std", torch.ones(d_in))
        layers: list[nn.Module] = []
        width = d_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted remaining fraction r̂ / L per row, shape (N,), clipped at 0."""
        z = (x - self.mean) * self.inv_std
        return torch.relu(self.net(z)[:, 0])


@register_score
class ProgressScore(BaseScore):
    """Missing progress, from a remaining-steps model fitted on successes.

    Parameters
    ----------
    mode : {"completion", "shortfall"}, default="completion"
        See the module docstring.
    lag : int, default=10
        Steps over which ``"shortfall"`` measures progress.
    history : int, default=0
        The model also reads the embeddings of the ``history`` previous steps (steps before the
        first repeat the first), so it can tell where a rollout is going, not just where it is.
        The ONNX graph keeps those embeddings as per-robot state.
    hidden : sequence of int, default=(128, 128)
    epochs : int, default=150
    lr : float, default=1e-3
    weight_decay : float, default=1e-4
    batch_size : int, default=256
    seed : int, default=0
    name : str, optional
        Default ``"progress"`` (completion) or ``"progress_shortfall"``.

    Attributes
    ----------
    length_ : float
        L, the median length of the fit rollouts (the unit of the score).
    network_ : ProgressNetwork

    Examples
    --------
    >>> from failguard import Rollout
    >>> line = [Rollout(np.outer(np.linspace(0, 1, 40), np.ones(4)), success=True)] * 4
    >>> p = ProgressScore(epochs=300).fit(line)
    >>> stuck = Rollout(np.zeros((60, 4)))
    >>> bool(p.score(stuck)[-1] > 1.3 and p.score(line[0]).max() < 1.2)
    True
    """

    MODES: ClassVar[tuple[str, ...]] = ("completion", "shortfall")

    def __init__(
        self,
        mode: str = "completion",
        lag: int = 10,
        history: int = 0,
        hidden: Sequence[int] = (128, 128),
        epochs: int = 150,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise ConfigError(
                f"The 'mode' parameter of ProgressScore must be one of {self.MODES}. "
                f"Got {mode!r} instead."
            )
        super().__init__(name or ("progress" if mode == "completion" else "progress_shortfall"))
        for label, value in (("lag", lag), ("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"The '{label}' parameter of ProgressScore must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ConfigError(
                "The 'history' parameter of ProgressScore must be an int >= 0. "
                f"Got {history!r} instead."
            )
        self.mode = mode
        self.lag = lag
        self.history = history
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = epochs
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.length_: float | None = None
        self.network_: ProgressNetwork | None = None

    @property
    def context(self) -> int:  # type: ignore[override]
        """Rows read before t: ``history``, plus ``lag`` for ``"shortfall"``."""
        return self.history + (self.lag if self.mode == "shortfall" else 0)

    exportable: ClassVar[bool] = True

    def features(self, embeddings: NDArray[Any]) -> NDArray[np.float32]:
        """The model's input per row: the embedding and its ``history`` predecessors."""
        x = np.asarray(embeddings, dtype=np.float32)
        if not self.history:
            return np.array(x, dtype=np.float32)
        rows = np.arange(x.shape[0])
        lagged = [x[np.maximum(rows - k, 0)] for k in range(self.history + 1)]
        return np.ascontiguousarray(np.concatenate(lagged, axis=1))

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """(t + L·r̂) / L, with the MLP in float32 (Gemm + Relu) as torch computes it.

        ``"shortfall"`` keeps the last ``lag`` values of r̂ (oldest first) as its state, and
        ``history > 0`` the last ``history`` embeddings (oldest first, exact in float64).
        """
        assert self.network_ is not None and self.length_ is not None
        net = self.network_
        x = "embeddings"
        if self.history:
            h = self.history
            d = int(net.mean.shape[0]) // (h + 1)
            row = g.op("Unsqueeze", g.op("Cast", "embeddings", to=11), g.i64([1]))  # (N, 1, d)
            seen = g.state((h, d))
            # at t == 0 every earlier embedding is the first one (rows max(0, t - k))
            first = g.op("Unsqueeze", g.op("Equal", "t", g.i64(0)), g.i64([1, 2]))
            past = g.op("Where", first, row, seen)  # (N, h, d): x_{t-h} ... x_{t-1}
            if h == 1:
                g.update_state(seen, row)
            else:
                keep = g.op("Slice", past, g.i64([1]), g.i64([h]), g.i64([1]))
                g.update_state(seen, g.op("Concat", keep, row, axis=1))
            newest_first = g.op("Gather", past, g.i64(list(range(h - 1, -1, -1))), axis=1)
            lagged = g.op("Concat", row, newest_first, axis=1)  # x_t, x_{t-1}, ..., x_{t-h}
            x = g.op("Cast", g.op("Flatten", lagged, axis=1), to=1)  # as features(): float32
        z = g.op(
            "Mul",
            g.op("Sub", x, g.const(net.mean.numpy(), np.float32, "progress_mean")),
            g.const(net.inv_std.numpy(), np.float32, "progress_inv_std"),
        )
        linears = [m for m in net.net if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            w = lin.weight.detach().numpy()
            b = lin.bias.detach().numpy()
            z = g.op("Gemm", z, g.const(w, np.float32, "w"), g.const(b, np.float32, "b"), transB=1)
            if i < len(linears) - 1:
                z = g.op("Relu", z)
        frac = g.op("Cast", g.op("Squeeze", g.op("Relu", z), g.i64([1])), to=11)  # float64
        length = g.f64(self.length_)
        remaining = g.op("Mul", frac, length)
        if self.mode == "shortfall":
            col = g.op("Unsqueeze", remaining, g.i64([1]))  # (N, 1)
            state = g.state((self.lag,))
            # at t == 0 every earlier prediction is the first one (reference max(0, t - lag))
            first = g.op("Unsqueeze", g.op("Equal", "t", g.i64(0)), g.i64([1]))
            past = g.op("Where", first, col, state)
            if self.lag == 1:
                g.update_state(state, col)
            else:
                keep = g.op("Slice", past, g.i64([1]), g.i64([self.lag]), g.i64([1]))
                g.update_state(state, g.op("Concat", keep, col, axis=1))
            ref = g.op(
                "Squeeze", g.op("Slice", past, g.i64([0]), g.i64([1]), g.i64([1])), g.i64([1])
            )
            elapsed = g.op("Cast", g.op("Min", "t", g.i64(self.lag)), to=11)
            gap = g.op("Relu", g.op("Sub", elapsed, g.op("Sub", ref, remaining)))
            return g.op("Div", gap, length), None
        t = g.op("Cast", "t", to=11)
        return g.op("Div", g.op("Add", t, remaining), length), None

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        from tqdm.auto import tqdm

        lengths = np.array([len(r) for r in rollouts], dtype=np.float64)
        length = float(max(np.median(lengths), 1.0))
        x = torch.from_numpy(np.concatenate([self.features(r.embeddings) for r in rollouts]))
        y = torch.from_numpy(
            np.concatenate([(len(r) - 1 - np.arange(len(r))) / length for r in rollouts]).astype(
                np.float32
            )
        )
        with torch.random.fork_rng(devices=[]), torch_threads(1):
            torch.manual_seed(self.seed)
            net = ProgressNetwork(x.shape[1], self.hidden)
            std = x.std(dim=0) if x.shape[0] > 1 else torch.ones(x.shape[1])
            net.mean.copy_(x.mean(dim=0))
            net.inv_std.copy_(torch.where(std > 1e-8, 1.0 / std, torch.ones_like(std)))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs, self.lr * 0.01)
            gen = torch.Generator().manual_seed(self.seed)
            for _ in tqdm(
                range(self.epochs), desc=f"fit {self.name}", disable=not progress, leave=False
            ):
                perm = torch.randperm(x.shape[0], generator=gen)
                for start in range(0, x.shape[0], self.batch_size):
                    idx = perm[start : start + self.batch_size]
                    z = (x[idx] - net.mean) * net.inv_std
                    loss = ((net.net(z)[:, 0] - y[idx]) ** 2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                sched.step()
        net.eval()
        self.network_ = net
        self.length_ = length

    def remaining(self, embeddings: NDArray[Any]) -> NDArray[np.float64]:
        """r̂ in steps for each row of ``embeddings`` (T, d)."""
        self._check_fitted()
        assert self.network_ is not None and self.length_ is not None
        x = torch.from_numpy(self.features(embeddings))
        with torch.no_grad():
            frac = self.network_(x).double().numpy()
        return np.asarray(frac * self.length_, dtype=np.float64)

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.length_ is not None
        r = self.remaining(inputs["embeddings"])
        if self.mode == "completion":
            t = step_index(inputs, r.shape[0]).astype(np.float64)
            return (t + r) / self.length_
        rows = np.arange(r.shape[0])
        ref = np.maximum(rows - self.lag, 0)
        elapsed = (rows - ref).astype(np.float64)
        return np.maximum(elapsed - (r[ref] - r), 0.0) / self.length_

    def _params(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "lag": self.lag,
            "history": self.history,
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def _fitted(self) -> dict[str, Any]:
        assert self.network_ is not None and self.length_ is not None
        return {"d_in": int(self.network_.mean.shape[0]), "length": self.length_}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.network_ is not None
        return {k: v.detach().numpy() for k, v in self.network_.state_dict().items()}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        net = ProgressNetwork(int(fitted["d_in"]), self.hidden)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        net.eval()
        self.network_ = net
        self.length_ = float(fitted["length"])
