"""Per-step failure scores. Every score is fitted on successful rollouts, then frozen, and maps a
rollout to one non-negative number per step; higher means more likely to fail.

FIPER's two indicators are :class:`RNDScore` (observation-embedding OOD) and
:class:`ActionChunkEntropy` (uncertainty of sampled action chunks);
:class:`DiscreteActionEntropy` is the second indicator for discrete-action agents. The rest
are the paper's baselines.
"""

from ._base import BaseScore, Score, register_score, score_from_config
from .baselines import LogpZOScore, PCAKMeansScore, RNDActionScore, STACScore, mmd_rbf
from .cached import CachedScore
from .entropy import (
    ActionChunkEntropy,
    DiscreteActionEntropy,
    ace_cells,
    empirical_entropy,
    logits_entropy,
)
from .rnd import RNDNetwork, RNDScore

__all__ = [
    "ActionChunkEntropy",
    "BaseScore",
    "CachedScore",
    "DiscreteActionEntropy",
    "LogpZOScore",
    "PCAKMeansScore",
    "RNDActionScore",
    "RNDNetwork",
    "RNDScore",
    "STACScore",
    "Score",
    "ace_cells",
    "empirical_entropy",
    "logits_entropy",
    "mmd_rbf",
    "register_score",
    "score_from_config",
]
