"""Wrap a LeRobot-style chunking policy: record -> fit/calibrate -> deploy -> alarm.

The policy is :class:`failguard.testing.ToyChunkPolicy`, a tiny torch module with
LeRobot's interface and mechanics (``reset``, ``select_action`` popping an action queue that
``predict_action_chunk`` refills every ``n_action_steps``, an ``encoder`` submodule, noisy
sampling like a diffusion/flow policy). It is a toy: it becomes multi-modal when its
observation leaves the region it "knows", which is the failure mode FIPER watches for.
With a real LeRobot policy only the construction changes (see the module docstring of
``failguard.integrations.lerobot``). A few seconds on a laptop core.

    python examples/02_lerobot_style_policy.py [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import failguard as fg
from failguard.integrations import LeRobotPolicyWrapper
from failguard.testing import ToyChunkPolicy

N_SAMPLES = 16  # B: action chunks drawn per policy inference for the entropy score


def observation(t: int, episode: int, drift: float = 0.0) -> dict[str, torch.Tensor]:
    """A smooth nominal trajectory; ``drift`` pushes it off the known region from t = 20 on."""
    phase = 0.15 * t + 0.3 * episode
    x = 0.4 * np.array([np.sin(phase), np.cos(phase), 0.5 * np.sin(2 * phase), 0.1])
    if t >= 20:
        x = x + drift * min(1.0, (t - 20) / 12) * np.array([1.0, 1.0, 0.0, 0.5])
    return {"observation.state": torch.tensor(x, dtype=torch.float32).unsqueeze(0)}


def run_episode(policy: LeRobotPolicyWrapper, episode: int, drift: float, steps: int) -> None:
    policy.reset(metadata={"episode": episode, "drift": drift})
    for t in range(steps):
        action = policy.select_action(observation(t, episode, drift))
        assert action.shape == (1, 2)  # the robot would execute this action


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="fewer episodes (CI)")
    args = parser.parse_args()
    n_fit, n_cal, steps = (8, 30, 48) if args.tiny else (16, 60, 80)
    torch.manual_seed(0)
    policy = ToyChunkPolicy(obs_dim=4, n_action_steps=4, noise=0.15)
    logs = Path(tempfile.mkdtemp()) / "success_logs"

    # 1. Record mode: deploy the wrapped policy, keep the successful episodes.
    recorder = LeRobotPolicyWrapper(
        policy, embed_module="encoder", n_samples=N_SAMPLES, record_dir=logs, group="id"
    )
    for ep in range(n_fit + n_cal):
        run_episode(recorder, ep, drift=0.0, steps=steps)
        recorder.end_episode(success=True)
    recorder.remove_hook()
    rollouts = fg.read_rollouts(logs)
    print(f"recorded {len(rollouts)} successful episodes, {len(rollouts[0])} chunks each")

    # 2. Fit the scores on some, calibrate the thresholds on the others (disjoint rollouts).
    print(fg.plan(0.1))
    detector = fg.FailureDetector(
        scores=[fg.RNDScore(max_epochs=20), fg.ActionChunkEntropy()], windows=3, alpha=0.1
    )
    detector.fit(rollouts[:n_fit], progress=False).calibrate(rollouts[n_fit:])
    print(detector)

    # 3. Monitor mode: the same policy, now watched; on_alarm would stop the robot.
    alarms: list[fg.Verdict] = []
    monitored = LeRobotPolicyWrapper(
        policy,
        detector,
        embed_module="encoder",
        n_samples=N_SAMPLES,
        on_alarm=alarms.append,
    )
    quiet = 0
    for ep in range(10):
        run_episode(monitored, 1000 + ep, drift=0.0, steps=steps)
        quiet += not monitored.alarmed
    print(f"nominal deployments without alarm: {quiet}/10 (alpha = {detector.alpha})")

    caught = 0
    for ep in range(10):
        run_episode(monitored, 2000 + ep, drift=2.5, steps=steps)
        if monitored.alarmed:
            caught += 1
            first = monitored.session.first_alarm
            assert first is not None
            if caught == 1:
                print(f"drifting episode: {first}  (the drift starts at chunk 5)")
    print(f"drifting deployments with an alarm: {caught}/10; on_alarm was called {len(alarms)}x")
    assert caught >= 8 and quiet >= 7


if __name__ == "__main__":
    main()
