"""LeRobotPolicyWrapper against the real LeRobot (0.4.4) DiffusionPolicy and gym_pusht.

LeRobot pins torch < 2.11, so it lives in its own virtualenv: this module is skipped
wherever ``lerobot`` is not importable (the default suite), and run by
``scripts/lerobot_integration.sh``, which builds that venv and runs
``pytest -m lerobot tests/test_lerobot_real.py``.

The policies are built offline from a config with random weights (no hub download): the
checks are about the wrapper's contract (actions and random stream untouched, the current
frame's conditioning as the embedding, B chunks from one batched denoising call, the
README's usage) and the record -> fit/calibrate -> monitor plumbing in a real simulator
loop, not about how well a random policy's failures are predicted.
"""

from __future__ import annotations

import copy
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot", reason="needs LeRobot: run scripts/lerobot_integration.sh")

from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

from failguard import ActionChunkEntropy, FailureDetector, RNDScore, read_rollouts
from failguard.integrations import LeRobotPolicyWrapper

pytestmark = pytest.mark.lerobot

STATE, ENV, ACTION = "observation.state", "observation.environment_state", "action"
N_ACTION_STEPS = 8
DENOISING_STEPS = 10
CAMERAS_1 = ("observation.image",)
CAMERAS_2 = ("observation.images.top", "observation.images.wrist")


def make_policy(
    cameras: tuple[str, ...] = (),
    n_obs_steps: int = 2,
    seed: int = 0,
    down_dims: tuple[int, ...] = (64, 128, 256),
) -> DiffusionPolicy:
    """A small DiffusionPolicy with random weights: state + env state, or state + images."""
    torch.manual_seed(seed)
    inputs = {STATE: PolicyFeature(type=FeatureType.STATE, shape=(2,))}
    for cam in cameras:
        inputs[cam] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96))
    if not cameras:
        inputs[ENV] = PolicyFeature(type=FeatureType.ENV, shape=(16,))
    config = DiffusionConfig(
        input_features=inputs,
        output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        n_obs_steps=n_obs_steps,
        horizon=16,
        n_action_steps=N_ACTION_STEPS,
        down_dims=down_dims,
        num_inference_steps=DENOISING_STEPS,
        crop_shape=(84, 84) if cameras else None,
        pretrained_backbone_weights=None,  # random ResNet-18: offline
        normalization_mapping={  # LeRobot's default leaves the environment state raw
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MIN_MAX,
            "ENV": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        },
        device="cpu",
    )
    return DiffusionPolicy(config).eval()


