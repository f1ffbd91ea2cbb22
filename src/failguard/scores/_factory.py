"""One name → score factory, shared by the command line and the benchmarks.

Every built-in score has a short name; :func:`make_score` builds an unfitted score from it,
passing keyword parameters to the score's constructor (for the composite names, to the score
that :class:`~failguard.Deviation` wraps). The built score's ``name`` is the short name, so a
detector's indicators read the same in the CLI, the benchmarks and the saved artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError
from ._base import BaseScore
from .baselines import LogpZOScore, PCAKMeansScore, RNDActionScore, STACScore
from .entropy import ActionChunkEntropy, DiscreteActionEntropy
from .motion import ChunkConsistency, Movement, SlowingDown
from .profile import Deviation
from .progress import ProgressScore
from .rnd import RNDScore

__all__ = ["SCORE_ALIASES", "SCORE_NAMES", "make_score"]


def _deviation(inner: Callable[..., BaseScore], side: str, name: str) -> Callable[..., BaseScore]:
    return lambda **kw: Deviation(inner(**kw), side=side, name=name)


_FACTORIES: dict[str, tuple[Callable[..., BaseScore], str]] = {
    "rnd": (RNDScore, "RND on observation embeddings (FIPER's OOD indicator)"),
    "ace": (ActionChunkEntropy, "action-chunk entropy of sampled chunks (FIPER)"),
    "entropy": (
        lambda **kw: DiscreteActionEntropy(source="logits", **kw),
        "entropy of a discrete policy's action logits",
    ),
    "entropy_samples": (
        lambda **kw: DiscreteActionEntropy(source="samples", **kw),
        "empirical entropy of sampled discrete action ids",
    ),
    "stac": (STACScore, "STAC: MMD between overlapping chunks (baseline)"),
    "pca_kmeans": (PCAKMeansScore, "PCA + k-means distance on embeddings (baseline)"),
    "logpzo": (LogpZOScore, "flow-matching density of embeddings (baseline)"),
    "rnd_a": (RNDActionScore, "RND on embeddings and mean action chunk (baseline)"),
    "progress": (
        lambda **kw: ProgressScore(name="progress", **kw),
        "missing task progress, learned from successes",
    ),
    "shortfall": (
        lambda **kw: ProgressScore(mode="shortfall", name="shortfall", **kw),
        "progress shortfall against the successes' progress profile",
    ),
    "consistency": (
        lambda **kw: ChunkConsistency(name="consistency", **kw),
        "disagreement between consecutive action chunks",
    ),
    "stagnation": (
        _deviation(Movement, "low", "stagnation"),
        "too little movement for the phase of the task",
    ),
    "ews": (
        _deviation(SlowingDown, "both", "ews"),
        "critical slowing down of the embeddings (early-warning signal)",
    ),
    "entropy_low": (
        _deviation(lambda **kw: DiscreteActionEntropy(source="logits", **kw), "low", "entropy_low"),
        "action entropy collapsed below the successes' profile",
    ),
}

#: The built-in score names and what each measures.
SCORE_NAMES: dict[str, str] = {name: text for name, (_, text) in _FACTORIES.items()}
#: Other spellings accepted for a name (the CLI's historical ``entropy-ids``).
SCORE_ALIASES: dict[str, str] = {"entropy-ids": "entropy_samples"}


def make_score(name: str, **params: Any) -> BaseScore:
    """An unfitted built-in score by its short name.

    Parameters
    ----------
    name : str
        One of :data:`SCORE_NAMES` (or an alias in :data:`SCORE_ALIASES`).
    **params
        Passed to the score's constructor; for ``stagnation``, ``ews`` and ``entropy_low``,
        to the score that :class:`~failguard.Deviation` wraps.

    Returns
    -------
    BaseScore
        The unfitted score, named ``name``.

    Raises
    ------
    ConfigError
        If the name is unknown or a parameter is not one the score takes.

    Examples
    --------
    >>> from failguard.scores import make_score
    >>> make_score("ace", cell_factor=0.05).cell_factor
    0.05
    >>> make_score("entropy-ids").requires
    ('action_ids',)
    """
    key = SCORE_ALIASES.get(name, name)
    if key not in _FACTORIES:
        raise ConfigError(
            f"Unknown score {name!r}. Choose one of {sorted(SCORE_NAMES)} "
            f"(or {sorted(SCORE_ALIASES)})."
        )
    try:
        return _FACTORIES[key][0](**params)
    except TypeError as err:
        if isinstance(err, ConfigError) or "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"make_score({name!r}): {err}. Check the parameter names.") from err
