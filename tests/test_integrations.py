"""Policy wrappers, the generic adapter and the gymnasium wrapper."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from failguard import (
    ActionChunkEntropy,
    DiscreteActionEntropy,
    FailureDetector,
    RNDScore,
    RolloutError,
    read_rollouts,
)
from failguard.integrations import LeRobotPolicyWrapper, PolicyAdapter
from failguard.integrations.lerobot import repeat_batch
from failguard.synthetic import make_rollouts
from failguard.testing import ToyChunkPolicy

B = 8
OBS_DIM = 4


def _obs(t: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    x = torch.tensor([[np.sin(0.2 * t), np.cos(0.2 * t), 0.5 * np.sin(0.1 * t), 0.0]])
    return {"observation.state": (scale * x).float()}


def _run(policy_like, n_steps: int, scale: float = 0.3) -> list[torch.Tensor]:
    policy_like.reset()
    return [policy_like.select_action(_obs(t, scale)) for t in range(n_steps)]


@pytest.fixture(scope="module")
def toy_detector(tmp_path_factory):
    """Record successful toy-policy episodes with the wrapper, then fit and calibrate."""
    logs = tmp_path_factory.mktemp("toy_logs")
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    wrapped = LeRobotPolicyWrapper(
        policy, embed_module="encoder", n_samples=B, record_dir=logs, group="id"
    )
    torch.manual_seed(0)
    for ep in range(38):
        wrapped.reset(metadata={"episode": ep})
        _ = [wrapped.select_action(_obs(t + ep, 0.3)) for t in range(40)]
        wrapped.end_episode(success=True)
    rollouts = read_rollouts(logs)
    assert len(rollouts) == 38 and len(rollouts[0]) == 10  # 40 actions / 4 per chunk
    det = FailureDetector(
        scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], windows=3, alpha=0.1
    )
    return det.fit(rollouts[:8], progress=False).calibrate(rollouts[8:])


# ---------------------------------------------------------------- LeRobot-style wrapper
@pytest.mark.filterwarnings("ignore:Discarding an unfinished")
@pytest.mark.parametrize("mode", ["record", "monitor"])
@pytest.mark.parametrize("embed", ["hook", "callable"])
def test_wrapper_never_changes_actions(tmp_path, toy_detector, mode, embed):
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    torch.manual_seed(123)
    plain = _run(policy, 30)
    plain_ood = _run(policy, 30, scale=3.0)

    kw: dict = (
        {"embed_module": "encoder"}
        if embed == "hook"
        else {"embed": lambda b: policy.encoder(b["observation.state"])}
    )
    if mode == "record":
        kw["record_dir"] = tmp_path
    else:
        kw["detector"] = toy_detector
    wrapped = LeRobotPolicyWrapper(policy, n_samples=B, **kw)
    torch.manual_seed(123)
    got = _run(wrapped, 30)
    got_ood = _run(wrapped, 30, scale=3.0)
    for a, b in zip(plain + plain_ood, got + got_ood, strict=True):
        assert torch.equal(a, b)
    # the global random stream continues exactly as without the wrapper
    torch.manual_seed(5)
    _run(policy, 9)
    ref = torch.rand(3)
    torch.manual_seed(5)
    _run(wrapped, 9)
    assert torch.equal(torch.rand(3), ref)


@pytest.mark.parametrize("boundary", ["auto", "queue", "steps"])
def test_monitor_runs_once_per_chunk(toy_detector, boundary):
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    calls = []
    original = policy.predict_action_chunk

    def counting(batch):
        calls.append(batch["observation.state"].shape[0])
        return original(batch)

    policy.predict_action_chunk = counting  # type: ignore[method-assign]
    wrapped = LeRobotPolicyWrapper(
        policy, toy_detector, embed_module="encoder", n_samples=B, chunk_boundary=boundary
    )
    _run(wrapped, 10)
    assert wrapped.n_chunks == 3  # steps 0, 4, 8
    assert [v.step for v in wrapped.verdicts] == [0, 1, 2]
    assert calls == [1, B, 1, B, 1, B]  # the policy's own chunk, then one batched draw of B
    assert wrapped.last_verdict is wrapped.verdicts[-1]


def test_a_rejected_step_does_not_shift_later_chunks(toy_detector):
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    embedded_at = []

    def embed(batch):  # NaN on the second chunk, which the monitor must reject
        embedded_at.append(step)
        e = policy.encoder(batch["observation.state"])[0].detach().numpy()
        return np.full_like(e, np.nan) if len(embedded_at) == 2 else e

    wrapped = LeRobotPolicyWrapper(
        policy, toy_detector, embed=embed, n_samples=B, chunk_boundary="steps"
    )
    plain = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    wrapped.reset()
    plain.reset()
    torch.manual_seed(5)
    got = []
    for step in range(12):
        got.append(wrapped.select_action(_obs(step, 0.3)))
        if step == 4:  # the monitor rejected the step: reported, and the action delivered
            v = wrapped.last_verdict
            assert v.status == "error" and v.alarm and "NaN" in v.error
    torch.manual_seed(5)
    want = [plain.select_action(_obs(step, 0.3)) for step in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))  # none lost
    assert embedded_at == [0, 4, 8]  # later chunks still start where the policy's do
    assert wrapped.n_chunks == 3 and wrapped.session.n_errors == 1
    assert [v.status for v in wrapped.verdicts] == ["ok", "error", "ok"]


def test_session_rejected_step_is_not_recorded(tmp_path, toy_detector):
    shapes = {f: s for score in toy_detector.scores for f, s in score.input_shapes_.items()}
    adapter = PolicyAdapter(
        embed=lambda o: o["e"],
        sample=lambda o, n: o["a"],
        n_samples=B,
        detector=toy_detector,
        record_dir=tmp_path,
    )
    good = {"e": np.zeros(shapes["embeddings"]), "a": np.zeros(shapes["action_samples"])}
    adapter.reset(group="id")
    adapter.step(good)
    bad = adapter.step({"e": np.zeros(3), "a": good["a"]})  # wrong embedding size
    assert bad is not None and bad.status == "error" and bad.alarm
    adapter.step(good)
    assert [(v.step, v.status) for v in adapter.verdicts] == [(0, "ok"), (1, "error"), (1, "ok")]
    adapter.end_episode(success=True)
    assert len(read_rollouts(tmp_path)[0]) == 2
    strict = PolicyAdapter(
        embed=lambda o: o["e"],
        sample=lambda o, n: o["a"],
        n_samples=B,
        detector=toy_detector,
        strict=True,
    )
    strict.reset()
    with pytest.raises(RolloutError):
        strict.step({"e": np.zeros(3), "a": good["a"]})


def test_wrapper_alarms_off_distribution_and_calls_hook(toy_detector):
    alarms = []
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    wrapped = LeRobotPolicyWrapper(
        policy, toy_detector, embed_module="encoder", n_samples=B, on_alarm=alarms.append
    )
    _run(wrapped, 40, scale=0.3)
    assert not wrapped.alarmed
    _run(wrapped, 40, scale=4.0)
    assert wrapped.alarmed and alarms
    assert all(v.alarm for v in alarms)
    assert set(alarms[0].fired) == {"rnd", "ace"}


def test_hook_and_callable_embeddings_agree(tmp_path):
    policy = ToyChunkPolicy(obs_dim=OBS_DIM)
    a = LeRobotPolicyWrapper(policy, embed_module="encoder", n_samples=B, record_dir=tmp_path / "a")
    _run(a, 8)
    a.end_episode(success=True)
    a.remove_hook()
    b = LeRobotPolicyWrapper(
        policy,
        embed=lambda batch: policy.encoder(batch["observation.state"]),
        n_samples=B,
        record_dir=tmp_path / "b",
    )
    _run(b, 8)
    b.end_episode(success=True)
    ra, rb = read_rollouts(tmp_path / "a")[0], read_rollouts(tmp_path / "b")[0]
    np.testing.assert_allclose(ra.embeddings, rb.embeddings, rtol=1e-6)
    assert ra.action_samples is not None and ra.action_samples.shape == (2, B, 8, 2)
    # the monitor's own sampling is seeded: same draws both times
    np.testing.assert_array_equal(ra.action_samples, rb.action_samples)


def test_policy_that_ignores_repeated_batch_is_sampled_one_by_one(tmp_path):
    class QueueReadingPolicy(ToyChunkPolicy):
        """Like LeRobot's DiffusionPolicy: predict_action_chunk ignores the batch size."""

        def predict_action_chunk(self, batch):
            return super().predict_action_chunk(
                {"observation.state": batch["observation.state"][:1]}
            )

    wrapped = LeRobotPolicyWrapper(
        QueueReadingPolicy(obs_dim=OBS_DIM),
        embed_module="encoder",
        n_samples=B,
        record_dir=tmp_path,
    )
    assert wrapped.backend == "generic"
    with pytest.warns(RuntimeWarning, match="one call at a time") as caught:
        _run(wrapped, 8)  # two chunks: warned once
    assert len(caught) == 1
    wrapped.end_episode(success=True)
    samples = read_rollouts(tmp_path)[0].action_samples
    assert samples is not None and samples.shape == (2, B, 8, 2)
    assert np.unique(samples[0, :, -1, 0]).size > 1  # B distinct draws


