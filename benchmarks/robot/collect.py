"""Demonstrations from the scripted expert and policy rollouts recorded with failguard."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from failguard import Recorder

from .policy import FlowPolicy
from .tasks import (
    TaskSpec,
    ViaPointExpert,
    apply_perturbation,
    make_env,
    policy_obs,
    reset_episode,
    sample_episode,
)

__all__ = ["collect_demos", "load_demos", "record_rollouts"]

#: Episode seeds of the demonstrations start here; rollout seeds start at 0 (disjoint).
DEMO_SEED_BASE = 1_000_000


def collect_demos(
    task: TaskSpec, n_demos: int, path: Path, action_noise: float = 0.1
) -> dict[str, Any]:
    """Record ``n_demos`` successful expert episodes and save them as safetensors.

    The expert's clean action is the label; a noisy version of it is executed (DART-style
    noise injection), so the demonstrations also show how to recover from small errors.
    Each episode draws its via-point side (left or right), which makes them bimodal.

    Returns
    -------
    dict
        Summary: number kept, number tried, mean length.
    """
    from safetensors.numpy import save_file

    env = make_env(task)
    obs_list: list[NDArray[np.float32]] = []
    act_list: list[NDArray[np.float32]] = []
    lengths: list[int] = []
    tried = 0
    bar = tqdm(total=n_demos, desc=f"demos {task.name}", mininterval=5.0)
    while len(lengths) < n_demos:
        seed = DEMO_SEED_BASE + tried
        tried += 1
        spec = sample_episode(task, env, "demo", seed)
        rng = np.random.default_rng(seed)
        raw = reset_episode(env, task, spec)
        expert = ViaPointExpert(task, spec.expert_side)
        expert.reset(raw)
        ep_obs, ep_act = [], []
        success = False
        for _ in range(task.max_steps):
            action = expert(raw)
            ep_obs.append(policy_obs(raw, spec, rng))
            ep_act.append(action)
            noisy = np.clip(action + rng.normal(0.0, action_noise, 4), -1.0, 1.0)
            raw, _, _, _, info = env.step(noisy.astype(np.float32))
            if info["success"]:
                success = True
                break
        if success:
            obs_list.extend(ep_obs)
            act_list.extend(ep_act)
            lengths.append(len(ep_obs))
            bar.update(1)
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "obs": np.stack(obs_list).astype(np.float32),
            "actions": np.stack(act_list).astype(np.float32),
            "lengths": np.asarray(lengths, dtype=np.int64),
        },
        str(path),
    )
    return {"kept": len(lengths), "tried": tried, "mean_length": float(np.mean(lengths))}


def load_demos(path: Path) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Read demonstrations saved by :func:`collect_demos` as (obs, actions) episodes."""
    from safetensors.numpy import load_file

    data = load_file(str(path))
    bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
    return [(data["obs"][a:b], data["actions"][a:b]) for a, b in itertools.pairwise(bounds)]


def record_rollouts(
    task_key: str,
    task: TaskSpec,
    policy: FlowPolicy,
    condition: str,
    seeds: range,
    n_samples: int,
    directory: Path,
) -> dict[str, Any]:
    """Roll the learned policy out under ``condition`` and record every step with failguard.

    At each policy step the policy embeds its observation, samples ``n_samples`` chunks, and
    executes the first ``exec_horizon`` actions of the first sample. The recorder stores the
    embedding, all sampled chunks and the executed chunk; the outcome is MetaWorld's success
    flag (the episode ends at the first success or after ``task.max_steps`` env steps).

    Returns
    -------
    dict
        Summary: number of rollouts and successes.
    """
    torch.set_num_threads(1)
    env = make_env(task, obstacle=condition == "ood-obstacle")
    recorder = Recorder(directory)
    horizon = policy.config.exec_horizon
    successes = 0
    for seed in tqdm(seeds, desc=f"{task_key} {condition} B={n_samples}", mininterval=5.0):
        spec = sample_episode(task, env, condition, seed)
        rng = np.random.default_rng([seed, 7])
        gen = torch.Generator().manual_seed(seed)
        raw = reset_episode(env, task, spec)
        recorder.start(
            group=condition,
            metadata={
                "task": task_key,
                "seed": int(seed),
                "condition": condition,
                "n_samples": n_samples,
                **spec.info,
            },
        )
        t = 0
        success = False
        while t < task.max_steps and not success:
            emb, chunks = policy.act(policy_obs(raw, spec, rng), n_samples, gen)
            executed = chunks[0]
            recorder.step(
                embedding=emb,
                action_samples=chunks,
                executed_actions=executed,
                state=raw[:3],  # the true end-effector (hand) position: Rollout.states
            )
            for k in range(horizon):
                if spec.push_step is not None and t == spec.push_step:
                    apply_perturbation(env, task, spec)
                raw, _, _, _, info = env.step(np.clip(executed[k], -1.0, 1.0))
                t += 1
                if info["success"]:
                    success = True
                    break
                if t >= task.max_steps:
                    break
        recorder.end(success=success, metadata={"env_steps": t})
        successes += int(success)
    return {"rollouts": len(seeds), "successes": successes}
