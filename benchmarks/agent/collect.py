"""Record LunarLander rollouts of a trained policy with failguard's :class:`~failguard.Recorder`.

At every step the policy encodes its observation (the actor's second hidden layer, the
embedding), emits logits over the 4 actions, and B actions are sampled from the categorical
distribution; the first sample is executed (the policy acts stochastically, as it was
trained). Each rollout is stored as one safetensors file with ``embeddings`` (T, h),
``action_logits`` (T, 4), ``action_ids`` (T, B), ``states`` (T, 2: the lander's true x, y
position before the step, without sensor noise), its task-defined ``success``, its group
label, and metadata (seed, shift parameters, outcome, return).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .lander import ShiftedLander, sample_shift
from .ppo import Policy

__all__ = ["collect_group"]


def _sample_ids(logits: torch.Tensor, n: int, gen: torch.Generator) -> np.ndarray:
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, n, replacement=True, generator=gen).numpy().astype(np.int64)


def collect_group(
    policy: Policy,
    group: str,
    n_rollouts: int,
    directory: Path,
    base_seed: int,
    n_samples: int = 32,
) -> dict[str, object]:
    """Record ``n_rollouts`` rollouts of one group into ``directory``.

    Parameters
    ----------
    policy : Policy
        The trained policy.
    group : str
        Group label, see :data:`lander.GROUPS`.
    n_rollouts : int
        How many rollouts to record.
    directory : pathlib.Path
        Output directory (files ``<group>_000000.safetensors`` ...).
    base_seed : int
        Seeds of rollout i are derived from ``base_seed + i`` (environment, shift, sampling).
    n_samples : int
        B, the number of actions sampled per step.

    Returns
    -------
    dict
        Summary: rollouts, successes, success rate, outcome counts, mean length.
    """
    from tqdm import tqdm

    from failguard import Recorder

    recorder = Recorder(directory, prefix=group)
    outcomes: dict[str, int] = {}
    lengths: list[int] = []
    successes = 0
    for i in tqdm(range(n_rollouts), desc=f"rollouts {group}", unit="ep", mininterval=5.0):
        seed = base_seed + i
        rng = np.random.default_rng([seed, 1])
        shift = sample_shift(group, rng)
        env = ShiftedLander(shift, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        obs = env.reset()
        recorder.start(group=group, metadata={"seed": seed, "shift": shift.to_dict()})
        total = 0.0
        done = False
        while not done:
            with torch.no_grad():
                emb, logits = policy(torch.from_numpy(obs)[None])
            ids = _sample_ids(logits[0], n_samples, gen)
            recorder.step(
                embedding=emb[0].numpy(),
                action_logits=logits[0].numpy(),
                action_ids=ids,
                state=env.position,  # the true (x, y) position: Rollout.states
            )
            obs, reward, done = env.step(int(ids[0]))
            total += reward
        recorder.end(
            success=env.success,
            metadata={"outcome": env.outcome, "return": round(total, 2), "steps": env.steps},
        )
        outcomes[env.outcome] = outcomes.get(env.outcome, 0) + 1
        lengths.append(env.steps)
        successes += int(env.success)
        env.close()
    return {
        "group": group,
        "rollouts": n_rollouts,
        "successes": successes,
        "success_rate": successes / max(1, n_rollouts),
        "outcomes": dict(sorted(outcomes.items())),
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
    }