def observations(policy: DiffusionPolicy, n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """n distinct (already normalised) observations of batch size 1 for ``policy``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        obs = {STATE: torch.rand(1, 2, generator=gen) * 2 - 1}
        for key in policy.config.image_features:
            obs[key] = torch.rand(1, 3, 96, 96, generator=gen)
        if policy.config.env_state_feature:
            obs[ENV] = torch.rand(1, 16, generator=gen) * 2 - 1
        out.append(obs)
    return out


def chunk_starts(n_steps: int) -> list[int]:
    return list(range(0, n_steps, N_ACTION_STEPS))


# ------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("n_obs_steps", [1, 2])
@pytest.mark.parametrize("cameras", [(), CAMERAS_1], ids=["state", "image"])
def test_actions_and_random_stream_are_the_unwrapped_policys(tmp_path, cameras, n_obs_steps):
    policy = make_policy(cameras, n_obs_steps)
    twin = copy.deepcopy(policy)
    obs = observations(policy, 3 * N_ACTION_STEPS)

    torch.manual_seed(123)
    policy.reset()
    plain = [policy.select_action(dict(o)) for o in obs]
    plain_next = torch.rand(8)

    torch.manual_seed(123)
    wrapped = LeRobotPolicyWrapper(twin, n_samples=8, record_dir=tmp_path)
    assert wrapped.backend == "lerobot-diffusion"
    wrapped.reset()
    monitored = [wrapped.select_action(dict(o)) for o in obs]
    wrapped_next = torch.rand(8)

    for t, (a, b) in enumerate(zip(plain, monitored, strict=True)):
        assert torch.equal(a, b), f"action {t} differs"
    assert torch.equal(plain_next, wrapped_next), "the wrapper moved the global random stream"
    assert wrapped.n_chunks == 3

    wrapped.end_episode(success=True)
    (rollout,) = read_rollouts(tmp_path)
    state_dim = 2 + (64 * len(cameras) if cameras else 16)
    assert rollout.embeddings.shape == (3, state_dim)
    assert rollout.action_samples is not None
    assert rollout.action_samples.shape == (3, 8, N_ACTION_STEPS, 2)
    assert np.isfinite(rollout.action_samples).all()
    # B distinct draws per step (the noise differs per row), not one chunk repeated
    for step in rollout.action_samples:
        assert np.unique(step.reshape(8, -1), axis=0).shape[0] == 8


@pytest.mark.parametrize("n_obs_steps", [1, 2])
def test_state_embedding_is_the_current_frames_conditioning(tmp_path, n_obs_steps):
    policy = make_policy((), n_obs_steps)
    obs = observations(policy, 3 * N_ACTION_STEPS)
    wrapped = LeRobotPolicyWrapper(policy, n_samples=4, record_dir=tmp_path)
    wrapped.reset()
    for o in obs:
        wrapped.select_action(o)
    wrapped.end_episode(success=True)
    emb = read_rollouts(tmp_path)[0].embeddings
    for i, t in enumerate(chunk_starts(len(obs))):
        # state-only: the conditioning of a frame is its (normalised) state and env state
        current = torch.cat([obs[t][STATE], obs[t][ENV]], dim=-1)[0].numpy()
        np.testing.assert_array_equal(emb[i], current)
        if t > 0:
            previous = torch.cat([obs[t - 1][STATE], obs[t - 1][ENV]], dim=-1)[0].numpy()
            assert np.abs(emb[i] - previous).max() > 0.05


@pytest.mark.parametrize("n_obs_steps", [1, 2])
def test_image_embeddings_are_the_current_frame_with_every_camera(tmp_path, n_obs_steps):
    policy = make_policy(CAMERAS_2, n_obs_steps)
    obs = observations(policy, 2 * N_ACTION_STEPS)
    runs = {}
    for name, kw in {"default": {}, "rgb": {"embed_module": "diffusion.rgb_encoder"}}.items():
        wrapped = LeRobotPolicyWrapper(policy, n_samples=4, record_dir=tmp_path / name, **kw)
        wrapped.reset()
        for o in obs:
            wrapped.select_action(o)
        wrapped.end_episode(success=True)
        runs[name] = read_rollouts(tmp_path / name)[0].embeddings

    def features(t: int) -> np.ndarray:  # the encoder on frame t alone, camera by camera
        with torch.no_grad():
            return torch.cat([policy.diffusion.rgb_encoder(obs[t][c]) for c in CAMERAS_2], -1)[
                0
            ].numpy()

    for i, t in enumerate(chunk_starts(len(obs))):
        np.testing.assert_allclose(runs["rgb"][i], features(t), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(runs["default"][i][:2], obs[t][STATE][0].numpy())
        np.testing.assert_allclose(runs["default"][i][2:], features(t), rtol=1e-4, atol=1e-5)
        if t > 0:
            assert np.abs(runs["rgb"][i] - features(t - 1)).max() > 1e-3


@pytest.mark.parametrize("cameras", [(), CAMERAS_1], ids=["state", "image"])
def test_b_chunks_come_from_one_batched_denoising_call(tmp_path, cameras):
    policy = make_policy(cameras, 2)
    calls: list[int] = []
    handle = policy.diffusion.unet.register_forward_hook(
        lambda module, args, output: calls.append(int(output.shape[0]))
    )
    wrapped = LeRobotPolicyWrapper(policy, n_samples=16, record_dir=tmp_path)
    wrapped.reset()
    for o in observations(policy, 2 * N_ACTION_STEPS):
        wrapped.select_action(o)
    handle.remove()
    # per chunk: the policy's own DENOISING_STEPS calls at batch 1, then the wrapper's at 16
    per_chunk = [1] * DENOISING_STEPS + [16] * DENOISING_STEPS
    assert calls == per_chunk * 2


def test_misdirected_embed_modules_are_refused():
    with pytest.raises(ValueError, match="noise prediction"):
        LeRobotPolicyWrapper(
            make_policy(), embed_module="diffusion.unet", n_samples=4, record_dir="unused"
        )
    with pytest.raises(ValueError, match=r"no submodule 'diffusion\.rgb_encoder'"):
        LeRobotPolicyWrapper(
            make_policy(), embed_module="diffusion.rgb_encoder", n_samples=4, record_dir="x"
        )


# ------------------------------------------------------------------- gym_pusht loop
def pusht_stats(cameras: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Normalisation statistics from the PushT spaces (positions in [0, 512] px)."""
    box = {"min": torch.zeros(2), "max": torch.full((2,), 512.0)}
    stats = {STATE: box, ACTION: box}
    if cameras:
        for cam in cameras:
            stats[cam] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}
    else:
        stats[ENV] = {"min": torch.zeros(16), "max": torch.full((16,), 512.0)}
    return stats


