"""A gymnasium control loop with failguard in it: record, calibrate, then stop on alarm.

Environment: gymnasium's classic-control ``CartPole-v1`` (no extra simulator needed).
Policy: a small stochastic controller -- a fixed random tanh feature layer (its "embedding")
and a softmax over the two pushes from a hand-tuned linear law. It balances the pole in the
nominal environment. Deployment then swaps in a pole four times longer (half-length 0.5 ->
2.0, a real physics shift): the controller's gains no longer fit, the cart swings further and
further, and the pole falls.

Honest scope: this controller's action entropy says little about failure (it is most
uncertain when the pole is perfectly balanced), so the detector here uses RND on the
embedding alone. The numbers printed are what this run measured. Seconds on a laptop core.

    python examples/04_gymnasium_loop.py [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import failguard as fg
from failguard.integrations import FailguardEnv, PolicyAdapter

try:
    import gymnasium as gym
except ImportError as err:  # pragma: no cover
    raise SystemExit("This example needs gymnasium: pip install failguard[gym]") from err

MAX_STEPS = 100
W = np.random.default_rng(0).normal(size=(4, 32)) * np.array([[1.0], [0.5], [8.0], [1.0]])


def embed(obs: np.ndarray) -> np.ndarray:
    """The policy's hidden features (what failguard's RND watches)."""
    return np.tanh(obs @ W).astype(np.float32)


def logits(obs: np.ndarray) -> np.ndarray:
    u = 1.0 * obs[0] + 1.5 * obs[1] + 18.0 * obs[2] + 3.0 * obs[3]
    return np.array([-2.0 * u, 2.0 * u], dtype=np.float32)


def act(obs: np.ndarray, rng: np.random.Generator) -> int:
    lg = logits(obs)
    p = np.exp(lg - lg.max())
    return int(rng.choice(2, p=p / p.sum()))


def make_env(pole_length: float = 0.5) -> gym.Env:
    """CartPole with a given pole half-length (0.5 is gymnasium's)."""
    env = gym.make("CartPole-v1", max_episode_steps=MAX_STEPS)
    core = env.unwrapped
    core.length = pole_length  # type: ignore[attr-defined]
    core.polemass_length = core.masspole * pole_length  # type: ignore[attr-defined]
    return env


def survived(info: dict, terminated: bool, truncated: bool) -> bool:
    """Success: the pole is still up when the time limit ends the episode."""
    return truncated and not terminated and not info.get("failguard_stopped", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="fewer episodes (CI)")
    args = parser.parse_args()
    n_record, n_test = (32, 5) if args.tiny else (120, 30)
    rng = np.random.default_rng(1)
    logs = Path(tempfile.mkdtemp()) / "cartpole_logs"

    # 1. Record: the wrapper logs every step; success_fn labels and writes each episode.
    recorder = PolicyAdapter(embed=embed, logits=logits, record_dir=logs)
    env = FailguardEnv(make_env(), recorder, success_fn=survived)
    for ep in range(n_record):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(act(obs, rng))
            done = terminated or truncated
    rollouts = fg.read_rollouts(logs)
    ok = [r for r in rollouts if r.success]
    print(f"recorded {len(rollouts)} nominal episodes, {len(ok)} successful")

    # 2. Fit on some successes, calibrate on the others.
    n_fit = len(ok) // 4
    detector = fg.FailureDetector(scores=[fg.RNDScore(max_epochs=15)], windows=5, alpha=0.1)
    detector.fit(ok[:n_fit], progress=False).calibrate(ok[n_fit:])
    print(detector)

    # 3. Deploy with terminate_on_alarm: the wrapper ends the episode at the first alarm.
    monitor = PolicyAdapter(embed=embed, logits=logits, detector=detector)
    for label, length in (("nominal pole", 0.5), ("long pole", 2.0)):
        env = FailguardEnv(make_env(length), monitor, terminate_on_alarm=True)
        stopped = fell = kept_up = 0
        lead: list[int] = []
        for ep in range(n_test):
            obs, info = env.reset(seed=10_000 + ep)
            done, t = False, 0
            while not done:
                obs, _, terminated, truncated, info = env.step(act(obs, rng))
                done, t = terminated or truncated, t + 1
            if info["failguard_stopped"]:
                stopped += 1
                # would it have fallen? replay from the same initial state, unmonitored
                ghost = make_env(length)
                g_obs, _ = ghost.reset(seed=10_000 + ep)
                g_rng = np.random.default_rng(ep)
                g_t, g_term, g_trunc = 0, False, False
                while not (g_term or g_trunc):
                    g_obs, _, g_term, g_trunc, _ = ghost.step(act(g_obs, g_rng))
                    g_t += 1
                if g_term:
                    lead.append(g_t - t)
            elif terminated:
                fell += 1
            else:
                kept_up += 1
        print(
            f"{label:>13}: stopped by failguard {stopped}/{n_test}, fell without alarm "
            f"{fell}/{n_test}, finished {kept_up}/{n_test}"
            + (
                f"; unmonitored replays of stopped runs fell {np.mean(lead):.0f} steps "
                "after the alarm"
                if lead
                else ""
            )
        )


if __name__ == "__main__":
    main()
