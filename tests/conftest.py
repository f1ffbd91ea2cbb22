"""Shared fixtures: small synthetic rollout sets and a cheap detector factory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from failguard import ActionChunkEntropy, FailureDetector, RNDScore
from failguard.synthetic import make_rollouts

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fit_set():
    return make_rollouts(8, seed=0, length=40, n_discrete=5)


@pytest.fixture(scope="session")
def cal_set():
    return make_rollouts(40, seed=1, length=40, n_discrete=5)


@pytest.fixture(scope="session")
def test_set():
    return (
        make_rollouts(10, seed=2, length=40, n_discrete=5)
        + make_rollouts(5, kind="ood_benign", seed=3, length=40, n_discrete=5)
        + make_rollouts(10, kind="failure", seed=4, length=40, n_discrete=5)
    )


def small_rnd(**kw):
    return RNDScore(max_epochs=3, **kw)


def make_detector(**kw):
    scores = kw.pop("scores", None) or [small_rnd(), ActionChunkEntropy()]
    return FailureDetector(scores=scores, **kw)


@pytest.fixture(scope="session")
def detector(fit_set, cal_set):
    return make_detector(alpha=0.1).fit(fit_set, progress=False).calibrate(cal_set)
