"""Per-step failure scores. Every score is fitted on successful rollouts, then frozen, and maps a
rollout to one non-negative number per step; higher means more likely to fail.

FIPER's two indicators are :class:`RNDScore` (observation-embedding OOD) and
:class:`ActionChunkEntropy` (uncertainty of sampled action chunks);
:class:`DiscreteActionEntropy` is the second indicator for discrete-action agents. The rest
are the paper's baselines.

Beyond the paper, for failures that neither indicator sees (a policy stuck, or confidently
wrong): :class:`ProgressScore` (missing progress, learned from successes),
:class:`Movement` / :class:`SlowingDown` (stagnation and early-warning signals),
:class:`ChunkConsistency` (a cheap STAC) and :class:`Deviation`, which makes any score
two-sided against the successes' per-step profile (entropy collapse).
"""

from ._base import BaseScore, Score, register_score, score_from_config, step_index
from ._factory import SCORE_ALIASES, SCORE_NAMES, make_score
from .baselines import LogpZOScore, PCAKMeansScore, RNDActionScore, STACScore, mmd_rbf
from .cached import CachedScore
from .entropy import (
    ActionChunkEntropy,
    DiscreteActionEntropy,
    ace_cells,
    empirical_entropy,
    logits_entropy,
)
from .motion import ChunkConsistency, Movement, SlowingDown
from .profile import Deviation, phase_profile
from .progress import ProgressScore
from .rnd import RNDNetwork, RNDScore

__all__ = [
    "SCORE_ALIASES",
    "SCORE_NAMES",
    "ActionChunkEntropy",
    "BaseScore",
    "CachedScore",
    "ChunkConsistency",
    "Deviation",
    "DiscreteActionEntropy",
    "LogpZOScore",
    "Movement",
    "PCAKMeansScore",
    "ProgressScore",
    "RNDActionScore",
    "RNDNetwork",
    "RNDScore",
    "STACScore",
    "Score",
    "SlowingDown",
    "ace_cells",
    "empirical_entropy",
    "logits_entropy",
    "make_score",
    "mmd_rbf",
    "phase_profile",
    "register_score",
    "score_from_config",
    "step_index",
]