def test_wrapper_input_errors(toy_detector):
    policy = ToyChunkPolicy(obs_dim=OBS_DIM)
    with pytest.raises(ValueError, match="exactly one"):
        LeRobotPolicyWrapper(policy, toy_detector)
    with pytest.raises(ValueError, match="no submodule"):
        LeRobotPolicyWrapper(policy, toy_detector, embed_module="backbone", n_samples=B)
    with pytest.raises(ValueError, match="n_samples=8"):
        LeRobotPolicyWrapper(policy, toy_detector, embed_module="encoder", n_samples=4)
    with pytest.raises(ValueError, match="detector"):
        LeRobotPolicyWrapper(policy, embed_module="encoder")
    with pytest.raises(TypeError, match="LeRobot-style"):
        LeRobotPolicyWrapper(object(), toy_detector, embed_module="encoder")
    # attribute access falls through to the policy
    w = LeRobotPolicyWrapper(policy, toy_detector, embed_module="encoder", n_samples=B)
    assert w.config.n_action_steps == 4


def test_unfinished_recorded_episode_is_discarded_with_warning(tmp_path):
    w = LeRobotPolicyWrapper(
        ToyChunkPolicy(obs_dim=OBS_DIM), embed_module="encoder", n_samples=B, record_dir=tmp_path
    )
    _run(w, 4)
    with pytest.warns(UserWarning, match="end_episode"):
        w.reset()
    assert not list(tmp_path.glob("*.safetensors"))


