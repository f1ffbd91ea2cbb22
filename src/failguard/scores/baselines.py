"""Baseline scores from the FIPER paper's comparison, behind the same protocol.

They exist to be benchmarked against RND-OE and ACE, not to be deployed: none is exported to
ONNX (:func:`failguard.exporters.export_onnx` says so if asked).

- :class:`STACScore` (Sentinel): MMD between consecutive batches of sampled chunks, on the
  part of the chunk that both cover.
- :class:`PCAKMeansScore`: distance of the embedding to the nearest k-means centroid in a
  PCA space fitted on successful rollouts.
- :class:`LogpZOScore` (FAIL-Detect): a flow-matching model of the embeddings; the score is
  the norm of the noise it recovers from the embedding in one Euler step.
- :class:`RNDActionScore` (RND-A): RND on the first sampled chunk instead of the embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..exceptions import ConfigError, RolloutError
from ..types import Rollout
from ._base import BaseScore, register_score
from .rnd import RNDScore, torch_threads

__all__ = ["LogpZOScore", "PCAKMeansScore", "RNDActionScore", "STACScore", "mmd_rbf"]


def mmd_rbf(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Biased (V-statistic, hence >= 0) squared MMD with an RBF kernel, per leading index.

    The bandwidth is the median heuristic: the median of the pooled pairwise squared
    distances (excluding the diagonal) of each pair of batches.

    Parameters
    ----------
    x, y : arrays of shape (T, B, F)

    Returns
    -------
    ndarray of shape (T,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(1, 64, 2))
    >>> bool(mmd_rbf(a, a + 3.0)[0] > mmd_rbf(a, rng.normal(size=(1, 64, 2)))[0])
    True
    """
    z = np.concatenate([x, y], axis=1)
    b = x.shape[1]
    sq = np.sum(z * z, axis=2)
    d2 = np.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * np.einsum("tif,tjf->tij", z, z), 0.0)
    n = z.shape[1]
    off = ~np.eye(n, dtype=bool)
    med = np.median(d2[:, off], axis=1)
    med = np.where(med > 0, med, 1.0)
    k = np.exp(-d2 / med[:, None, None])
    kxx = k[:, :b, :b].mean(axis=(1, 2))
    kyy = k[:, b:, b:].mean(axis=(1, 2))
    kxy = k[:, :b, b:].mean(axis=(1, 2))
    return np.maximum(kxx + kyy - 2.0 * kxy, 0.0)


@register_score
class STACScore(BaseScore):
    """STAC: how much the policy's sampled future changes from one step to the next.

    The chunks sampled at t-1 cover chunk indices ``exec_horizon … H-1`` of the same future
    that the chunks sampled at t cover with indices ``0 … H-1-exec_horizon``. The score is
    the MMD² between those two overlapping parts (0 at t = 0).

    Parameters
    ----------
    exec_horizon : int, default=4
        Actions executed between two policy steps.
    name : str, default="stac"
    """

    requires = ("action_samples",)
    context: ClassVar[int] = 1

    def __init__(self, exec_horizon: int = 4, name: str = "stac") -> None:
        super().__init__(name)
        if isinstance(exec_horizon, bool) or not isinstance(exec_horizon, int) or exec_horizon < 1:
            raise ConfigError(
                "The 'exec_horizon' parameter of STACScore must be an int >= 1. "
                f"Got {exec_horizon!r} instead."
            )
        self.exec_horizon = exec_horizon

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        h = rollouts[0].action_samples.shape[2]  # type: ignore[union-attr]
        if self.exec_horizon >= h:
            raise RolloutError(
                f"STACScore: exec_horizon={self.exec_horizon} leaves no overlap in chunks of "
                f"length H={h}; use exec_horizon < H."
            )

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        a = np.asarray(inputs["action_samples"], dtype=np.float64)
        t, b, h, _ = a.shape
        out = np.zeros(t)
        if t > 1:
            e = self.exec_horizon
            x = a[:-1, :, e:, :].reshape(t - 1, b, -1)
            y = a[1:, :, : h - e, :].reshape(t - 1, b, -1)
            for start in range(0, t - 1, 64):  # bounded memory at B = 256
                out[1 + start : 1 + start + 64] = mmd_rbf(
                    x[start : start + 64], y[start : start + 64]
                )
        return out

    def _params(self) -> dict[str, Any]:
        return {"exec_horizon": self.exec_horizon}