class PushT:
    """gym_pusht with LeRobot's own observation conversion and pre/post-processors."""

    def __init__(self, policy: DiffusionPolicy, cameras: tuple[str, ...]) -> None:
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium as gym
        from lerobot.envs.utils import preprocess_observation
        from lerobot.policies.factory import make_pre_post_processors

        obs_type = "pixels_agent_pos" if cameras else "environment_state_agent_pos"
        self.env = gym.make("gym_pusht/PushT-v0", obs_type=obs_type)
        self.to_lerobot = preprocess_observation
        self.pre, self.post = make_pre_post_processors(
            policy.config, dataset_stats=pusht_stats(cameras)
        )

    def episode(self, act, seed: int, n_steps: int, shift: float = 0.0) -> list[torch.Tensor]:
        """Run ``act(batch) -> action`` for n_steps; ``shift`` corrupts every position reading
        (normalised units: 2.0 is the width of the table)."""
        obs, _ = self.env.reset(seed=seed)
        actions = []
        for _ in range(n_steps):
            batch = self.pre(self.to_lerobot(obs))
            if shift:  # a gross sensor fault: every reading off by the same offset
                for key in (STATE, ENV):
                    batch[key] = batch[key] + shift
            action = self.post(act(batch))
            actions.append(action)
            obs, _, terminated, truncated, _ = self.env.step(action[0].numpy())
            if terminated or truncated:
                break
        return actions


N_FIT, N_CAL, EPISODE_STEPS = 8, 12, 5 * N_ACTION_STEPS


@pytest.fixture(scope="module")
def pusht(tmp_path_factory):
    """Record nominal gym_pusht episodes with the wrapper, fit + calibrate, save, reload.

    The random-weight policy never solves PushT, so "success" here means a nominal episode
    (no sensor fault): the label calibration needs. Fit and calibration episodes are
    disjoint; the monitor then runs on fresh episodes.
    """
    root = tmp_path_factory.mktemp("pusht")
    policy = make_policy((), 2, down_dims=(32, 64, 128))
    env = PushT(policy, ())
    wrapped = LeRobotPolicyWrapper(policy, n_samples=32, record_dir=root / "logs", group="id")
    start = time.perf_counter()
    for ep in range(N_FIT + N_CAL):
        wrapped.reset(metadata={"seed": ep})
        env.episode(wrapped.select_action, seed=ep, n_steps=EPISODE_STEPS)
        wrapped.end_episode(success=True)
    record_s = time.perf_counter() - start
    rollouts = read_rollouts(root / "logs")
    assert len(rollouts) == N_FIT + N_CAL
    assert all(len(r) == EPISODE_STEPS // N_ACTION_STEPS for r in rollouts)
    detector = FailureDetector(
        scores=[RNDScore(max_epochs=20), ActionChunkEntropy()], windows=3, alpha=0.1
    )
    detector.fit(rollouts[:N_FIT], progress=False).calibrate(rollouts[N_FIT:])
    detector.save(root / "detector")
    print(f"\n[pusht] recorded {N_FIT + N_CAL} episodes x {EPISODE_STEPS} steps: {record_s:.1f} s")
    return {"root": root, "policy": policy, "env": env}


def test_pusht_monitor_loop_keeps_actions_and_flags_a_sensor_fault(pusht):
    policy, env = pusht["policy"], pusht["env"]
    detector = FailureDetector.load(pusht["root"] / "detector")
    alarms: list = []
    wrapped = LeRobotPolicyWrapper(policy, detector, n_samples=32, on_alarm=alarms.append)

    # closed loop: same seeds -> the wrapped policy drives the simulator exactly as the plain one
    torch.manual_seed(7)
    policy.reset()
    plain = env.episode(policy.select_action, seed=100, n_steps=3 * N_ACTION_STEPS)
    torch.manual_seed(7)
    wrapped.reset()
    monitored = env.episode(wrapped.select_action, seed=100, n_steps=3 * N_ACTION_STEPS)
    assert len(plain) == len(monitored)
    assert all(torch.equal(a, b) for a, b in zip(plain, monitored, strict=True))

    def max_rnd_ratio(seed: int, shift: float) -> float:
        wrapped.reset()
        env.episode(wrapped.select_action, seed=seed, n_steps=EPISODE_STEPS, shift=shift)
        verdicts = wrapped.verdicts
        assert len(verdicts) == EPISODE_STEPS // N_ACTION_STEPS and all(
            v.step == i for i, v in enumerate(verdicts)
        )
        for v in verdicts:
            assert np.isfinite(v.fused_ratio) and v.alarm == (v.fused_ratio > 1)
        return max(v.ratios["rnd"] for v in verdicts)

    # the random-weight policy's chunk entropy says nothing, so FIPER's AND stays quiet:
    # check the observation indicator (RND on the embedding) against its calibrated threshold
    nominal = [max_rnd_ratio(200 + i, 0.0) for i in range(3)]
    faulty = [max_rnd_ratio(300 + i, 3.0) for i in range(3)]
    print(f"\n[pusht] max RND ratio: nominal {np.round(nominal, 2)}, fault {np.round(faulty, 2)}")
    assert min(faulty) > 1.0 and min(faulty) > max(nominal)
    assert all(v.alarm for v in alarms)