# ---------------------------------------------------------------- generic adapter
@pytest.fixture(scope="module")
def discrete_detector():
    kw = {"length": 30, "embedding_dim": 8, "n_discrete": 4}
    det = FailureDetector(
        scores=[RNDScore(max_epochs=3), DiscreteActionEntropy()], windows=3, alpha=0.1
    )
    return det.fit(make_rollouts(8, seed=0, **kw), progress=False).calibrate(
        make_rollouts(30, seed=1, **kw)
    )


def test_adapter_discrete_agent_matches_batch_detector(discrete_detector):
    r = make_rollouts(1, kind="failure", seed=7, length=30, embedding_dim=8, n_discrete=4)[0]
    steps = iter(range(len(r)))
    adapter = PolicyAdapter(
        embed=lambda t: r.embeddings[t],
        logits=lambda t: r.action_logits[t],
        detector=discrete_detector,
    )
    adapter.reset(group=r.group)
    verdicts = [adapter.step(t) for t in steps]
    trace = discrete_detector.score(r)
    got = np.array([v.fused_ratio for v in verdicts if v is not None])
    np.testing.assert_allclose(got, trace.fused, rtol=1e-4)
    assert adapter.alarmed == trace.predicted_failure


def test_adapter_validates_callables(discrete_detector, toy_detector):
    with pytest.raises(ValueError, match="'logits'"):
        PolicyAdapter(embed=lambda o: o, detector=discrete_detector)
    with pytest.raises(ValueError, match="'sample'"):
        PolicyAdapter(embed=lambda o: o, detector=toy_detector, n_samples=B)
    with pytest.raises(ValueError, match="record_dir"):
        PolicyAdapter(embed=lambda o: o)
    bad = PolicyAdapter(
        embed=lambda o: np.zeros(16),
        sample=lambda o, n: np.zeros((n - 1, 8, 2)),
        n_samples=B,
        detector=toy_detector,
    )
    bad.reset()
    v = bad.step(None)
    assert v is not None and v.status == "error" and "must return shape" in v.error


def test_adapter_record_mode_writes_success_logs(tmp_path):
    adapter = PolicyAdapter(
        embed=lambda o: o, logits=lambda o: o[:3], n_action_ids=5, record_dir=tmp_path
    )
    for success in (True, False):
        adapter.reset(group="id")
        for t in range(6):
            assert adapter.step(np.full(4, float(t))) is None
        adapter.end_episode(success=success)
    rs = read_rollouts(tmp_path)
    assert [r.success for r in rs] == [True, False]
    assert rs[0].action_ids is not None and rs[0].action_ids.shape == (6, 5)
    assert rs[0].group == "id"


