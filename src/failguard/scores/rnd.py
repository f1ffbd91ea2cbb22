"""RND-OE: random network distillation on the policy's observation embedding (FIPER, indicator 1).

A frozen random *target* MLP g and a trainable *predictor* MLP f see the same (optionally
standardised) embedding e_t. f is trained to imitate g on embeddings of successful
rollouts, so s(t) = ‖f(e_t) - g(e_t)‖₂ stays small on familiar embeddings and grows on
unfamiliar ones. Training splits train/validation **by rollout** (steps of one rollout are
never on both sides), uses AdamW with a cosine schedule and early stopping, and is seeded.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..core.kernel import split_indices
from ..exceptions import ParameterError
from ..types import Rollout
from ._base import BaseScore, register_score

__all__ = ["RNDNetwork", "RNDScore"]

log = logging.getLogger(__name__)

PAPER_TARGET = (1024, 2048, 4096)
PAPER_PREDICTOR = (1024, 2048, 4096, 2048, 1024)
PAPER_OUTPUT = 512
#: Largest layer width (and input size) a saved RNDScore may declare; checked before anything
#: is allocated (the paper's widest layer is 4096).
MAX_WIDTH = 65536


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_widths(label: str, widths: Any) -> None:
    ok = (
        not isinstance(widths, (str, bytes))
        and isinstance(widths, Sequence)
        and len(widths) <= 16
        and all(
            not isinstance(h, bool) and isinstance(h, numbers.Integral) and 1 <= int(h) <= MAX_WIDTH
            for h in widths
        )
    )
    if not ok:
        raise ParameterError(
            f"The '{label}' parameter of RNDScore must be at most 16 ints in [1, {MAX_WIDTH}]. "
            f"Got {widths!r} instead."
        )


def _parse_device(device: Any) -> str:
    """A torch device name, checked (not yet for availability)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ParameterError(
            f"The 'device' parameter of RNDScore must be a torch device name such as 'cpu' or "
            f"'cuda'. Got {device!r} instead."
        )
    try:
        return str(torch.device(device))
    except (RuntimeError, ValueError):
        raise ParameterError(
            f"The 'device' parameter of RNDScore must be a torch device name such as 'cpu' or "
            f"'cuda'. Got {device!r} instead."
        ) from None