def test_readme_usage_runs_verbatim(pusht, tmp_path, monkeypatch):
    """The README's LeRobot block, executed as written (policy/episode/robot supplied)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    match = re.search(r"### Wrap a LeRobot-style policy\n+```python\n(.*?)```", readme, re.S)
    assert match, "README lost its LeRobot block"
    detector_dir = pusht["root"] / "detector"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "detector").mkdir()
    for f in detector_dir.iterdir():
        (tmp_path / "detector" / f.name).write_bytes(f.read_bytes())
    policy = pusht["policy"]
    episode = observations(policy, 2 * N_ACTION_STEPS, seed=5)
    stops: list = []
    robot = type("Robot", (), {"stop": lambda self: stops.append(1)})()
    namespace = {"policy": policy, "episode": episode, "robot": robot}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    (log,) = read_rollouts(tmp_path / "logs")
    assert len(log) == 2 and log.success is True
    assert namespace["wrapped"].last_verdict is not None


# ------------------------------------------------------------------------- timings
@pytest.mark.filterwarnings("ignore:Discarding an unfinished")
def test_wrapped_vs_unwrapped_ms_per_step():
    """Side by side in one run (episodes interleaved): ms per select_action call."""
    rows = []
    n_steps, reps = 4 * N_ACTION_STEPS, 3
    for label, cameras in (("state", ()), ("image", CAMERAS_1)):
        policy = make_policy(cameras, 2)
        obs = observations(policy, n_steps)

        def ms_per_step(act, reset, obs=obs) -> float:
            reset()
            start = time.perf_counter()
            for o in obs:
                act(dict(o))
            return 1e3 * (time.perf_counter() - start) / n_steps

        for b in (8, 32):
            rec = LeRobotPolicyWrapper(policy, n_samples=b, record_dir=tempfile.mkdtemp())
            variants = {
                "unwrapped": (policy.select_action, policy.reset),
                "wrapped": (rec.select_action, rec.reset),
            }
            if b == 8 and not cameras:  # the old way: B sequential predict_action_chunk calls
                seq = LeRobotPolicyWrapper(
                    policy,
                    n_samples=b,
                    record_dir=tempfile.mkdtemp(),
                    sample_chunks=lambda p, batch, n: torch.cat(
                        [p.predict_action_chunk(batch) for _ in range(n)]
                    ),
                )
                variants["sequential"] = (seq.select_action, seq.reset)
            times: dict[str, list[float]] = {k: [] for k in variants}
            ms_per_step(*variants["unwrapped"])  # warm-up
            for _ in range(reps):
                for k, v in variants.items():
                    times[k].append(ms_per_step(*v))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {"policy": label, "B": b, **{f"{k}_ms": round(v, 1) for k, v in med.items()}}
            )
    print("\n| policy | B | unwrapped ms/step | wrapped ms/step | ratio | B sequential calls |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        seq = f"{r['sequential_ms']:.1f}" if "sequential_ms" in r else "-"
        print(
            f"| {r['policy']} | {r['B']} | {r['unwrapped_ms']:.1f} | {r['wrapped_ms']:.1f} | "
            f"{r['wrapped_ms'] / r['unwrapped_ms']:.2f} | {seq} |"
        )
    if os.environ.get("FAILGUARD_LEROBOT_TIMINGS"):
        Path(os.environ["FAILGUARD_LEROBOT_TIMINGS"]).write_text(json.dumps(rows, indent=1))
    for r in rows:
        if "sequential_ms" in r:  # one batched call must beat B sequential ones
            assert r["wrapped_ms"] < r["sequential_ms"]