# ---------------------------------------------------------------- gymnasium
gym = pytest.importorskip("gymnasium")


def _controller(obs: np.ndarray) -> np.ndarray:
    """Logits of a decent CartPole controller."""
    u = 1.0 * obs[0] + 1.5 * obs[1] + 18.0 * obs[2] + 3.0 * obs[3]
    return np.array([-u, u], dtype=np.float32)


@pytest.fixture(scope="module")
def cartpole_detector(tmp_path_factory):
    from failguard.integrations import FailguardEnv

    logs = tmp_path_factory.mktemp("cartpole")
    adapter = PolicyAdapter(embed=lambda o: o, logits=_controller, record_dir=logs)
    env = FailguardEnv(
        gym.make("CartPole-v1", max_episode_steps=40),
        adapter,
        success_fn=lambda info, term, trunc: bool(trunc and not term),
    )
    for ep in range(38):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(int(np.argmax(_controller(obs))))
            done = term or trunc
    rollouts = read_rollouts(logs)
    assert len(rollouts) == 38 and all(r.success for r in rollouts)
    det = FailureDetector(scores=[RNDScore(max_epochs=3)], windows=2, alpha=0.1)
    return det.fit(rollouts[:8], progress=False).calibrate(rollouts[8:])


def test_gym_wrapper_info_reset_and_terminate_on_alarm(cartpole_detector):
    from failguard.integrations import FailguardEnv

    scale = {"value": 1.0}
    adapter = PolicyAdapter(embed=lambda o: o * scale["value"], detector=cartpole_detector)
    env = FailguardEnv(
        gym.make("CartPole-v1", max_episode_steps=40), adapter, terminate_on_alarm=True
    )
    obs, info = env.reset(seed=100)
    assert info["failguard"].step == 0
    obs, _, term, trunc, info = env.step(int(np.argmax(_controller(obs))))
    assert info["failguard"].step == 1 and not info["failguard_stopped"]
    # a sensor fault: the observations blow up, the monitor alarms and stops the episode
    scale["value"] = 50.0
    steps = 0
    while not (term or trunc):
        obs, _, term, trunc, info = env.step(int(np.argmax(_controller(obs))))
        steps += 1
    assert info["failguard_stopped"] and trunc and not term
    assert info["failguard"].alarm and steps <= 3
    scale["value"] = 1.0
    _, info = env.reset(seed=101)
    assert info["failguard"].step == 0 and not info["failguard"].alarm  # monitor was reset


def test_gym_wrapper_every_and_signal(cartpole_detector):
    from failguard.integrations import FailguardEnv

    adapter = PolicyAdapter(embed=lambda o: o * 50.0, detector=cartpole_detector)
    env = FailguardEnv(
        gym.make("CartPole-v1"),
        adapter,
        terminate_on_alarm=True,
        alarm_signal="terminated",
        every=3,
    )
    env.reset(seed=0)
    seen = []
    term = trunc = False
    while not (term or trunc):
        _, _, term, trunc, info = env.step(0)
        seen.append(info["failguard"].step)
    assert seen[:3] == [0, 0, 1]  # the monitor steps every 3 environment steps
    assert term and info["failguard_stopped"]
    with pytest.raises(ValueError, match="alarm_signal"):
        FailguardEnv(gym.make("CartPole-v1"), adapter, alarm_signal="stop")


def test_gym_module_names_the_extra_when_gymnasium_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    monkeypatch.delitem(sys.modules, "failguard.integrations.gym", raising=False)
    with pytest.raises(ImportError, match=r"failguard\[gym\]"):
        importlib.import_module("failguard.integrations.gym")