def _available(device: str) -> torch.device:
    """``torch.device(device)``, or a ParameterError that says why it cannot be used."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"RNDScore: device {device!r} was asked for, but torch sees no CUDA device "
            "(torch.cuda.is_available() is False). Use device='cpu' here."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParameterError(
            f"RNDScore: device {device!r} does not exist; torch sees "
            f"{torch.cuda.device_count()} CUDA device(s)."
        )
    return dev


def _mlp(d_in: int, hidden: Sequence[int], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU()]
        width = h
    layers.append(nn.Linear(width, d_out))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=math.sqrt(2.0))
            nn.init.zeros_(m.bias)
    return net


class RNDNetwork(nn.Module):
    """Standardisation buffers, frozen target and trainable predictor; forward gives s(t).

    Parameters
    ----------
    d_in : int
        Input size.
    target_hidden, predictor_hidden : sequence of int
        Hidden widths of g and f.
    output_dim : int
        Output size of both.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(
        self,
        d_in: int,
        target_hidden: Sequence[int],
        predictor_hidden: Sequence[int],
        output_dim: int,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("inv_std", torch.ones(d_in))
        self.target = _mlp(d_in, target_hidden, output_dim)
        self.predictor = _mlp(d_in, predictor_hidden, output_dim)
        for p in self.target.parameters():
            p.requires_grad_(False)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """f(z) - g(z) with z the standardised input, shape (N, output_dim)."""
        z = (x - self.mean) * self.inv_std
        return self.predictor(z) - self.target(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """s = ‖f(z) - g(z)‖₂ per row, shape (N,)."""
        return torch.linalg.vector_norm(self.residual(x), dim=-1)


def _split_by_rollout(
    n: int, fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(fraction * n)))
    val, train = split_indices(n, n_val, rng)
    return sorted(train.tolist()), sorted(val.tolist())


@register_score
class RNDScore(BaseScore):
    """Random network distillation OOD score on the policy's embedding.

    The defaults are small enough for an edge budget (about 70 k multiply-adds a step for a
    64-d embedding); :meth:`paper` gives the reference sizes (about 34 M) for comparison.

    Parameters
    ----------
    target_hidden : tuple of int, default=(128,)
        Hidden widths of the frozen random target g.
    predictor_hidden : tuple of int, default=(256, 128)
        Hidden widths of the trained predictor f (somewhat larger than g).
    output_dim : int, default=64
    standardize : bool, default=True
        Standardise embeddings with the fitting data's mean and std (fitted buffers, part of
        the exported graph). The reference does not.
    lr, weight_decay : float
        AdamW settings; the learning rate follows a cosine schedule down to
        ``lr * min_lr_ratio``.
    batch_size : int, default=256
    max_epochs : int, default=50
    patience : int, default=7
        Early stopping on the validation loss (epochs without improvement).
    val_fraction : float, default=0.2
        Fraction of the fitting rollouts (whole rollouts) held out for early stopping.
    seed : int, default=0
    train_threads : int or None, default=1
        torch intra-op threads while training (restored afterwards). Small MLPs train
        fastest on one thread, and many times slower with two on a busy machine; None keeps
        torch's setting.
    device : str, default="cpu"
        torch device the networks train and score on, e.g. ``"cuda"`` for the paper-size
        networks (:meth:`paper`). Weights are initialised on the CPU with the seed and then
        moved, so every device starts from the same networks. The device is a placement, not
        part of the model: it is not saved, a loaded score runs on the CPU, and :meth:`to`
        moves a fitted score.
    name : str, default="rnd"

    Examples
    --------
    >>> import numpy as np
    >>> from failguard import Rollout
    >>> rng = np.random.default_rng(0)
    >>> rollouts = [Rollout(rng.normal(size=(50, 8)), success=True) for _ in range(6)]
    >>> rnd = RNDScore(max_epochs=5).fit(rollouts)
    >>> ood = Rollout(rng.normal(size=(50, 8)) + 6.0)
    >>> bool(rnd.score(ood).mean() > rnd.score(rollouts[0]).mean())
    True
    """

    exportable = True

    def __init__(
        self,
        target_hidden: Sequence[int] = (128,),
        predictor_hidden: Sequence[int] = (256, 128),
        output_dim: int = 64,
        standardize: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 256,
        max_epochs: int = 50,
        patience: int = 7,
        val_fraction: float = 0.2,
        min_lr_ratio: float = 0.01,
        seed: int = 0,
        train_threads: int | None = 1,
        device: str = "cpu",
        name: str = "rnd",
    ) -> None:
        super().__init__(name)
        for label, value in (
            ("output_dim", output_dim),
            ("batch_size", batch_size),
            ("max_epochs", max_epochs),
            ("patience", patience),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(
                    f"The '{label}' parameter of RNDScore must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        if not 0 <= val_fraction < 1:
            raise ParameterError(
                "The 'val_fraction' parameter of RNDScore must be a float in the range [0, 1). "
                f"Got {val_fraction!r} instead."
            )
        if not lr > 0:
            raise ParameterError(f"The 'lr' parameter of RNDScore must be > 0. Got {lr!r} instead.")
        _check_widths("target_hidden", target_hidden)
        _check_widths("predictor_hidden", predictor_hidden)
        _check_widths("output_dim", [output_dim])
        self.target_hidden = tuple(int(h) for h in target_hidden)
        self.predictor_hidden = tuple(int(h) for h in predictor_hidden)
        self.output_dim = int(output_dim)
        self.standardize = bool(standardize)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = float(val_fraction)
        self.min_lr_ratio = float(min_lr_ratio)
        self.seed = int(seed)
        self.train_threads = None if train_threads is None else int(train_threads)
        self.device = _parse_device(device)
        self.network_: RNDNetwork | None = None
        self.history_: dict[str, list[float]] = {"train": [], "val": []}
        self.best_epoch_: int = -1

    @classmethod
    def paper(cls, **overrides: Any) -> RNDScore:
        """The reference sizes and optimiser (METHOD.md §2): ≈34 M parameters, lr 1e-4, 250 epochs.

        Examples
        --------
        >>> RNDScore.paper().predictor_hidden
        (1024, 2048, 4096, 2048, 1024)
        """
        params: dict[str, Any] = {
            "target_hidden": PAPER_TARGET,
            "predictor_hidden": PAPER_PREDICTOR,
            "output_dim": PAPER_OUTPUT,
            "standardize": False,
            "lr": 1e-4,
            "weight_decay": 1e-5,
            "batch_size": 256,
            "max_epochs": 250,
            "patience": 7,
            "min_lr_ratio": 1e-2,
            "train_threads": None,
        }
        params.update(overrides)
        return cls(**params)

    # ------------------------------------------------------------------ features
    def features(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        """The (T, d) matrix the networks see."""
        return np.asarray(inputs["embeddings"], dtype=np.float32)

    def _rollout_features(self, r: Rollout) -> NDArray[np.float32]:
        return self.features(self._inputs_of(r))

    # ------------------------------------------------------------------ fit
    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        from tqdm.auto import tqdm

        rng = np.random.default_rng(self.seed)
        train_idx, val_idx = _split_by_rollout(len(rollouts), self.val_fraction, rng)
        x_train = np.concatenate([self._rollout_features(rollouts[i]) for i in train_idx])
        x_val = (
            np.concatenate([self._rollout_features(rollouts[i]) for i in val_idx])
            if val_idx
            else x_train
        )
        if not val_idx:
            log.warning("RNDScore: fewer than 2 rollouts; early stopping uses the training loss.")
        with torch_threads(self.train_threads):
            net = self._fit_network(x_train, x_val, progress, tqdm)
        net.eval()
        self.network_ = net

    def _fit_network(
        self, x_train: NDArray[np.float32], x_val: NDArray[np.float32], progress: bool, tqdm: Any
    ) -> RNDNetwork:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = RNDNetwork(
                x_train.shape[1], self.target_hidden, self.predictor_hidden, self.output_dim
            )
            if self.standardize:
                mean = x_train.mean(axis=0)
                std = x_train.std(axis=0)
                std = np.where(std > 1e-8, std, 1.0)
                net.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
                net.inv_std.copy_(torch.from_numpy((1.0 / std).astype(np.float32)))
            dev = _available(self.device)
            net.to(dev)
            self._train(
                net,
                torch.from_numpy(x_train).to(dev),
                torch.from_numpy(x_val).to(dev),
                progress,
                tqdm,
            )
        return net

    def _train(
        self, net: RNDNetwork, x_train: torch.Tensor, x_val: torch.Tensor, progress: bool, tqdm: Any
    ) -> None:
        opt = torch.optim.AdamW(
            net.predictor.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self.max_epochs, eta_min=self.lr * self.min_lr_ratio
        )
        gen = torch.Generator().manual_seed(self.seed)
        best_val, best_state, stale = math.inf, copy.deepcopy(net.state_dict()), 0
        self.history_ = {"train": [], "val": []}
        bar = tqdm(
            range(self.max_epochs), desc=f"fit {self.name}", disable=not progress, leave=False
        )
        for epoch in bar:
            net.train()
            perm = torch.randperm(x_train.shape[0], generator=gen)
            total = 0.0
            for start in range(0, x_train.shape[0], self.batch_size):
                batch = x_train[perm[start : start + self.batch_size]]
                loss = net(batch).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * batch.shape[0]
            sched.step()
            net.eval()
            with torch.no_grad():
                val = float(
                    torch.cat(
                        [net(x_val[i : i + 4096]) for i in range(0, x_val.shape[0], 4096)]
                    ).mean()
                )
            self.history_["train"].append(total / x_train.shape[0])
            self.history_["val"].append(val)
            bar.set_postfix(val=f"{val:.4f}", refresh=False)
            if val < best_val - 1e-7:
                best_val, best_state, stale = val, copy.deepcopy(net.state_dict()), 0
                self.best_epoch_ = epoch
            else:
                stale += 1
                if stale >= self.patience:
                    break
        else:
            if self.max_epochs > 1 and self.best_epoch_ == self.max_epochs - 1:
                warnings.warn(
                    f"RNDScore {self.name!r}: training stopped at max_epochs={self.max_epochs} "
                    "while the validation loss was still falling (the last epoch was the "
                    "best). The score may be undertrained; raise max_epochs (CLI: --epochs).",
                    UserWarning,
                    stacklevel=5,
                )
        net.load_state_dict(best_state)

    # ------------------------------------------------------------------ score
    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        assert self.network_ is not None
        x = torch.from_numpy(np.array(self.features(inputs), dtype=np.float32))
        with torch.no_grad():
            return self.network_(x.to(self.network_.mean.device)).double().cpu().numpy()

    def to(self, device: str) -> RNDScore:
        """Move the networks to ``device`` (training, if not yet fitted, and scoring).

        Returns
        -------
        self

        Examples
        --------
        >>> RNDScore().to("cpu").device
        'cpu'
        """
        name = _parse_device(device)
        dev = _available(name)
        self.device = name
        if self.network_ is not None:
            self.network_.to(dev)
        return self

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """ONNX subgraph: s = ||f(z) - g(z)||_2, z = (x - mean) * inv_std, in float32 like torch.

        ``Gemm`` + ``LeakyRelu`` per layer and ``ReduceL2`` of the residual, then a cast to
        float64 (see :mod:`failguard.exporters`).
        """
        assert self.network_ is not None
        net = self.network_
        mean = net.mean.detach().cpu().numpy().astype(np.float32)
        inv_std = net.inv_std.detach().cpu().numpy().astype(np.float32)
        z = "embeddings"
        if not (np.all(mean == 0) and np.all(inv_std == 1)):  # (x - 0) * 1 == x exactly
            z = g.op(
                "Mul",
                g.op("Sub", z, g.const(mean, np.float32, "rnd_mean")),
                g.const(inv_std, np.float32, "rnd_inv_std"),
            )

        def mlp(seq: nn.Sequential) -> str:
            linears = [m for m in seq if isinstance(m, nn.Linear)]
            h = z
            for i, lin in enumerate(linears):
                w = lin.weight.detach().cpu().numpy().astype(np.float32)
                b = lin.bias.detach().cpu().numpy().astype(np.float32)
                h = g.op(
                    "Gemm", h, g.const(w, np.float32, "w"), g.const(b, np.float32, "b"), transB=1
                )
                if i < len(linears) - 1:
                    h = g.op("LeakyRelu", h, alpha=0.01)
            return h

        residual = g.op("Sub", mlp(net.predictor), mlp(net.target))
        return g.op("Cast", g.op("ReduceL2", residual, g.i64([1]), keepdims=0), to=g.DOUBLE), None

    @property
    def n_parameters(self) -> int:
        """Parameters of target plus predictor."""
        self._check_fitted()
        assert self.network_ is not None
        return sum(p.numel() for p in self.network_.parameters())

    # ------------------------------------------------------------------ persistence
    def _params(self) -> dict[str, Any]:
        return {
            "target_hidden": list(self.target_hidden),
            "predictor_hidden": list(self.predictor_hidden),
            "output_dim": self.output_dim,
            "standardize": self.standardize,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "val_fraction": self.val_fraction,
            "min_lr_ratio": self.min_lr_ratio,
            "seed": self.seed,
            "train_threads": self.train_threads,
        }

    def _fitted(self) -> dict[str, Any]:
        assert self.network_ is not None
        return {
            "d_in": int(self.network_.mean.shape[0]),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
        }

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.network_ is not None
        return {k: v.detach().cpu().numpy() for k, v in self.network_.state_dict().items()}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        d_in = fitted["d_in"]
        if isinstance(d_in, bool) or not isinstance(d_in, int) or not 1 <= d_in <= MAX_WIDTH:
            raise ParameterError(
                f"RNDScore: 'd_in' must be an int in [1, {MAX_WIDTH}]; got {d_in!r}."
            )
        # Check every tensor's shape against the config before allocating the network, so an
        # edited config cannot make the loader allocate more than the weights file holds.
        expected: dict[str, tuple[int, ...]] = {"mean": (d_in,), "inv_std": (d_in,)}
        for part, hidden in (("target", self.target_hidden), ("predictor", self.predictor_hidden)):
            width = d_in
            for i, h in enumerate([*hidden, self.output_dim]):
                expected[f"{part}.{2 * i}.weight"] = (h, width)
                expected[f"{part}.{2 * i}.bias"] = (h,)
                width = h
        got = {k: tuple(np.shape(v)) for k, v in tensors.items()}
        if got != expected:
            diff = sorted(set(got) ^ set(expected)) or [
                f"{k}: {got[k]} != {expected[k]}" for k in expected if got[k] != expected[k]
            ]
            raise ParameterError(
                f"RNDScore: the weights do not match the configured network ({diff[:3]})."
            )
        for k, v in tensors.items():
            if np.asarray(v).dtype != np.float32 or not np.all(np.isfinite(v)):
                raise ParameterError(f"RNDScore: tensor {k!r} must be finite float32.")
        net = RNDNetwork(d_in, self.target_hidden, self.predictor_hidden, self.output_dim)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        net.eval()
        self.network_ = net.to(_available(self.device))
        self.best_epoch_ = int(fitted.get("best_epoch", -1))
        self.history_ = fitted.get("history", {"train": [], "val": []})