@register_score
class PCAKMeansScore(BaseScore):
    """Distance of the embedding to the nearest k-means centroid in PCA space.

    Parameters
    ----------
    n_components : int, default=8
    n_clusters : int, default=16
    seed : int, default=0
    name : str, default="pca_kmeans"
    """

    def __init__(
        self, n_components: int = 8, n_clusters: int = 16, seed: int = 0, name: str = "pca_kmeans"
    ) -> None:
        super().__init__(name)
        self.n_components = int(n_components)
        self.n_clusters = int(n_clusters)
        self.seed = int(seed)
        self.mean_: NDArray[np.float64] | None = None
        self.components_: NDArray[np.float64] | None = None
        self.centroids_: NDArray[np.float64] | None = None

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        x = np.concatenate([r.embeddings for r in rollouts]).astype(np.float64)
        k = min(self.n_components, x.shape[1], x.shape[0])
        pca = PCA(n_components=k, random_state=self.seed).fit(x)
        z = pca.transform(x)
        km = KMeans(
            n_clusters=min(self.n_clusters, x.shape[0]), n_init=4, random_state=self.seed
        ).fit(z)
        self.mean_ = pca.mean_
        self.components_ = pca.components_
        self.centroids_ = km.cluster_centers_

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.mean_ is not None and self.components_ is not None
        assert self.centroids_ is not None
        z = (np.asarray(inputs["embeddings"], dtype=np.float64) - self.mean_) @ self.components_.T
        d2 = ((z[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)
        return np.sqrt(d2.min(axis=1))

    def _params(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "n_clusters": self.n_clusters, "seed": self.seed}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.mean_ is not None and self.components_ is not None
        assert self.centroids_ is not None
        return {"mean": self.mean_, "components": self.components_, "centroids": self.centroids_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.mean_ = np.asarray(tensors["mean"])
        self.components_ = np.asarray(tensors["components"])
        self.centroids_ = np.asarray(tensors["centroids"])


class _VelocityNet(nn.Module):
    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, d: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("inv_std", torch.ones(d))
        layers: list[nn.Module] = []
        width = d + 1
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, d))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, tau[:, None]], dim=1))


@register_score
class LogpZOScore(BaseScore):
    """logpZO (FAIL-Detect): flow matching on standardised embeddings, one-step noise norm.

    The model learns the velocity v(x_τ, τ) = x - z of the path x_τ = (1-τ)·z + τ·x from
    Gaussian noise z to data x. One Euler step back from τ = 1 recovers ẑ = x - v(x, 1);
    the score is ‖ẑ‖₂, large where the embedding is unlikely under the model.

    Parameters
    ----------
    hidden : tuple of int, default=(256, 256)
    epochs : int, default=60
    lr : float, default=1e-3
    batch_size : int, default=256
    seed : int, default=0
    name : str, default="logpzo"
    """

    def __init__(
        self,
        hidden: Sequence[int] = (256, 256),
        epochs: int = 60,
        lr: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
        name: str = "logpzo",
    ) -> None:
        super().__init__(name)
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.network_: _VelocityNet | None = None

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        from tqdm.auto import tqdm

        x = torch.from_numpy(np.concatenate([r.embeddings for r in rollouts]).astype(np.float32))
        with torch.random.fork_rng(devices=[]), torch_threads(1):
            torch.manual_seed(self.seed)
            net = _VelocityNet(x.shape[1], self.hidden)
            std = x.std(dim=0)
            net.mean.copy_(x.mean(dim=0))
            net.inv_std.copy_(torch.where(std > 1e-8, 1.0 / std, torch.ones_like(std)))
            z_data = (x - net.mean) * net.inv_std
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr)
            gen = torch.Generator().manual_seed(self.seed)
            for _ in tqdm(
                range(self.epochs), desc=f"fit {self.name}", disable=not progress, leave=False
            ):
                perm = torch.randperm(z_data.shape[0], generator=gen)
                for start in range(0, z_data.shape[0], self.batch_size):
                    xb = z_data[perm[start : start + self.batch_size]]
                    noise = torch.randn(xb.shape, generator=gen)
                    tau = torch.rand(xb.shape[0], generator=gen)
                    xt = (1 - tau[:, None]) * noise + tau[:, None] * xb
                    loss = ((net(xt, tau) - (xb - noise)) ** 2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        net.eval()
        self.network_ = net

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.network_ is not None
        x = torch.from_numpy(np.array(inputs["embeddings"], dtype=np.float32))
        with torch.no_grad():
            z = (x - self.network_.mean) * self.network_.inv_std
            noise = z - self.network_(z, torch.ones(z.shape[0]))
            return torch.linalg.vector_norm(noise, dim=1).double().numpy() / math.sqrt(z.shape[1])

    def _params(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def _fitted(self) -> dict[str, Any]:
        assert self.network_ is not None
        return {"d_in": int(self.network_.mean.shape[0])}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.network_ is not None
        return {k: v.numpy() for k, v in self.network_.state_dict().items()}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        net = _VelocityNet(int(fitted["d_in"]), self.hidden)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        net.eval()
        self.network_ = net


@register_score
class RNDActionScore(RNDScore):
    """RND-A: random network distillation on the first sampled action chunk (flattened).

    Takes the same parameters as :class:`RNDScore`; default name ``"rnd_a"``.
    """

    requires = ("action_samples",)
    exportable = False

    def __init__(self, name: str = "rnd_a", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def features(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        a = np.asarray(inputs["action_samples"], dtype=np.float32)
        return np.ascontiguousarray(a[:, 0].reshape(a.shape[0], -1))
