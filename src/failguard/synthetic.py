"""A small generator of synthetic rollouts, for the quickstart, tests and benchmarks of the library
itself. It proves nothing about real policies; the simulator benchmarks do that.

Every rollout follows a shared smooth "task" trajectory in embedding space, with a policy that
samples B action chunks around a smooth mean. Three kinds:

``"nominal"``
    In distribution, confident (unimodal) action samples; a success; group ``"id"``.
``"ood_benign"``
    Embeddings shifted off the training manifold, but actions stay confident; a success;
    group ``"ood"``. A good detector stays quiet on these.
``"failure"``
    From an onset step on, the embeddings drift away and the action samples split into
    several modes that spread apart; a failure. Half are in group ``"id"``, half ``"ood"``.
``"stuck"``
    Stuck but confident: from an onset step on, the task stops progressing (the embedding
    stays where it was, in distribution), the action samples stay unimodal and the discrete
    policy becomes *more* decisive (entropy collapse); it runs until a time limit of 1.5 times
    the typical length. A failure, group ``"stuck"``. FIPER's indicators barely see it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .exceptions import ConfigError
from .types import Rollout

__all__ = ["make_rollouts", "make_score_curves"]

_WORLD_SEED = 20251012


def _world(d: int, d_act: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    w = np.random.default_rng(_WORLD_SEED)
    proj = w.normal(size=(4, d)) / 2.0
    drift_dir = w.normal(size=d)
    drift_dir /= np.linalg.norm(drift_dir)
    act_proj = w.normal(size=(4, d_act)) / 4.0
    logit_proj = w.normal(size=(d, k)) / np.sqrt(d)
    return proj, drift_dir, act_proj, logit_proj


def make_rollouts(
    n: int,
    kind: str = "nominal",
    seed: int = 0,
    length: int = 100,
    embedding_dim: int = 32,
    n_samples: int = 32,
    horizon: int = 8,
    action_dim: int = 3,
    n_discrete: int = 0,
    states: bool = False,
) -> list[Rollout]:
    """Make ``n`` synthetic rollouts of one kind.

    Parameters
    ----------
    n : int
    kind : {"nominal", "ood_benign", "failure", "stuck"}
    seed : int
    length : int, default=100
        Typical number of policy steps (successes vary by ±20 %).
    embedding_dim, n_samples, horizon, action_dim : int
        d, B, H and D.
    n_discrete : int, default=0
        If > 0, also emit ``action_logits`` (T, K) and ``action_ids`` (T, B) over K actions.
    states : bool, default=False
        Also emit ``states`` (T, 3): a position that follows the task's phase along a path
        (it stands still while a ``"stuck"`` rollout is stuck), with 1 % noise. Drawn from
        its own random stream, so the other fields are the same either way.

    Examples
    --------
    >>> rs = make_rollouts(3, kind="failure", seed=1)
    >>> [r.success for r in rs], rs[0].action_samples.shape[1:]
    ([False, False, False], (32, 8, 3))
    """
    kinds = ("nominal", "ood_benign", "failure", "stuck")
    if kind not in kinds:
        raise ConfigError(f"kind must be one of {kinds}; got {kind!r}.")
    rng = np.random.default_rng([seed, kinds.index(kind)])
    proj, drift_dir, act_proj, logit_proj = _world(embedding_dim, action_dim, max(n_discrete, 2))
    out = []
    for i in range(n):
        t_len = (
            length
            if kind == "failure"
            else int(1.5 * length)
            if kind == "stuck"
            else int(rng.integers(int(0.8 * length), int(1.2 * length) + 1))
        )
        phase = np.linspace(0, 2 * np.pi, t_len) + rng.normal(scale=0.1)
        sharpen = np.ones(t_len)
        if kind == "stuck":
            onset = int(rng.integers(int(0.15 * length), int(0.5 * length)))
            phase = np.minimum(np.arange(t_len), onset) * (2 * np.pi / (length - 1))
            phase = phase + rng.normal(scale=0.1)
            sharpen = np.where(np.arange(t_len) < onset, 1.0, 4.0)
        feats = np.stack([np.sin(phase), np.cos(phase), np.sin(2 * phase), np.cos(2 * phase)], 1)
        emb = feats @ proj + rng.normal(scale=0.15, size=(t_len, embedding_dim))
        mean_act = feats @ act_proj  # (T, D)
        spread = np.full(t_len, 0.02)
        modes = np.zeros(t_len)
        group = "stuck" if kind == "stuck" else "id"
        if kind == "ood_benign":
            offset = rng.normal(size=embedding_dim)
            emb = emb + 1.2 * offset / np.linalg.norm(offset) * np.sqrt(embedding_dim) * 0.3
            group = "ood"
        elif kind == "failure":
            onset = int(rng.integers(int(0.3 * t_len), int(0.6 * t_len)))
            ramp = np.clip((np.arange(t_len) - onset) / (0.2 * t_len), 0.0, 1.0)
            strength = 3.0 if i % 2 else 1.5
            group = "ood" if i % 2 else "id"
            emb = emb + strength * ramp[:, None] * drift_dir * np.sqrt(embedding_dim) * 0.3
            modes = ramp
        chunk_t = np.linspace(0, 1, horizon)
        base = mean_act[:, None, None, :] * (1 + chunk_t[None, None, :, None])
        noise = (
            rng.normal(size=(t_len, n_samples, horizon, action_dim)) * spread[:, None, None, None]
        )
        mode_id = rng.integers(0, 4, size=(t_len, n_samples))
        mode_dir = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float)
        mode_dir = np.pad(mode_dir, ((0, 0), (0, max(0, action_dim - 3))))[:, :action_dim]
        split = (
            modes[:, None, None, None]
            * 0.4
            * chunk_t[None, None, :, None]
            * mode_dir[mode_id][:, :, None, :]
        )
        samples = base + noise + split
        extra: dict[str, Any] = {}
        if n_discrete > 0:
            temp = (0.3 + 3.0 * modes) / sharpen
            logits = (emb @ logit_proj)[:, :n_discrete] * 3.0 / temp[:, None]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            cdf = np.cumsum(p, axis=1)
            u = rng.random((t_len, n_samples, 1))
            ids = np.minimum((u > cdf[:, None, :]).sum(axis=2), n_discrete - 1)
            extra = {"action_logits": logits, "action_ids": ids.astype(np.int64)}
        if states:
            srng = np.random.default_rng([seed, kinds.index(kind), i, 1])
            path = np.stack([np.cos(phase), np.sin(phase), phase / (2 * np.pi)], axis=1)
            extra["states"] = path + srng.normal(scale=0.01, size=path.shape)
        out.append(
            Rollout(
                embeddings=emb.astype(np.float32),
                action_samples=samples.astype(np.float32),
                success=kind not in ("failure", "stuck"),
                group=group,
                metadata={"kind": kind, "seed": seed, "index": i},
                **extra,
            )
        )
    return out


def make_score_curves(
    rng: np.random.Generator,
    n: int,
    lengths: list[int] | None = None,
    window: int = 5,
) -> list[np.ndarray]:
    """Windowed score curves of successful rollouts, for statistical checks of calibration.

    Raw scores are gamma-distributed around a mean that varies in time (a slow sine plus a
    trend) and by rollout (a log-normal level), so steps within a rollout are neither
    independent nor identically distributed, as with real scores. Lengths are 30-60 steps
    unless given. Curves are moving sums over ``window`` steps.

    Examples
    --------
    >>> cs = make_score_curves(np.random.default_rng(0), 3)
    >>> len(cs), all(30 <= len(c) <= 60 for c in cs)
    (3, True)
    """
    from .windows import window_scores

    out = []
    for i in range(n):
        t_len = int(rng.integers(30, 61)) if lengths is None else int(lengths[i])
        t = np.arange(t_len)
        level = rng.lognormal(0.0, 0.3)
        mean = level * (1.0 + 0.6 * np.sin(t / 7.0) + 0.01 * t)
        out.append(window_scores(rng.gamma(4.0, mean / 4.0), window))
    return out