# ---------------------------------------------------------------- faults never stop the loop
def _faulty(kind: str, policy: ToyChunkPolicy, calls: list[int]):
    """Wrapper keyword arguments that make the monitoring side fail on the third chunk."""

    def embed(batch):
        calls.append(1)
        e = policy.encoder(batch["observation.state"])[0].detach().numpy()
        if len(calls) == 3:
            if kind == "embed_raises":
                raise RuntimeError("camera driver hiccup")
            if kind == "nan_embedding":
                return np.full_like(e, np.nan)
            if kind == "wrong_size":
                return e[:3]
        return e

    def sample(pol, batch, n):
        out = pol.predict_action_chunk(repeat_batch(batch, n))
        if len(calls) == 3 and kind == "sampler_raises":
            raise ValueError("sampler broke")
        if len(calls) == 3 and kind == "nan_chunks":
            out = out.clone()
            out[0, 0, 0] = float("nan")
        return out

    def on_alarm(v):
        raise RuntimeError("the alarm hook broke")

    kw: dict = {"embed": embed, "sample_chunks": sample}
    if kind == "on_alarm_raises":
        kw["on_alarm"] = on_alarm
    return kw


FAULTS = [
    "embed_raises",
    "nan_embedding",
    "wrong_size",
    "sampler_raises",
    "nan_chunks",
    "on_alarm_raises",
]


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("strict", [False, True])
def test_wrapper_faults_never_lose_or_reorder_actions(toy_detector, kind, strict):
    """Before: the error re-raised after the policy popped its action (10 of 40 lost when
    on_alarm raised). Now every action is delivered, in order; strict raises before the
    policy is called again."""
    policy = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    plain = ToyChunkPolicy(obs_dim=OBS_DIM, n_action_steps=4)
    calls: list[int] = []
    errors: list[BaseException] = []
    wrapped = LeRobotPolicyWrapper(
        policy,
        toy_detector,
        n_samples=B,
        strict=strict,
        on_error=errors.append,
        **_faulty(kind, policy, calls),
    )
    scale = 3.0 if kind == "on_alarm_raises" else 0.3  # far out: alarms fire
    torch.manual_seed(7)
    plain.reset()
    want = [plain.select_action(_obs(t, scale)) for t in range(40)]
    torch.manual_seed(7)
    wrapped.reset()
    got, raised = [], 0
    t = 0
    while len(got) < 40:
        try:
            got.append(wrapped.select_action(_obs(t, scale)))
            t += 1
        except Exception:
            assert strict
            raised += 1
    assert len(got) == 40 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert errors and wrapped.session.n_errors >= 1
    assert raised == (len(errors) if strict else 0)
    statuses = [v.status for v in wrapped.verdicts]
    if kind != "on_alarm_raises":
        assert statuses[2] == "error" and wrapped.verdicts[2].alarm
        assert statuses.count("error") == 1


def test_adapter_and_session_memory_is_flat(toy_detector):
    """Before: every Verdict was kept (+116 MiB per 1e5 steps) and `alarmed` was O(n)."""
    shapes = {f: s for score in toy_detector.scores for f, s in score.input_shapes_.items()}
    e = np.zeros(shapes["embeddings"], dtype=np.float32)
    a = np.zeros(shapes["action_samples"], dtype=np.float32)
    adapter = PolicyAdapter(
        embed=lambda o: o,
        sample=lambda o, n: a,
        n_samples=B,
        detector=toy_detector,
        keep_verdicts=16,
    )
    adapter.reset()
    for _ in range(300):
        adapter.step(e)
    assert len(adapter.verdicts) == 16 and adapter.n_steps == 300
    assert adapter.verdicts[-1].step == 299
    far = adapter.step(e + 50.0)
    assert far is not None
    assert adapter.alarmed == (adapter.first_alarm is not None)


def test_gym_wrapper_never_loses_a_transition(cartpole_detector):
    from failguard.integrations import FailguardEnv

    fail_at = {"n": 5}
    count = {"n": 0}

    def embed(o):
        count["n"] += 1
        if count["n"] == fail_at["n"]:
            raise RuntimeError("sensor driver failed")
        return o

    for strict in (False, True):
        count["n"] = 0
        adapter = PolicyAdapter(embed=embed, detector=cartpole_detector, strict=strict)
        inner = gym.make("CartPole-v1")
        env = FailguardEnv(inner, adapter)
        env.reset(seed=0)
        statuses = []
        raised = 0
        n_env_steps = 0
        while n_env_steps < 8:
            try:
                info = env.step(0 if n_env_steps % 2 else 1)[-1]
            except RuntimeError:
                assert strict
                raised += 1
                continue
            n_env_steps += 1
            statuses.append(info["failguard"].status)
        assert statuses[3] == "error" and statuses.count("error") == 1
        assert raised == int(strict)
        assert adapter.n_errors == 1
        assert inner._elapsed_steps == 8  # the raising call did not step the environment
