"""Contracts for scores and monitors, for failguard's own tests and for new scores.

:func:`check_score` is the contract every score meets: output shapes, determinism, bit-exact
save and load, streaming equal to batch, and ONNX export parity where the score exports.
:func:`parametrize_with_checks` runs each check as its own pytest case (as scikit-learn's
``parametrize_with_checks`` does). :func:`check_parity` checks that a calibrated detector's
batch :class:`~failguard.Trace`, its :class:`~failguard.Monitor` and its exported
:class:`~failguard.runtime.OnnxMonitor` agree step for step.

:class:`ToyChunkPolicy` is a tiny LeRobot-style chunking policy for examples and tests.

Every check raises ``AssertionError`` with a message that names the score, the check and the
first step that differs.

Examples
--------
>>> from failguard.scores import make_score
>>> from failguard.testing import check_score
>>> check_score(make_score("entropy"))
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .scores._base import BaseScore, score_from_config
from .synthetic import make_rollouts
from .types import Rollout

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = [
    "CHECKS",
    "CheckData",
    "ToyChunkPolicy",
    "check_data",
    "check_export",
    "check_parity",
    "check_save_load",
    "check_score",
    "check_score_determinism",
    "check_score_output",
    "check_streaming",
    "parametrize_with_checks",
]

#: Relative and absolute tolerance where float32 batching may round differently.
RTOL, ATOL = 1e-5, 1e-6
_STEP_ARGS = {
    "embeddings": "embedding",
    "action_samples": "action_samples",
    "action_logits": "action_logits",
    "action_ids": "action_ids",
}


@dataclass(frozen=True)
class CheckData:
    """Rollouts for the checks: fit, calibration and test sets with every rollout field."""

    fit: list[Rollout]
    calibration: list[Rollout]
    test: list[Rollout]


@functools.lru_cache(maxsize=4)
def check_data(seed: int = 0, length: int = 30) -> CheckData:
    """Small synthetic rollouts carrying every field (embeddings, chunks, logits and ids).

    The test set holds a success, a benign OOD rollout and a failure.
    """
    kw: dict[str, Any] = {
        "length": length,
        "embedding_dim": 8,
        "n_samples": 8,
        "horizon": 6,
        "action_dim": 2,
        "n_discrete": 3,
    }
    return CheckData(
        fit=make_rollouts(8, seed=seed, **kw),
        calibration=make_rollouts(12, seed=seed + 1, **kw),
        test=make_rollouts(1, seed=seed + 2, **kw)
        + make_rollouts(1, kind="ood_benign", seed=seed + 3, **kw)
        + make_rollouts(1, kind="failure", seed=seed + 4, **kw),
    )


def _fitted(score: BaseScore, data: CheckData) -> BaseScore:
    """A fitted copy; the score passed in is left as it was."""
    return copy.deepcopy(score).fit(data.fit)


def _where(score: BaseScore, check: str) -> str:
    return f"{check}({type(score).__name__} {score.name!r})"


def check_score_output(score: BaseScore, data: CheckData | None = None) -> None:
    """One finite float64 value per step, the same through ``score`` and ``score_many``."""
    data = data or check_data()
    s = _fitted(score, data)
    where = _where(score, "check_score_output")
    assert s.is_fitted, f"{where}: fit did not record the input shapes."
    assert set(s.requires) <= set(_STEP_ARGS), f"{where}: requires {s.requires}."
    single = [s.score(r) for r in data.test]
    for r, out in zip(data.test, single, strict=True):
        assert isinstance(out, np.ndarray) and out.dtype == np.float64, (
            f"{where}: score must return a float64 array, got {type(out).__name__} "
            f"{getattr(out, 'dtype', '')}."
        )
        assert out.shape == (len(r),), f"{where}: shape {out.shape}, expected ({len(r)},)."
        assert np.all(np.isfinite(out)), f"{where}: non-finite scores on finite inputs."
    many = s.score_many(data.test)
    assert len(many) == len(data.test), f"{where}: score_many returned {len(many)} arrays."
    for i, (a, b) in enumerate(zip(single, many, strict=True)):
        assert a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL), (
            f"{where}: score_many differs from score on rollout {i}."
        )


def check_score_determinism(score: BaseScore, data: CheckData | None = None) -> None:
    """Two fits on the same rollouts give bit-identical scores, and scoring is repeatable."""
    data = data or check_data()
    a, b = _fitted(score, data), _fitted(score, data)
    where = _where(score, "check_score_determinism")
    for i, r in enumerate(data.test):
        first = a.score(r)
        assert np.array_equal(first, a.score(r)), f"{where}: scoring rollout {i} twice differs."
        assert np.array_equal(first, b.score(r)), (
            f"{where}: two fits on the same rollouts score rollout {i} differently; seed "
            "every random draw from the score's parameters."
        )


def check_save_load(score: BaseScore, data: CheckData | None = None) -> None:
    """The config survives JSON, the tensors safetensors, and the loaded score is bit-exact."""
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    data = data or check_data()
    s = _fitted(score, data)
    where = _where(score, "check_save_load")
    config = s.get_config()
    text = json.dumps(config)  # raises on anything JSON cannot hold
    tensors = {k: np.ascontiguousarray(v) for k, v in s.get_tensors().items()}
    loaded = score_from_config(json.loads(text), st_load(st_save(tensors)) if tensors else {})
    assert type(loaded) is type(s) and loaded.name == s.name, f"{where}: wrong type or name."
    assert loaded.get_config() == json.loads(text), f"{where}: the config changed on load."
    for i, r in enumerate(data.test):
        assert np.array_equal(s.score(r), loaded.score(r)), (
            f"{where}: the loaded score differs on rollout {i}; some fitted state is not in "
            "_fitted/_tensors, or _restore does not rebuild it exactly."
        )


def check_streaming(score: BaseScore, data: CheckData | None = None) -> None:
    """Step by step, from rows t-context … t only (what a monitor has), equals the batch."""
    data = data or check_data()
    s = _fitted(score, data)
    where = _where(score, "check_streaming")
    for i, r in enumerate(data.test):
        batch = s.score(r)
        for t in range(len(r)):
            lo = max(0, t - s.context)
            inputs: dict[str, NDArray[Any]] = {f: getattr(r, f)[lo : t + 1] for f in s.requires}
            inputs["t"] = np.arange(lo, t + 1, dtype=np.int64)
            step = float(s.score_steps(inputs)[-1])
            assert np.isclose(step, batch[t], rtol=RTOL, atol=ATOL), (
                f"{where}: rollout {i} step {t}: streamed {step!r}, batch {batch[t]!r}. A score "
                f"that reads more than context={s.context} past steps must declare them."
            )


def check_export(score: BaseScore, data: CheckData | None = None) -> None:
    """An exportable score exports, and its ONNX monitor agrees with the Monitor
    (:func:`check_parity`); the exporter refuses any other score with an ``ExportError``."""
    from .detector import FailureDetector
    from .exceptions import ExportError
    from .exporters import export_onnx

    data = data or check_data()
    det = FailureDetector([copy.deepcopy(score)], windows=3, alpha=0.2)
    det.fit(data.fit, progress=False).calibrate(data.calibration, progress=False)
    if not score.exportable:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export_onnx(det, Path(tmp) / "m.onnx")
            except ExportError:
                return
        raise AssertionError(
            f"{_where(score, 'check_export')}: exportable is False, yet the exporter wrote it."
        )
    try:
        check_parity(det, data.test, onnx=True)
    except ExportError as err:
        raise AssertionError(
            f"{_where(score, 'check_export')}: exportable is True, but the exporter refuses "
            f"it ({err})."
        ) from err


#: The checks :func:`check_score` runs, in order.
CHECKS: tuple[Callable[[BaseScore, CheckData | None], None], ...] = (
    check_score_output,
    check_score_determinism,
    check_save_load,
    check_streaming,
    check_export,
)


def check_score(score: BaseScore, data: CheckData | None = None) -> None:
    """Run every check of :data:`CHECKS` on an unfitted ``score`` (it is left unfitted).

    Parameters
    ----------
    score : BaseScore
        An unfitted score; each check fits its own copy.
    data : CheckData, optional
        Default :func:`check_data`: small synthetic rollouts with every field.

    Raises
    ------
    AssertionError
        At the first broken contract, naming the check and the step.
    """
    for check in CHECKS:
        check(score, data)


def parametrize_with_checks(scores: Sequence[BaseScore]) -> Any:
    """A ``pytest.mark.parametrize`` over every (score, check) pair, with readable ids.

    Examples
    --------
    >>> from failguard.scores import make_score
    >>> mark = parametrize_with_checks([make_score("ace")])
    >>> mark.args[0], len(mark.args[1])
    ('score, check', 5)
    """
    import pytest

    cases = [(s, c) for s in scores for c in CHECKS]
    ids = [f"{s.name}-{c.__name__}" for s, c in cases]
    return pytest.mark.parametrize("score, check", cases, ids=ids)


def check_parity(
    detector: FailureDetector,
    rollouts: Sequence[Rollout],
    onnx: bool | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> None:
    """Check that the batch Trace, the Monitor and the OnnxMonitor agree at every step.

    Parameters
    ----------
    detector : FailureDetector
        Fitted and calibrated.
    rollouts : sequence of Rollout
        Replayed one step at a time (with their group where the detector is Mondrian).
    onnx : bool, optional
        Also export and replay through :class:`~failguard.runtime.OnnxMonitor`. Default: when
        every score is exportable.
    rtol, atol : float
        Tolerance on scores, windowed scores, thresholds and ratios (float32 networks round
        differently in batch and step by step). Alarms must agree exactly.

    Raises
    ------
    AssertionError
        At the first step where two of them disagree.
    """
    if onnx is None:
        onnx = all(s.exportable for s in detector.scores)
    onnx_mon = None
    tmp = None
    if onnx:
        from .exporters import export_onnx
        from .runtime import OnnxMonitor

        tmp = tempfile.TemporaryDirectory()
        onnx_mon = OnnxMonitor(export_onnx(detector, Path(tmp.name) / "monitor.onnx"))
    try:
        for i, r in enumerate(rollouts):
            group = r.group if detector.mondrian else None
            trace = detector.score(r, group=group)
            mon = detector.monitor(group=group)
            if onnx_mon is not None:
                onnx_mon.reset(group)
            for t in range(len(r)):
                args = {_STEP_ARGS[f]: getattr(r, f)[t] for f in detector.requires}
                verdicts = {"Monitor": mon.step(**args)}
                if onnx_mon is not None:
                    verdicts["OnnxMonitor"] = onnx_mon.step(**args)
                for who, v in verdicts.items():
                    where = f"check_parity: rollout {i} step {t}, Trace vs {who}"
                    assert v.step == t, f"{where}: step counter {v.step}."
                    assert bool(v.alarm) == bool(trace.alarm[t]), f"{where}: alarm differs."
                    for part in ("scores", "windowed", "thresholds", "ratios"):
                        got, want = getattr(v, part), getattr(trace, part)
                        assert set(got) == set(want), f"{where}: {part} names differ."
                        for n in want:
                            assert np.isclose(got[n], want[n][t], rtol=rtol, atol=atol), (
                                f"{where}: {part}[{n!r}] = {got[n]!r}, trace {want[n][t]!r}."
                            )
                    assert np.isclose(v.fused_ratio, trace.fused[t], rtol=rtol, atol=atol), (
                        f"{where}: fused ratio {v.fused_ratio!r}, trace {trace.fused[t]!r}."
                    )
    finally:
        if tmp is not None:
            tmp.cleanup()


class ToyChunkPolicy(nn.Module):
    """A tiny stand-in for a LeRobot chunking policy, for examples and tests.

    It has LeRobot's interface and mechanics: ``config.n_action_steps``, an ``encoder``
    submodule, an action queue in ``_queues["action"]`` refilled by ``select_action`` when
    empty, and a stochastic ``predict_action_chunk`` (draws with ``torch.randn``, like a
    diffusion or flow policy's noise). Like a generative policy off its training data, it
    becomes multi-modal when the observation is far from the unit ball it "was trained" on:
    each sampled chunk then veers to one of two sides.

    Parameters
    ----------
    obs_dim, embed_dim, horizon, action_dim, n_action_steps : int
    noise : float, default=0.02
        Spread of the samples in distribution.
    seed : int, default=0
        Initialises the weights.

    Examples
    --------
    >>> import torch
    >>> p = ToyChunkPolicy(obs_dim=4)
    >>> tuple(p.predict_action_chunk({"observation.state": torch.zeros(5, 4)}).shape)
    (5, 8, 2)
    """

    def __init__(
        self,
        obs_dim: int = 4,
        embed_dim: int = 16,
        horizon: int = 8,
        action_dim: int = 2,
        n_action_steps: int = 4,
        noise: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(
            n_action_steps=n_action_steps, chunk_size=horizon, action_dim=action_dim
        )
        self.encoder = nn.Sequential(nn.Linear(obs_dim, embed_dim), nn.Tanh())
        self.head = nn.Linear(embed_dim, horizon * action_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.noise = noise
        self._queues: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Clear the action queue."""
        from collections import deque

        self._queues = {"action": deque(maxlen=self.config.n_action_steps)}

    @torch.no_grad()
    def predict_action_chunk(self, batch: Any) -> torch.Tensor:
        """Sample one chunk (H, D) per batch row; returns (N, H, D)."""
        obs = batch["observation.state"]
        n = obs.shape[0]
        h, d = self.config.chunk_size, self.config.action_dim
        mean = self.head(self.encoder(obs)).view(n, h, d)
        ood = torch.clamp(obs.norm(dim=-1) - 1.0, min=0.0).view(n, 1, 1)
        side = torch.where(torch.rand(n, 1, 1) < 0.5, -1.0, 1.0)
        ramp = torch.linspace(0.0, 1.0, h).view(1, h, 1)
        return mean + self.noise * torch.randn(n, h, d) + ood * side * ramp

    @torch.no_grad()
    def select_action(self, batch: Any) -> torch.Tensor:
        """Pop the next queued action (1, D), predicting a new chunk when the queue is empty."""
        queue = self._queues["action"]
        if len(queue) == 0:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            queue.extend(chunk.transpose(0, 1))
        return queue.popleft()
